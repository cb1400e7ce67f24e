"""Graphormer-3D as an interatomic potential.

Ying et al., "Do Transformers Really Perform Bad for Graph Representation?", NeurIPS 2021, and
Shi et al., "Benchmarking Graphormer on Large-Scale Molecular Modeling Datasets",
arXiv:2203.04810 (the 3D model that won the OC20 IS2RE track); reference code
microsoft/Graphormer, graphormer/models/graphormer_3d.py (hyperparameter names follow it).

Keys of atom i: the atom itself (distance 0) and every neighbour image j within r_max, each
periodic image a separate key. With s_i the species index, S the number of species, u the
polynomial cutoff envelope (u(0) = 1):

    t_ij   = s_i · S + s_j                                          pair type (query i, key j)
    ψ_ijk  = N(γ_t r_ij + β_t; μ_k, |σ_k| + 1e-5)                   Gaussian spatial encoding, k ≤ K
    h_i^0  = Emb(s_i) + W_e Σ_j u(r_ij) ψ_ij                        atom + 3D centrality encoding
    b_ijh  = NonLinear(ψ_ij)_h                                      attention bias per head
    h      ← Block(h)  for `blocks` × `layers` pre-LN layers (weights shared across blocks):
             a_ijh = q_ih · k_jh / sqrt(D/H) + b_ijh
             w_ijh = u(r_ij) exp(a_ijh) / Σ_j' u(r_ij') exp(a_ij'h)
             h_i  ← h_i + W_o ⊕_h Σ_j w_ijh v_jh,   h_i ← h_i + FFN(LN(h_i))
    e_i    = NonLinear(LN(h_i))                                     per-atom energy
    E_i    = E0[Z_i] + scale · e_i + shift                          (`Potential.scale_shift`)

N(x; μ, σ) = exp(-(x-μ)²/2σ²) / (sqrt(2π) σ); NonLinear = Linear → GELU → Linear.

Changes from the published model, all for molecular dynamics (docs/architectures/graphormer3d.md):
attention runs over the neighbours within r_max instead of all atoms of a (padded) cell, and
the envelope u multiplies the attention weights and the centrality sum, so the energy is a
smooth, size-extensive sum of per-atom terms and a periodic cell equals its supercell. Forces
and stress are -dE/dr from autograd instead of the separate 3D node head (a conservative
force field); OC20's tag embedding and per-tag energy factor, and dropout, are dropped.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.radial import PolynomialCutoff
from equimd.potentials.nn.scatter import scatter_sum
from equimd.potentials.nn.transformer import FeedForward, TransformerBlock, with_self_edges


class PairGaussianLayer(nn.Module):
    """Graphormer-3D's Gaussian basis of a pair distance with a pair-type affine map:
    r [A] Å, pair type [A] → ψ [A, K] = N(γ_t r + β_t; μ_k, |σ_k| + 1e-5)."""

    def __init__(self, num_kernel: int, num_pair_types: int) -> None:
        super().__init__()
        self.means = nn.Parameter(torch.empty(num_kernel).uniform_(0.0, 3.0))
        self.stds = nn.Parameter(torch.empty(num_kernel).uniform_(0.0, 3.0))
        self.mul = nn.Parameter(torch.ones(num_pair_types))
        self.bias = nn.Parameter(torch.zeros(num_pair_types))
        self.inv_sqrt_2pi = 1.0 / math.sqrt(2.0 * math.pi)

    def forward(self, distances: Tensor, pair_types: Tensor) -> Tensor:
        x = self.mul[pair_types] * distances + self.bias[pair_types]  # [A]
        std = self.stds.abs() + 1e-5  # [K]
        z = (x.unsqueeze(-1) - self.means) / std  # [A, K]
        return torch.exp(-0.5 * z * z) * self.inv_sqrt_2pi / std


@register_model(
    "graphormer3d",
    test_hyperparameters={
        "layers": 2,
        "blocks": 1,
        "embed_dim": 8,
        "ffn_embed_dim": 8,
        "attention_heads": 2,
        "num_kernel": 6,
    },
)
class Graphormer3D(Potential):
    """forward(graph) -> [N] eV: Graphormer-3D over the neighbours within r_max (module docstring)."""

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        layers: int = 12,
        blocks: int = 4,
        embed_dim: int = 768,
        ffn_embed_dim: int = 768,
        attention_heads: int = 48,
        num_kernel: int = 128,
        polynomial_p: int = 6,
    ) -> None:
        super().__init__(
            species,
            r_max,
            dict(
                layers=layers,
                blocks=blocks,
                embed_dim=embed_dim,
                ffn_embed_dim=ffn_embed_dim,
                attention_heads=attention_heads,
                num_kernel=num_kernel,
                polynomial_p=polynomial_p,
            ),
        )
        self.blocks = int(blocks)
        self.cutoff = PolynomialCutoff(r_max, polynomial_p)
        self.atom_encoder = nn.Embedding(self.num_species, embed_dim)
        self.gbf = PairGaussianLayer(num_kernel, self.num_species * self.num_species)
        self.edge_proj = nn.Linear(num_kernel, embed_dim)
        self.bias_proj = FeedForward(num_kernel, num_kernel, attention_heads)
        self.layers = nn.ModuleList(
            [TransformerBlock(embed_dim, ffn_embed_dim, attention_heads) for _ in range(layers)]
        )
        self.final_ln = nn.LayerNorm(embed_dim)
        self.energy_proj = FeedForward(embed_dim, embed_dim, 1)

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        num_atoms = species.shape[0]
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        lengths = torch.linalg.norm(edge_vectors(graph), dim=-1)  # [E] Å
        # keys j → queries i: the neighbour images, then each atom itself (r = 0, u = 1)
        keys, queries, envelope = with_self_edges(
            sender, receiver, self.cutoff(lengths), num_atoms
        )  # [A], [A], [A] with A = E + N
        distances = torch.cat([lengths, lengths.new_zeros(num_atoms)])  # [A] Å
        pair_types = species[queries] * self.num_species + species[keys]  # [A]
        gaussians = self.gbf(distances, pair_types)  # [A, K]
        centrality = scatter_sum(
            envelope.unsqueeze(-1) * gaussians, queries, num_atoms, keep_source=False
        )  # [N, K]
        features = self.atom_encoder(species) + self.edge_proj(centrality)  # [N, D]
        attention_bias = self.bias_proj(gaussians)  # [A, H]
        for _ in range(self.blocks):
            for layer in self.layers:
                features = layer(features, keys, queries, envelope, attention_bias)  # [N, D]
        energy = self.energy_proj(self.final_ln(features)).squeeze(-1)  # [N]
        return self.scale_shift(energy, species)
