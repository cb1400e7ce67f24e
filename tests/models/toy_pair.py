"""A pair potential registered in the tests alone: the smallest model that follows
docs/models.md. The contract tests run for it without naming it, which shows that a model
registered anywhere (here: outside the package) gets the physics, export and fuzz tests.

e_i = ½ Σ_j Σ_k w[Z_i, Z_j, k] · b_k(r_ij) · f_cut(r_ij)      Bessel basis × polynomial envelope
E_i = E0[Z_i] + scale · e_i + shift                           (`Potential.scale_shift`)

The weights need not be symmetric in (Z_i, Z_j): any split of the pair energy between the two
atoms gives the same total energy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models import Potential, register_model
from equimd.potentials.nn.radial import RadialEmbedding
from equimd.potentials.nn.scatter import scatter_sum


@register_model("toy_pair", test_hyperparameters={"num_bessel": 4})
class ToyPairPotential(Potential):
    """forward(graph) -> [N] eV: a sum of species-pair radial functions over the neighbors."""

    def __init__(
        self, species: list[int], r_max: float = 4.0, num_bessel: int = 6, polynomial_p: int = 6
    ) -> None:
        super().__init__(species, r_max, dict(num_bessel=num_bessel, polynomial_p=polynomial_p))
        self.radial_embedding = RadialEmbedding(r_max, num_bessel, polynomial_p)
        # w[Z_i, Z_j, k]: [num_species, num_species, num_bessel]
        self.pair_weights = nn.Parameter(
            torch.randn(self.num_species, self.num_species, num_bessel) / num_bessel**0.5
        )

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        lengths = torch.linalg.norm(edge_vectors(graph), dim=-1, keepdim=True)  # [E, 1] Å
        radial = self.radial_embedding(lengths)  # [E, num_bessel]
        weights = self.pair_weights[species[receiver], species[sender]]  # [E, num_bessel]
        pair_energy = 0.5 * (weights * radial).sum(dim=-1)  # [E]
        energy = scatter_sum(pair_energy, receiver, species.shape[0], keep_source=False)  # [N]
        return self.scale_shift(energy, species)
