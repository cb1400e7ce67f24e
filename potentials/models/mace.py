"""MACE (Batatia, Kovács, Simm, Ortner, Csányi, NeurIPS 2022), as mace-torch's ScaleShiftMACE.

h⁰_i = W · onehot(z_i)                                  element embedding (scalars)
R_k(r) = √(2/r_max) sin(kπr/r_max)/r · f_cut(r)          Bessel × polynomial envelope (eq. 7)
for each layer t = 1..num_interactions:
    A_i  = W Σ_j MLP_t(R(r_ji)) ⊙ (W h_j) ⊗ Y(r̂_ji) / avg_num_neighbors     interaction (eq. 8-9)
    B_i  = Σ_ν Σ_k W_{z_i} U^ν A_i^{⊗ν},  ν ≤ correlation                     product basis (eq. 10)
    h_i  = W · B_i (+ W_sc · (h_i ⊗ onehot(z_i)), residual variant)           update (eq. 11)
    e^t_i = W · h_i|scalars,  last layer: W₂ φ(W₁ h_i)                        readouts
E_i = E0[z_i] + scale · Σ_t e^t_i + shift                                    (ScaleShiftMACE)

Hyperparameter names follow mace-torch. The last layer keeps only the scalars of
`hidden_irreps` (mace's default; `keep_last_layer_irreps=True` keeps them all). The blocks live in
`equimd.potentials.nn.mace_blocks`; a mace-torch model is imported with `equimd.potentials.models.mace_import`.
"""

from __future__ import annotations

from typing import Optional

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.edge_pairs import (
    first_of_pairs,
    harmonics_per_edge,
    in_pair_order,
    reflection_signs,
)
from equimd.potentials.nn.mace_blocks import (
    GATES,
    INTERACTION_CLASSES,
    InteractionBlock,
    LinearReadout,
    NonLinearReadout,
    ProductBlock,
    interaction_irreps,
)
from equimd.potentials.nn.mace_radial import MaceRadialEmbedding, ZBLRepulsion
from equimd.potentials.nn.species import one_hot


# the shared tests' configuration (docs/models.md): both interaction variants (non-residual
# first layer, residual second), vector hidden features, correlation 3
@register_model(
    "mace",
    test_hyperparameters=dict(
        max_ell=2,
        hidden_irreps="8x0e+8x1o",
        correlation=3,
        num_interactions=2,
        MLP_irreps="4x0e",
        radial_MLP=[16, 16],
        interaction_first="RealAgnosticInteractionBlock",
        interaction="RealAgnosticResidualInteractionBlock",
        avg_num_neighbors=8.0,
    ),
)
class MACE(Potential):
    """MACE potential: `forward(graph) -> [N]` per-atom energies (eV).

    Hyperparameters (mace-torch names):
        r_max: cutoff radius, Å.
        num_bessel: radial Bessel functions; num_polynomial_cutoff: envelope order p.
        max_ell: highest degree of the edge spherical harmonics and of the messages.
        hidden_irreps: node features between layers, e.g. "128x0e+128x1o"; every irrep has the
            same multiplicity (channels) and the first one is the scalars 0e.
        correlation: body order of the product basis (ν ≤ correlation), or one per layer.
        num_interactions: number of layers.
        MLP_irreps: hidden scalars of the last layer's readout MLP, e.g. "16x0e".
        radial_MLP: hidden widths of the radial MLP (edge features → convolution weights).
        interaction_first, interaction: "RealAgnosticInteractionBlock" (non-residual) or
            "RealAgnosticResidualInteractionBlock", for the first and the later layers.
        avg_num_neighbors: message normalisation (computed from the training set by the trainer).
        gate: readout nonlinearity, "silu" | "tanh" | "abs" | None.
        keep_last_layer_irreps: keep all of hidden_irreps in the last layer (mace option).
        apply_cutoff: multiply the envelope into the radial features (mace's default True);
            False multiplies it into the convolution weights instead.
        radial_type: radial basis, "bessel" (eq. 7), "gaussian" or "chebyshev" (mace's T_n(r),
            r in Å).
        distance_transform: None, "Agnesi" or "Soft": element-dependent transform of the
            basis argument (`equimd.potentials.nn.mace_radial`).
        pair_repulsion: add the ZBL screened nuclear repulsion (inside the scale, as mace).
    Per-element E0s, scale and shift are buffers of `self.scale_shift` (set by the trainer or
    the importer), not hyperparameters. The convolution backend is chosen after construction
    (`equimd.potentials.nn.convolution.apply_convolution_backend`; same numbers).

    Build the model under float64 default dtype (or load a float64 checkpoint) for float64 work:
    the contraction's coupling bases are computed at construction in the default dtype.
    """

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        num_bessel: int = 8,
        num_polynomial_cutoff: int = 5,
        max_ell: int = 3,
        hidden_irreps: str = "128x0e+128x1o",
        correlation: int | list[int] = 3,
        num_interactions: int = 2,
        MLP_irreps: str = "16x0e",  # noqa: N803 - mace-torch's name
        radial_MLP: tuple[int, ...] | list[int] = (64, 64, 64),  # noqa: N803
        interaction_first: str = "RealAgnosticResidualInteractionBlock",
        interaction: str = "RealAgnosticResidualInteractionBlock",
        avg_num_neighbors: float = 1.0,
        gate: Optional[str] = "silu",
        keep_last_layer_irreps: bool = False,
        apply_cutoff: bool = True,
        radial_type: str = "bessel",
        distance_transform: Optional[str] = None,
        pair_repulsion: bool = False,
    ) -> None:
        correlations = (
            [int(c) for c in correlation]
            if isinstance(correlation, list | tuple)
            else [int(correlation)] * int(num_interactions)
        )
        super().__init__(
            species,
            r_max,
            dict(
                num_bessel=int(num_bessel),
                num_polynomial_cutoff=int(num_polynomial_cutoff),
                max_ell=int(max_ell),
                hidden_irreps=str(o3.Irreps(hidden_irreps)),
                correlation=correlation if isinstance(correlation, int) else correlations,
                num_interactions=int(num_interactions),
                MLP_irreps=str(o3.Irreps(MLP_irreps)),
                radial_MLP=[int(h) for h in radial_MLP],
                interaction_first=interaction_first,
                interaction=interaction,
                avg_num_neighbors=float(avg_num_neighbors),
                gate=gate,
                keep_last_layer_irreps=bool(keep_last_layer_irreps),
                apply_cutoff=bool(apply_cutoff),
                radial_type=radial_type,
                distance_transform=distance_transform,
                pair_repulsion=bool(pair_repulsion),
            ),
        )
        irreps_hidden = o3.Irreps(hidden_irreps)
        _check_hyperparameters(
            irreps_hidden, correlations, int(num_interactions), interaction_first, interaction, gate
        )
        num_features = irreps_hidden[0].mul
        irreps_attrs = o3.Irreps(f"{self.num_species}x0e")
        irreps_sh = o3.Irreps.spherical_harmonics(max_ell)
        pseudoscalars = irreps_hidden.count(o3.Irrep("0o")) > 0
        irreps_scalars = o3.Irreps([irreps_hidden[0]])
        self.apply_cutoff = bool(apply_cutoff)
        # R(r) and the radial MLPs once per pair of reverse edges where the neighbour list is
        # made of such pairs (`edge_pairs`); False: per edge. The same function either way.
        self.share_pair_radial = True

        # Embeddings: elements, edge directions Y(r̂) and lengths R(r).
        self.node_embedding = o3.Linear(irreps_attrs, irreps_scalars)
        self.spherical_harmonics = o3.SphericalHarmonics(
            irreps_sh, normalize=True, normalization="component"
        )
        # Y(-r) = (-1)^l Y(r): with edges in pair order, Y once per pair (`harmonics_per_edge`)
        self.register_buffer("sh_signs", reflection_signs(irreps_sh), persistent=False)
        self.radial_embedding = MaceRadialEmbedding(
            r_max, num_bessel, num_polynomial_cutoff, radial_type, distance_transform, apply_cutoff
        )
        self.pair_repulsion: Optional[ZBLRepulsion] = (
            ZBLRepulsion(num_polynomial_cutoff) if pair_repulsion else None
        )

        interactions, products, readouts = [], [], []
        irreps_node = irreps_scalars
        for layer in range(num_interactions):
            last = layer == num_interactions - 1
            # mace: the last layer keeps only the scalars (a single layer too); the first layer's
            # readout is linear even when it is the only one
            keep_all = not last or (keep_last_layer_irreps and layer > 0)
            irreps_out = irreps_hidden if keep_all else irreps_scalars
            # Messages of later layers carry both parities when hidden_irreps has pseudoscalars.
            irreps_message = interaction_irreps(
                num_features, max_ell, both_parities=layer > 0 and pseudoscalars
            )
            block = interaction_first if layer == 0 else interaction
            interactions.append(
                InteractionBlock(
                    irreps_node,
                    irreps_attrs,
                    irreps_sh,
                    irreps_message,
                    irreps_out,
                    num_bessel,
                    list(radial_MLP),
                    avg_num_neighbors,
                    residual="Residual" in block,
                    density="Density" in block,
                )
            )
            products.append(
                ProductBlock(irreps_message, irreps_out, correlations[layer], self.num_species)
            )
            if last and layer > 0:
                readouts.append(NonLinearReadout(irreps_out, MLP_irreps, gate))
            else:
                readouts.append(LinearReadout(irreps_out))
            irreps_node = irreps_hidden
        self.interactions = nn.ModuleList(interactions)
        self.products = nn.ModuleList(products)
        self.readouts = nn.ModuleList(readouts)

    @torch.jit.unused
    def start_from_constant_energy(self) -> bool:
        """Zero the last linear of every layer's readout (Σ_t e_i^t = 0: E0 + shift)."""
        with torch.no_grad():
            for readout in self.readouts:
                last = readout.linear_2 if hasattr(readout, "linear_2") else readout.linear
                for parameter in last.parameters():
                    parameter.zero_()
        return True

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        node_attrs = one_hot(species, self.num_species, graph.positions.dtype)  # [N, S]
        # R(r) depends on the length and symmetrically on the two elements: once per pair of
        # reverse edges where the list is made of such pairs, the edges in pair order
        # (edge_pairs.py; the same function)
        edge_index, vectors, paired = in_pair_order(
            graph.edge_index, edge_vectors(graph), graph.edge_shift, species.shape[0],
            self.share_pair_radial,
        )  # [2, E], [E, 3] Å (receiver - sender), bool
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)  # [E, 1] Å
        edge_sh = harmonics_per_edge(
            self.spherical_harmonics(first_of_pairs(vectors, paired)), self.sh_signs, paired
        )  # [E, (max_ell+1)²]
        z_sender = graph.numbers[edge_index[0]]  # [E] atomic numbers
        z_receiver = graph.numbers[edge_index[1]]
        edge_radial, envelope = self.radial_embedding(
            first_of_pairs(lengths, paired), first_of_pairs(z_sender, paired),
            first_of_pairs(z_receiver, paired),
        )  # [E or P, num_radial], [E or P, 1]
        edge_cutoff: Optional[Tensor] = None if self.apply_cutoff else envelope

        node_features = self.node_embedding(node_attrs)
        energy = torch.zeros_like(species, dtype=graph.positions.dtype)  # Σ_t e^t_i, [N]
        pair_repulsion = self.pair_repulsion
        if pair_repulsion is not None:  # ZBL, inside the scale like mace's ScaleShiftMACE
            energy = energy + pair_repulsion(
                lengths, z_sender, z_receiver, edge_index[1], species.shape[0]
            )
        layers = zip(self.interactions, self.products, self.readouts)  # noqa: B905 - TorchScript
        for interaction, product, readout in layers:
            message, self_connection = interaction(
                node_features, node_attrs, edge_sh, edge_radial, edge_index, edge_cutoff, paired,
            )
            node_features = product(message, species, self_connection)
            energy = energy + readout(node_features)
        return self.scale_shift(energy, species)


def _check_hyperparameters(
    irreps_hidden: o3.Irreps,
    correlations: list[int],
    num_interactions: int,
    interaction_first: str,
    interaction: str,
    gate: Optional[str],
) -> None:
    """Raise ValueError naming the hyperparameter that MACE cannot be built with."""
    if num_interactions < 1:
        raise ValueError(f"num_interactions must be >= 1, got {num_interactions}")
    if len(irreps_hidden) == 0 or irreps_hidden[0].ir != o3.Irrep("0e"):
        raise ValueError(
            f"hidden_irreps must start with scalars (e.g. 128x0e), got {irreps_hidden}"
        )
    if len({mul for mul, _ in irreps_hidden}) != 1:
        raise ValueError(
            f"every irrep of hidden_irreps needs the same multiplicity (channels), got {irreps_hidden}"
        )
    if len(correlations) != num_interactions or min(correlations) < 1:
        raise ValueError(
            f"correlation must be >= 1, one value or one per interaction ({num_interactions}),"
            f" got {correlations}"
        )
    for name, value in (("interaction_first", interaction_first), ("interaction", interaction)):
        if value not in INTERACTION_CLASSES:
            raise ValueError(
                f"{name}={value!r} is not supported; available: {list(INTERACTION_CLASSES)}"
            )
    if gate not in GATES:
        raise ValueError(f"gate={gate!r} is not supported; available: {list(GATES)}")
