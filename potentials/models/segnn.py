"""SEGNN: steerable E(3)-equivariant graph neural network (Brandstetter, Hesselink, van der Pol,
Bekkers & Welling, "Geometric and Physical Quantities Improve E(3) Equivariant Message Passing",
ICLR 2022; reference code RobDHess/Steerable-E3-GNN), as a local, smooth potential.

Attributes (steerable vectors, component-normalised spherical harmonics Y, l ≤ lmax_attr):
    a_ij = Y(x_j − x_i) for the edge from sender j to receiver i              (edge attributes)
    a_i  = [1, Σ_j f_cut(r_ij) Y_{l>0}(x_j − x_i) / ⟨n⟩]                       (node attributes)
Embedding:
    h_i⁰ = W_{a_i} onehot(Z_i) + b                                             (eq. 6-7)
For each layer t (non-linear message and update functions, eq. 8-9):
    m_ij = f_cut(r_ij) · σ(W_{a_ij} σ(W_{a_ij} [h_i, h_j, φ(r_ij)] + b) + b)   message
    m_i  = Σ_j m_ij / ⟨n⟩                                                      aggregation
    h_i ← h_i + W_{a_i} σ(W_{a_i} [h_i, m_i] + b) + b                          update (residual)
Readout (SEGNN's pre- and post-pool networks, applied per atom):
    e_i = W σ(W W_{a_i} σ(W_{a_i} h_i + b) + b) + b ;   E_i = E0[Z_i] + scale · e_i + shift
W_a: CG tensor product with the attribute a (`SteerableLinear`), σ: gated non-linearity
(`SteerableGatedLinear`), φ(r): Bessel basis × envelope, f_cut: polynomial envelope.

Deviations from the paper's QM9 model, for molecular dynamics (docs/architectures/segnn.md):
messages are multiplied by f_cut(r_ij) and the node attributes are an envelope-weighted sum
(the paper: a plain mean) so that energies and forces are continuous when a neighbour crosses
the cutoff; the extra message feature is φ(r) (the paper: |r|²); aggregation is divided by
⟨n⟩; the readout network is applied to every atom and the energies summed (pool "sum" after
the network, so the energy is extensive); no batch or instance normalisation (norm "none":
both couple atoms across the structure and the batch).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.radial import RadialEmbedding
from equimd.potentials.nn.scatter import scatter_sum
from equimd.potentials.nn.species import one_hot
from equimd.potentials.nn.steerable_mlp import (
    SteerableGatedLinear,
    SteerableLinear,
    reachable_irreps,
    weight_balanced_irreps,
)


class SEGNNLayer(nn.Module):
    """One SEGNN message-passing layer: two gated steerable layers on each edge (conditioned on
    the edge attributes), a sum over the incoming edges, two steerable layers on each node
    (conditioned on the node attributes) and a residual connection."""

    def __init__(
        self,
        irreps_hidden: o3.Irreps,
        irreps_edge_attr: o3.Irreps,
        irreps_node_attr: o3.Irreps,
        num_radial: int,
        avg_num_neighbors: float,
    ) -> None:
        super().__init__()
        irreps_hidden = o3.Irreps(irreps_hidden)
        # [h_receiver, h_sender, φ(r)] concatenated, in this order
        irreps_message_in = irreps_hidden + irreps_hidden + o3.Irreps(f"{num_radial}x0e")
        self.message_layer_1 = SteerableGatedLinear(
            irreps_message_in, irreps_edge_attr, irreps_hidden
        )
        self.message_layer_2 = SteerableGatedLinear(irreps_hidden, irreps_edge_attr, irreps_hidden)
        self.update_layer_1 = SteerableGatedLinear(
            irreps_hidden + irreps_hidden, irreps_node_attr, irreps_hidden
        )
        self.update_layer_2 = SteerableLinear(irreps_hidden, irreps_node_attr, irreps_hidden)
        self.message_normalization = 1.0 / float(avg_num_neighbors)

    def forward(
        self,
        node_features: Tensor,
        node_attrs: Tensor,
        edge_attrs: Tensor,
        edge_radial: Tensor,
        edge_cutoff: Tensor,
        sender: Tensor,
        receiver: Tensor,
    ) -> Tensor:
        num_nodes = node_features.shape[0]
        message_in = torch.cat(
            [node_features[receiver], node_features[sender], edge_radial], dim=-1
        )  # [E, 2·hidden + num_radial]
        messages = self.message_layer_1(message_in, edge_attrs)  # [E, hidden]
        messages = self.message_layer_2(messages, edge_attrs) * edge_cutoff  # [E, hidden]
        aggregated = scatter_sum(messages, receiver, num_nodes) * self.message_normalization
        update = self.update_layer_1(torch.cat([node_features, aggregated], dim=-1), node_attrs)
        return node_features + self.update_layer_2(update, node_attrs)  # [N, hidden]


@register_model(
    "segnn",
    test_hyperparameters=dict(
        hidden_features=8, lmax_h=1, lmax_attr=1, num_layers=2, num_bessel=4, avg_num_neighbors=8.0
    ),
)
class SEGNN(Potential):
    """SEGNN potential. Hyperparameter names follow RobDHess/Steerable-E3-GNN (main.py):
    hidden_features, lmax_h, lmax_attr, num_layers (there: layers), norm, pool."""

    # Clebsch-Gordan products of parity-carrying irreps: rotations and reflections
    equivariance = "O(3)"

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        hidden_features: int = 128,
        lmax_h: int = 2,
        lmax_attr: int = 3,
        num_layers: int = 7,
        hidden_irreps: str | None = None,
        num_bessel: int = 8,
        polynomial_p: int = 6,
        avg_num_neighbors: float = 1.0,
        norm: str = "none",
        pool: str = "sum",
    ) -> None:
        """hidden_features: scalar width the weight-balanced hidden irreps match (SEGNN's
        "weightbalanced" subspaces, n × (0e + 1o + ... up to lmax_h)); hidden_irreps: an e3nn
        irreps string used instead. lmax_attr: highest degree of the edge and node attributes.
        r_max Å; num_bessel/polynomial_p: radial features and envelope; avg_num_neighbors:
        normaliser of the message sum and node attributes. norm: only "none"; pool: only "sum"
        (per-atom energies summed), see the module docstring."""
        if norm != "none":
            raise ValueError(
                f"segnn: norm {norm!r} is not available; only 'none' (batch and instance "
                "normalisation couple the atoms of a structure and of a batch: the energy would "
                "be neither local nor extensive)"
            )
        if pool != "sum":
            raise ValueError(
                f"segnn: pool {pool!r} is not available; only 'sum' (per-atom energies summed: "
                "an averaged energy is not extensive)"
            )
        super().__init__(
            species,
            r_max,
            dict(
                hidden_features=hidden_features,
                lmax_h=lmax_h,
                lmax_attr=lmax_attr,
                num_layers=num_layers,
                hidden_irreps=hidden_irreps,
                num_bessel=num_bessel,
                polynomial_p=polynomial_p,
                avg_num_neighbors=float(avg_num_neighbors),
                norm=norm,
                pool=pool,
            ),
        )
        irreps_attr = o3.Irreps.spherical_harmonics(lmax_attr)
        irreps_hidden = (
            o3.Irreps(hidden_irreps).sort().irreps.simplify()
            if hidden_irreps
            else weight_balanced_irreps(hidden_features, irreps_attr, lmax_h)
        )
        irreps_species = o3.Irreps(f"{self.num_species}x0e")
        reachable = reachable_irreps(irreps_species, irreps_attr)
        if any(ir not in reachable for _, ir in irreps_hidden):
            raise ValueError(
                f"segnn: hidden irreps {irreps_hidden} are not all reachable from the species "
                f"embedding ⊗ attributes {irreps_attr} (raise lmax_attr, or use (-1)^l parities)"
            )
        self.irreps_hidden = irreps_hidden
        self.avg_num_neighbors = float(avg_num_neighbors)

        self.spherical_harmonics = o3.SphericalHarmonics(
            irreps_attr, normalize=True, normalization="component"
        )
        self.radial_embedding = RadialEmbedding(r_max, num_bessel, polynomial_p)
        # node attributes: the l = 0 component is 1 (as SEGNN's mean of Y_0 = 1)
        constant = torch.zeros(irreps_attr.dim)
        constant[0] = 1.0
        self.register_buffer("attr_constant", constant, persistent=False)
        self.register_buffer("attr_mask", 1.0 - constant, persistent=False)

        self.embedding = SteerableLinear(irreps_species, irreps_attr, irreps_hidden)
        self.layers = nn.ModuleList(
            SEGNNLayer(irreps_hidden, irreps_attr, irreps_attr, num_bessel, avg_num_neighbors)
            for _ in range(num_layers)
        )
        # SEGNN's pooled_irreps: one scalar per hidden irrep
        irreps_pooled = o3.Irreps(f"{irreps_hidden.num_irreps}x0e")
        scalar_one = o3.Irreps("1x0e")
        self.pre_pool_1 = SteerableGatedLinear(irreps_hidden, irreps_attr, irreps_hidden)
        self.pre_pool_2 = SteerableLinear(irreps_hidden, irreps_attr, irreps_pooled)
        self.post_pool_1 = SteerableGatedLinear(irreps_pooled, scalar_one, irreps_pooled)
        self.post_pool_2 = SteerableLinear(irreps_pooled, scalar_one, scalar_one)

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        dtype = graph.positions.dtype
        num_nodes = species.shape[0]
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        vectors = edge_vectors(graph)  # [E, 3] Å, receiver → sender is −vectors
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)  # [E, 1] Å
        edge_cutoff = self.radial_embedding.cutoff_fn(lengths)  # [E, 1]
        edge_radial = self.radial_embedding.bessel_fn(lengths) * edge_cutoff  # [E, num_bessel]
        edge_attrs = self.spherical_harmonics(-vectors)  # [E, attr] SEGNN: x_sender − x_receiver
        node_attrs = scatter_sum(edge_attrs * edge_cutoff, receiver, num_nodes)  # [N, attr]
        node_attrs = node_attrs * (self.attr_mask / self.avg_num_neighbors) + self.attr_constant

        features = self.embedding(one_hot(species, self.num_species, dtype), node_attrs)
        for layer in self.layers:
            features = layer(
                features, node_attrs, edge_attrs, edge_radial, edge_cutoff, sender, receiver
            )  # [N, hidden]
        features = self.pre_pool_2(self.pre_pool_1(features, node_attrs), node_attrs)
        ones = features.new_ones(num_nodes, 1)
        energy = self.post_pool_2(self.post_pool_1(features, ones), ones).squeeze(-1)  # [N]
        return self.scale_shift(energy, species)
