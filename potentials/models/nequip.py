"""NequIP (Batzner et al., Nat. Commun. 13, 2453 (2022)).

h⁰ = W · onehot(Z)                                  species embedding (scalars)
for each interaction layer t:
    m_ij = R(|r_ij|) ⊙ (W₁ h_i) ⊗ Y(r̂_ij)           convolution, radial MLP weights (eq. 3-5)
    h_j ← Gate( W₂ Σ_i m_ij / √⟨n⟩ + SC(h_j, onehot(Z_j)) )   (+ h_j if resnet)
e_j = W_out · h_j|scalars ;  E_j = E0[Z_j] + scale · e_j + shift
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor, nn

from potentials.data.graph import AtomicGraph, edge_vectors
from potentials.models.base import Potential, register_model
from potentials.nn.gate import equivariant_gate, gated_irreps
from potentials.nn.linear import linear, scalar_tensor_product
from potentials.nn.radial import RadialEmbedding, radial_mlp
from potentials.nn.species import one_hot
from potentials.nn.tensor_product import DEFAULT_TP_BACKEND, EdgeConvolution


def hidden_irreps(num_features: int, l_max: int, parity: bool) -> o3.Irreps:
    """num_features × every irrep up to l_max (both parities if `parity`, else (-1)^l)."""
    irreps = []
    for degree in range(l_max + 1):
        parities = (1, -1) if parity else ((-1) ** degree,)
        irreps += [(num_features, (degree, p)) for p in parities]
    return o3.Irreps(irreps).sort().irreps.simplify()


class NequIPInteraction(nn.Module):
    """One NequIP layer: linear → convolution → aggregation → linear + self-connection → gate."""

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_hidden: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_attrs: o3.Irreps,
        num_radial: int,
        radial_hidden: list[int],
        avg_num_neighbors: float,
        resnet: bool,
        tp_backend: str = DEFAULT_TP_BACKEND,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        reachable = o3.Irreps(
            [(1, ir) for _, ir_in in self.irreps_in for _, ir_sh in irreps_sh for ir in ir_in * ir_sh]
        ).sort().irreps.simplify()
        scalars, gates, gated = gated_irreps(reachable, irreps_hidden)
        self.gate = equivariant_gate(scalars, gates, gated)
        irreps_pre_gate = self.gate.irreps_in
        self.irreps_out = self.gate.irreps_out

        self.linear_in = linear(self.irreps_in, self.irreps_in)
        self.convolution = EdgeConvolution(
            self.irreps_in, irreps_sh, irreps_pre_gate, backend=tp_backend
        )
        self.radial_weights = radial_mlp(num_radial, radial_hidden, self.convolution.weight_numel)
        self.linear_out = linear(self.convolution.irreps_out, irreps_pre_gate)
        self.self_connection = scalar_tensor_product(self.irreps_in, irreps_attrs, irreps_pre_gate)
        self.message_normalization = 1.0 / math.sqrt(avg_num_neighbors)
        self.resnet = bool(resnet) and self.irreps_in == self.irreps_out

    def forward(
        self,
        node_features: Tensor,
        node_attrs: Tensor,
        edge_sh: Tensor,
        edge_radial: Tensor,
        edge_index: Tensor,
    ) -> Tensor:
        sender, receiver = edge_index[0], edge_index[1]
        self_connection = self.self_connection(node_features, node_attrs)
        features = self.linear_in(node_features)
        aggregated = self.convolution.aggregate(
            features, edge_sh, self.radial_weights(edge_radial), sender, receiver,
            node_features.shape[0],
        )
        updated = self.linear_out(aggregated * self.message_normalization) + self_connection
        updated = self.gate(updated)
        if self.resnet:
            updated = node_features + updated
        return updated


@register_model("nequip")
class NequIP(Potential):
    """NequIP potential. Hyperparameter names and defaults follow the NequIP paper/code."""

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        l_max: int = 2,
        num_features: int = 32,
        num_layers: int = 4,
        num_bessel: int = 8,
        polynomial_p: int = 6,
        parity: bool = True,
        trainable_bessel: bool = True,
        radial_mlp_hidden: tuple[int, ...] | list[int] = (64, 64),
        avg_num_neighbors: float = 1.0,
        resnet: bool = False,
        tp_backend: str = DEFAULT_TP_BACKEND,
    ) -> None:
        super().__init__(
            species,
            r_max,
            dict(
                l_max=l_max,
                num_features=num_features,
                num_layers=num_layers,
                num_bessel=num_bessel,
                polynomial_p=polynomial_p,
                parity=parity,
                trainable_bessel=trainable_bessel,
                radial_mlp_hidden=list(radial_mlp_hidden),
                avg_num_neighbors=float(avg_num_neighbors),
                resnet=resnet,
                tp_backend=tp_backend,
            ),
        )
        irreps_attrs = o3.Irreps(f"{self.num_species}x0e")
        irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=-1 if parity else 1)
        irreps_hidden = hidden_irreps(num_features, l_max, parity)

        self.spherical_harmonics = o3.SphericalHarmonics(
            irreps_sh, normalize=True, normalization="component"
        )
        self.radial_embedding = RadialEmbedding(
            r_max, num_bessel, polynomial_p, trainable=trainable_bessel
        )
        self.embedding = linear(irreps_attrs, o3.Irreps(f"{num_features}x0e"))
        layers = []
        irreps = o3.Irreps(f"{num_features}x0e")
        for _ in range(num_layers):
            layer = NequIPInteraction(
                irreps,
                irreps_hidden,
                irreps_sh,
                irreps_attrs,
                num_bessel,
                list(radial_mlp_hidden),
                avg_num_neighbors,
                resnet,
                tp_backend,
            )
            layers.append(layer)
            irreps = layer.irreps_out
        self.interactions = nn.ModuleList(layers)
        self.readout_hidden = linear(irreps, o3.Irreps(f"{max(num_features // 2, 1)}x0e"))
        self.readout = linear(self.readout_hidden.irreps_out, o3.Irreps("1x0e"))

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)
        node_attrs = one_hot(species, self.num_species, graph.positions.dtype)
        vectors = edge_vectors(graph)
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)
        edge_sh = self.spherical_harmonics(vectors)
        edge_radial = self.radial_embedding(lengths)
        node_features = self.embedding(node_attrs)
        for interaction in self.interactions:
            node_features = interaction(
                node_features, node_attrs, edge_sh, edge_radial, graph.edge_index
            )
        energy = self.readout(self.readout_hidden(node_features)).squeeze(-1)
        return self.scale_shift(energy, species)
