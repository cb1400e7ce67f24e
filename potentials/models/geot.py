"""GeoT, the geometry-aware Transformer (B. Kwak, J. Park, T. Kang, J. Jo, B. Lee, S. Yoon,
"GeoT: A Geometry-Aware Transformer for Reliable Molecular Property Prediction and Chemically
Interpretable Representation Learning", ACS Omega 8, 39759 (2023), arXiv:2106.15516; reference
code github.com/oleneyl/geometry-aware-transformer, models/modules/atomic.py), as a local,
smooth interatomic potential.

h⁰_i = Embedding(Z_i)                                          [N, D]
for each layer t (D = H · d, heads h = 1..H):
    q_i, k_i, v_i = W_q h_i + b_q, W_k h_i + b_k, W_v h_i + b_v          [N, H, d]
    w_ij = ssp(W₂ ssp(W₁ g(r_ij) + b₁) + b₂)    distance attribute   [E, H, d]
           g_k(r) = exp(-γ (r - μ_k)²)           Gaussian expansion ("schnet" expansion)
    a_ij = f_cut(r_ij) · Σ_c q_ic k_jc w_ijc / √d    attention map, no softmax  [E, H]
    a_ii = Σ_c q_ic k_ic w_c(r = 0) / √d             the atom attends to itself  [N, H]
    o_i = W_o concat_h( a_ii v_i + Σ_{j ∈ N(i)} a_ij v_j ) + b_o            [N, D]
    h_i ← LN(h_i + o_i);  h_i ← LN(h_i + W_f2 elu(W_f1 h_i + b_f1) + b_f2)   post-LN block
e_i = W_r2 elu(W_r1 h_i + b_r1) + b_r2 ;  E_i = E0[Z_i] + scale · e_i + shift

The reference's attention weights are the raw weighted dot products (`USE_SOFTMAX = False` in
`scaled_weighted_dot_product_attention`), so no softmax normalisation is needed here.
Changes for MD (docs/architectures/geot.md): (1) the attention runs over the neighbour-list
edges within r_max (periodic images are separate keys) instead of all atom pairs of a molecule,
and each a_ij carries the polynomial envelope f_cut, so energy and forces are continuous when
an atom crosses r_max and the energy is size-extensive under periodic boundary conditions;
(2) the readout MLP acts on each atom before the sum over atoms (the reference sums first),
which makes the energy a sum of atomic contributions. Cost: O(E · D + N · D²) per layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.gaussian_basis import GaussianBasis, shifted_softplus
from equimd.potentials.nn.radial import PolynomialCutoff
from equimd.potentials.nn.scatter import scatter_sum


class DistanceAttribute(nn.Module):
    """Gaussian features [E, num_basis] → distance attribute w [E, H, d] (two ssp layers)."""

    def __init__(self, num_basis: int, radial_hidden: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(num_basis, radial_hidden)
        self.linear_2 = nn.Linear(radial_hidden, num_heads * head_dim)
        self.num_heads = num_heads
        self.head_dim = head_dim

    def forward(self, gaussians: Tensor) -> Tensor:
        hidden = shifted_softplus(self.linear_1(gaussians))  # [E, radial_hidden]
        weights = shifted_softplus(self.linear_2(hidden))  # [E, H·d]
        return weights.view(-1, self.num_heads, self.head_dim)


class GeometryAwareAttention(nn.Module):
    """Multi-head attention over the edges, logits weighted by the distance attribute."""

    def __init__(self, model_dim: int, num_heads: int, num_basis: int, radial_hidden: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = model_dim // num_heads
        self.query = nn.Linear(model_dim, model_dim)
        self.key = nn.Linear(model_dim, model_dim)
        self.value = nn.Linear(model_dim, model_dim)
        self.output = nn.Linear(model_dim, model_dim)
        self.distance_attribute = DistanceAttribute(
            num_basis, radial_hidden, num_heads, self.head_dim
        )

    def forward(
        self,
        h: Tensor,
        gaussians: Tensor,
        self_gaussians: Tensor,
        envelope: Tensor,
        sender: Tensor,
        receiver: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """h [N, D], gaussians [E, K], self_gaussians [1, K] (r = 0), envelope [E] →
        (update [N, D], attention map a_ij [E, H])."""
        num_atoms = h.shape[0]
        shape = (num_atoms, self.num_heads, self.head_dim)
        q = self.query(h).view(shape)  # [N, H, d]
        k = self.key(h).view(shape)  # [N, H, d]
        v = self.value(h).view(shape)  # [N, H, d]
        scale = 1.0 / math.sqrt(self.head_dim)
        w = self.distance_attribute(gaussians)  # [E, H, d]
        attention = (q[receiver] * k[sender] * w).sum(-1) * scale  # [E, H]
        attention = attention * envelope.unsqueeze(-1)  # [E, H]
        w_self = self.distance_attribute(self_gaussians)  # [1, H, d]
        attention_self = (q * k * w_self).sum(-1) * scale  # [N, H]
        messages = attention.unsqueeze(-1) * v[sender]  # [E, H, d]
        attended = scatter_sum(messages, receiver, num_atoms, keep_source=False)  # [N, H, d]
        attended = attended + attention_self.unsqueeze(-1) * v  # [N, H, d]
        return self.output(attended.reshape(num_atoms, -1)), attention


class GeoTLayer(nn.Module):
    """Post-LN Transformer encoder layer (AtomicLayer of the reference)."""

    def __init__(
        self, model_dim: int, num_heads: int, hidden_dim: int, num_basis: int, radial_hidden: int
    ) -> None:
        super().__init__()
        self.attention = GeometryAwareAttention(model_dim, num_heads, num_basis, radial_hidden)
        self.norm_attention = nn.LayerNorm(model_dim, eps=1e-6)
        self.feed_forward_1 = nn.Linear(model_dim, hidden_dim)
        self.feed_forward_2 = nn.Linear(hidden_dim, model_dim)
        self.norm_feed_forward = nn.LayerNorm(model_dim, eps=1e-6)

    def forward(
        self,
        h: Tensor,
        gaussians: Tensor,
        self_gaussians: Tensor,
        envelope: Tensor,
        sender: Tensor,
        receiver: Tensor,
    ) -> tuple[Tensor, Tensor]:
        update, attention = self.attention(
            h, gaussians, self_gaussians, envelope, sender, receiver
        )  # [N, D], [E, H]
        h = self.norm_attention(h + update)  # [N, D]
        feed_forward = self.feed_forward_2(nn.functional.elu(self.feed_forward_1(h)))  # [N, D]
        return self.norm_feed_forward(h + feed_forward), attention


@register_model(
    "geot",
    test_hyperparameters={
        "transformer_model_dim": 16,
        "transformer_num_heads": 4,
        "transformer_hidden_dimension": 8,
        "transformer_num_layers": 2,
        "num_basis": 8,
        "radial_hidden": 8,
        "readout_hidden": 8,
    },
)
class GeoT(Potential):
    """forward(graph) -> [N] eV. Attention over the neighbours within r_max (Å)."""

    equivariance = "O(3)"  # only distances enter: invariant under rotations and reflections

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        transformer_model_dim: int = 128,
        transformer_num_heads: int = 8,
        transformer_hidden_dimension: int = 256,
        transformer_num_layers: int = 4,
        num_basis: int = 50,
        basis_gamma: float = 10.0,
        radial_hidden: int = 64,
        readout_hidden: int = 64,
        polynomial_p: int = 6,
    ) -> None:
        super().__init__(
            species,
            r_max,
            dict(
                transformer_model_dim=transformer_model_dim,
                transformer_num_heads=transformer_num_heads,
                transformer_hidden_dimension=transformer_hidden_dimension,
                transformer_num_layers=transformer_num_layers,
                num_basis=num_basis,
                basis_gamma=basis_gamma,
                radial_hidden=radial_hidden,
                readout_hidden=readout_hidden,
                polynomial_p=polynomial_p,
            ),
        )
        if transformer_model_dim % transformer_num_heads != 0:
            raise ValueError(
                f"transformer_model_dim ({transformer_model_dim}) must be a multiple of "
                f"transformer_num_heads ({transformer_num_heads})"
            )
        self.embedding = nn.Embedding(self.num_species, transformer_model_dim)
        nn.init.normal_(self.embedding.weight, std=0.05)  # Keras 'normal', as the reference
        self.gaussian_basis = GaussianBasis(0.0, r_max, num_basis, gamma=basis_gamma)
        self.cutoff = PolynomialCutoff(r_max, polynomial_p)
        self.layers = nn.ModuleList(
            [
                GeoTLayer(
                    transformer_model_dim,
                    transformer_num_heads,
                    transformer_hidden_dimension,
                    num_basis,
                    radial_hidden,
                )
                for _ in range(transformer_num_layers)
            ]
        )
        self.readout_hidden = nn.Linear(transformer_model_dim, readout_hidden)
        self.readout = nn.Linear(readout_hidden, 1)

    def forward(self, graph: AtomicGraph) -> Tensor:
        return self.energy_and_attention(graph)[0]

    def energy_and_attention(self, graph: AtomicGraph) -> tuple[Tensor, list[Tensor]]:
        """Per-atom energies [N] eV and the attention map a_ij [E, H] of every layer (the
        interpretable maps of the paper, one value per neighbour-list edge and head)."""
        species = self.species_index(graph.numbers)  # [N]
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        lengths = torch.linalg.norm(edge_vectors(graph), dim=-1)  # [E] Å
        gaussians = self.gaussian_basis(lengths)  # [E, K]
        self_gaussians = self.gaussian_basis(lengths.new_zeros(1))  # [1, K], r = 0
        envelope = self.cutoff(lengths)  # [E]
        h = self.embedding(species)  # [N, D]
        maps: list[Tensor] = []
        for layer in self.layers:
            h, attention = layer(h, gaussians, self_gaussians, envelope, sender, receiver)
            maps.append(attention)
        hidden = nn.functional.elu(self.readout_hidden(h))  # [N, readout_hidden]
        energy = self.readout(hidden).squeeze(-1)  # [N]
        return self.scale_shift(energy, species), maps
