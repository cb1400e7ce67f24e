"""Matformer (K. Yan, Y. Liu, Y. Lin, S. Ji, "Periodic Graph Transformers for Crystal Material
Property Prediction", NeurIPS 2022, arXiv:2209.11807; reference code github.com/YKQ98/Matformer,
matformer/models/pyg_att.py and transformer.py), as a local, smooth interatomic potential.

Graph: every neighbour j of atom i within r_max through every periodic image is its own edge
(the periodic-invariant multi-edge graph), and atom i's own images at lattice vectors shorter
than r_max are edges i → i (the lattice self-connections, which encode the repeating pattern).

h⁰_i = Embedding(Z_i)                                                    [N, C]
ε_ij = W_e2 softplus(W_e1 g(r_ij) + b_e1) + b_e2,  g_k(r) = exp(-γ (r - μ_k)²)   [E, C]
for each layer t (heads h = 1..H; i receives, j sends):
    q_i, k_i, v_i = W_q h_i + b_q, W_k h_i + b_k, W_v h_i + b_v          [N, H, C]
    e_ij = W_ε ε_ij                                                      [E, H, C]
    α_ij = (q_i ‖ q_i ‖ q_i) ⊙ (k_i ‖ k_j ‖ e_ij) / √(3C)                  [E, H, 3C]
    m_ij = LN_C(W_m2 [ (W_m1 (v_i ‖ v_j ‖ e_ij) + b_m1) ⊙ σ(LN_3C(α_ij)) ] + b_m2)   [E, H, C]
    h_i ← SiLU(LN_C(W_c concat_h Σ_j f_cut(r_ij) m_ij + b_c)) + W_s h_i + b_s      [N, C]
e_i = W_o2 SiLU(W_o1 h_i + b_o1) + b_o2 ;  E_i = E0[Z_i] + scale · e_i + shift

The attention is Matformer's softmax-free node-edge attention: a sigmoid gate σ(LN(α)) per
channel, summed over the incoming edges, so no normalisation over neighbours is involved.
Changes for MD (docs/architectures/matformer.md): (1) a radius graph with the polynomial
envelope f_cut on each message instead of the reference's 12 nearest neighbours (a k-NN graph
changes discontinuously when neighbours swap rank); (2) the lattice self-connections are the
images of atom i within r_max, with the same edge features as any edge, instead of six fixed
images (a, b, c, a+b, a+c, b+c) whatever their length: those depend on the choice of the cell
(a supercell or another basis of the same lattice would change the energy); (3) LayerNorm over
channels replaces the BatchNorm after the attention (BatchNorm couples the atoms of a batch
in training); (4) the readout MLP acts per atom and the energy is the sum (the reference
averages over atoms before its MLP). Molecules (no cell) have no lattice self-connections.
Cost per layer: O(E · H · C²) for the edge MLPs, O(N · H · C²) for the node projections.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.gaussian_basis import GaussianBasis
from equimd.potentials.nn.knn_graph import (
    kth_neighbor_distance,
    lattice_self_connections,
    nearest_neighbor_edges,
)
from equimd.potentials.nn.radial import PolynomialCutoff
from equimd.potentials.nn.scatter import scatter_sum

TIE_TOLERANCE = 1e-5  # Å: equal distances of the k-NN graph (nn/knn_graph.py)


class EdgeEmbedding(nn.Module):
    """Edge lengths [E] Å → ε [E, C]: Gaussian expansion → Linear → Softplus → Linear."""

    def __init__(self, r_max: float, edge_features: int, node_features: int) -> None:
        super().__init__()
        self.gaussian_basis = GaussianBasis(0.0, r_max, edge_features)  # γ = 1 / spacing
        self.linear_1 = nn.Linear(edge_features, node_features)
        self.linear_2 = nn.Linear(node_features, node_features)

    def forward(self, lengths: Tensor) -> Tensor:
        hidden = nn.functional.softplus(self.linear_1(self.gaussian_basis(lengths)))  # [E, C]
        return self.linear_2(hidden)  # [E, C]


class MatformerConv(nn.Module):
    """One Matformer layer: gated node-edge attention, summed over the incoming edges."""

    def __init__(self, node_features: int, heads: int) -> None:
        super().__init__()
        channels = node_features
        self.heads = heads
        self.channels = channels
        self.lin_query = nn.Linear(channels, heads * channels)
        self.lin_key = nn.Linear(channels, heads * channels)
        self.lin_value = nn.Linear(channels, heads * channels)
        self.lin_edge = nn.Linear(channels, heads * channels, bias=False)
        self.layer_norm = nn.LayerNorm(3 * channels)  # on α, before the sigmoid gate
        self.lin_msg_update = nn.Linear(3 * channels, 3 * channels)
        self.msg_linear = nn.Linear(3 * channels, channels)
        self.msg_norm = nn.LayerNorm(channels)
        self.lin_concate = nn.Linear(heads * channels, channels)
        self.norm = nn.LayerNorm(channels)  # the reference's BatchNorm1d, see module docstring
        self.lin_skip = nn.Linear(channels, channels)

    def forward(
        self, h: Tensor, edge_features: Tensor, envelope: Tensor, sender: Tensor, receiver: Tensor
    ) -> Tensor:
        """h [N, C], edge_features ε [E, C], envelope [E] (f_cut, or the edge multiplicity of
        the reference graph) → h' [N, C]."""
        num_atoms = h.shape[0]
        shape = (num_atoms, self.heads, self.channels)
        query = self.lin_query(h).view(shape)  # [N, H, C]
        key = self.lin_key(h).view(shape)  # [N, H, C]
        value = self.lin_value(h).view(shape)  # [N, H, C]
        edge = self.lin_edge(edge_features).view(-1, self.heads, self.channels)  # [E, H, C]
        query_i = query[receiver]  # [E, H, C]
        alpha = torch.cat([query_i * key[receiver], query_i * key[sender], query_i * edge], -1)
        alpha = alpha / math.sqrt(3 * self.channels)  # [E, H, 3C]
        gate = torch.sigmoid(self.layer_norm(alpha))  # [E, H, 3C]
        message = torch.cat([value[receiver], value[sender], edge], dim=-1)  # [E, H, 3C]
        message = self.lin_msg_update(message) * gate  # [E, H, 3C]
        message = self.msg_norm(self.msg_linear(message))  # [E, H, C]
        message = message * envelope.view(-1, 1, 1)  # [E, H, C]
        aggregated = scatter_sum(message, receiver, num_atoms, keep_source=False)  # [N, H, C]
        out = self.lin_concate(aggregated.reshape(num_atoms, -1))  # [N, C]
        return nn.functional.silu(self.norm(out)) + self.lin_skip(h)  # [N, C]


@register_model(
    "matformer",
    test_hyperparameters={
        "conv_layers": 2,
        "edge_features": 12,
        "node_features": 8,
        "fc_features": 8,
        "node_layer_head": 2,
    },
)
class Matformer(Potential):
    """forward(graph) -> [N] eV. Periodic multi-edge radius graph, cutoff r_max (Å)."""

    equivariance = "O(3)"  # only distances enter: invariant under rotations and reflections

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        conv_layers: int = 5,
        edge_features: int = 128,
        node_features: int = 128,
        fc_features: int = 128,
        node_layer_head: int = 4,
        polynomial_p: int = 6,
        neighbor_strategy: str = "radius",
        max_neighbors: int = 12,
    ) -> None:
        if neighbor_strategy not in ("radius", "k-nearest"):
            raise ValueError(
                f"matformer: neighbor_strategy must be 'radius' (smooth, for MD) or 'k-nearest' "
                f"(the reference's graph), got {neighbor_strategy!r}"
            )
        if max_neighbors < 1:
            raise ValueError(f"matformer: max_neighbors must be at least 1, got {max_neighbors}")
        super().__init__(
            species,
            r_max,
            dict(
                conv_layers=conv_layers,
                edge_features=edge_features,
                node_features=node_features,
                fc_features=fc_features,
                node_layer_head=node_layer_head,
                polynomial_p=polynomial_p,
                neighbor_strategy=neighbor_strategy,
                max_neighbors=max_neighbors,
            ),
        )
        self.k_nearest = neighbor_strategy == "k-nearest"
        self.max_neighbors = max_neighbors
        self.tie_tolerance = TIE_TOLERANCE
        self.atom_embedding = nn.Embedding(self.num_species, node_features)
        self.edge_embedding = EdgeEmbedding(r_max, edge_features, node_features)
        self.cutoff = PolynomialCutoff(r_max, polynomial_p)
        self.att_layers = nn.ModuleList(
            [MatformerConv(node_features, node_layer_head) for _ in range(conv_layers)]
        )
        self.fc = nn.Linear(node_features, fc_features)
        self.fc_out = nn.Linear(fc_features, 1)

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        lengths = torch.linalg.norm(edge_vectors(graph), dim=-1)  # [E] Å
        if self.k_nearest:
            sender, receiver, lengths, envelope = self.reference_graph(graph, sender, receiver, lengths)
        else:
            envelope = self.cutoff(lengths)  # [E]
        edge_features = self.edge_embedding(lengths)  # [E, C]
        h = self.atom_embedding(species)  # [N, C]
        for layer in self.att_layers:
            h = layer(h, edge_features, envelope, sender, receiver)  # [N, C]
        energy = self.fc_out(nn.functional.silu(self.fc(h))).squeeze(-1)  # [N]
        return self.scale_shift(energy, species)

    def reference_graph(
        self, graph: AtomicGraph, sender: Tensor, receiver: Tensor, lengths: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The reference's crystal graph (`neighbor_strategy: k-nearest`, nn/knn_graph.py): the
        undirected k-NN graph within r_max plus the lattice self-connections; returns (sender,
        receiver, lengths, multiplicity) of its edges, the multiplicity in place of f_cut."""
        num_atoms = graph.positions.shape[0]
        kth = kth_neighbor_distance(lengths, receiver, num_atoms, self.max_neighbors)  # [N]
        kept, multiplicity = nearest_neighbor_edges(lengths, sender, receiver, kth, self.tie_tolerance)
        atom, vectors = lattice_self_connections(
            graph.cell, graph.pbc, graph.batch, kth, self.r_max, self.tie_tolerance
        )  # [L], [L, 3]
        sender = torch.cat([sender[kept], atom])  # [E' + L]
        receiver = torch.cat([receiver[kept], atom])  # [E' + L]
        lengths = torch.cat([lengths[kept], torch.linalg.norm(vectors, dim=-1)])  # [E' + L] Å
        multiplicity = torch.cat([multiplicity, torch.ones_like(atom, dtype=lengths.dtype)])
        return sender, receiver, lengths, multiplicity
