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

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.convolution import EdgeConvolution, convolution_irreps
from equimd.potentials.nn.edge_pairs import (
    first_of_pairs,
    harmonics_per_edge,
    in_pair_order,
    reflection_signs,
)
from equimd.potentials.nn.gate import equivariant_gate, gated_irreps
from equimd.potentials.nn.linear import linear, scalar_tensor_product
from equimd.potentials.nn.radial import RadialEmbedding, radial_mlp
from equimd.potentials.nn.species import one_hot
from equimd.potentials.nn.species_scale import (
    NoSpeciesEnergyScale,
    NoSpeciesFeatureScale,
    SpeciesEnergyScale,
    SpeciesFeatureScale,
)


def hidden_irreps(num_features: int | list[int], l_max: int, parity: bool) -> o3.Irreps:
    """num_features × every irrep up to l_max (both parities if `parity`, else (-1)^l);
    `num_features` may be one count per l (nequip ≥ 0.7)."""
    counts = num_features if isinstance(num_features, list) else [num_features] * (l_max + 1)
    irreps = []
    for degree in range(l_max + 1):
        parities = (1, -1) if parity else ((-1) ** degree,)
        irreps += [(counts[degree], (degree, p)) for p in parities]
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
        self_connection: bool = True,
        gate_activation: str = "sigmoid",
        per_species_normalization: int = 0,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        reachable = o3.Irreps(
            [(1, ir) for _, ir_in in self.irreps_in for _, ir_sh in irreps_sh for ir in ir_in * ir_sh]
        ).sort().irreps.simplify()
        scalars, gates, gated = gated_irreps(reachable, irreps_hidden)
        self.gate = equivariant_gate(scalars, gates, gated, gate_activation)
        irreps_pre_gate = self.gate.irreps_in
        self.irreps_out = self.gate.irreps_out

        self.linear_in = linear(self.irreps_in, self.irreps_in)
        self.convolution = EdgeConvolution(self.irreps_in, irreps_sh, irreps_pre_gate)
        self.radial_weights = radial_mlp(num_radial, radial_hidden, self.convolution.weight_numel)
        self.linear_out = linear(self.convolution.irreps_out, irreps_pre_gate)
        self.self_connection = (  # nequip ≥ 0.7 has none in its first layer
            scalar_tensor_product(self.irreps_in, irreps_attrs, irreps_pre_gate)
            if self_connection
            else None
        )
        self.message_normalization = 1.0 / math.sqrt(avg_num_neighbors)
        # per_species_normalization = num_species: each sender's features × a per-species factor
        self.sender_normalization = (
            SpeciesFeatureScale(per_species_normalization)
            if per_species_normalization
            else NoSpeciesFeatureScale()
        )
        self.resnet = bool(resnet) and self.irreps_in == self.irreps_out
        # set by `restrict_to` (outputs the model does not read are not computed)
        self.irreps_read: o3.Irreps | None = None
        self.register_buffer("pruned_weight_columns", torch.zeros(0, dtype=torch.long), False)
        self.register_buffer("pruned_output_columns", torch.zeros(0, dtype=torch.long), False)
        self.convolution_dim = self.convolution.irreps_out.dim

    def restrict_to(self, irreps_read: o3.Irreps) -> o3.Irreps:
        """Compute only what the outputs `irreps_read` (the irreps of this layer's output that
        the model reads) depend on; returns the irreps of this layer's input they depend on.

        Linear layers and self-connection map each irrep onto the same irrep, the gate maps
        scalars onto scalars and (gates, gated) onto gated, and a convolution path maps l1 onto
        l1 ⊗ l2. The convolution paths into irreps that cannot reach `irreps_read` are skipped
        (their outputs are zero) and so are their radial weights. Exact: skipped paths cannot
        change the energy or any of its derivatives. In NequIP with l_max 2 and both parities,
        the last layer needs 3 of its 30 paths (the readout reads only 0e), the one before
        about half. The e3nn reference backend is never restricted.
        """
        self.irreps_read = o3.Irreps(irreps_read)
        read = {ir for _, ir in o3.Irreps(irreps_read)}
        needed = {ir for _, ir in self.gate.irreps_in if ir in read}
        if any(ir.l > 0 for ir in read):  # gated outputs also need their gates
            needed |= {ir for _, ir in self.gate.irreps_gates}
        irreps_sh = self.convolution.irreps_sh
        inputs = set()
        for _, ir_in in self.irreps_in:
            reaches = ir_in in needed or any(  # self-connection or a convolution path
                ir in needed for _, ir_sh in irreps_sh for ir in ir_in * ir_sh
            )
            if reaches or (self.resnet and ir_in in read):
                inputs.add(ir_in)
        irreps_inputs = o3.Irreps([(1, ir) for ir in sorted(inputs)])
        target = o3.Irreps([(1, ir) for ir in sorted(needed)])
        if self.convolution.backend == "e3nn" or not needed:
            return irreps_inputs
        like = next(self.parameters())  # dtype and device of the layer's weights
        partial = EdgeConvolution(self.irreps_in, irreps_sh, target, self.convolution.backend)
        partial = partial.to(device=like.device, dtype=like.dtype)
        if partial.weight_numel >= self.convolution.weight_numel:
            return irreps_inputs
        _, full_instructions = convolution_irreps(
            self.irreps_in, irreps_sh, o3.Irreps(self.gate.irreps_in)
        )
        _, partial_instructions = convolution_irreps(self.irreps_in, irreps_sh, target)
        full_out, partial_out = self.convolution.irreps_out, partial.irreps_out
        weight_start, start = {}, 0
        for i_in1, i_in2, i_out, *_ in full_instructions:
            weight_start[(i_in1, i_in2, full_out[i_out].ir)] = (start, i_out)
            start += self.irreps_in[i_in1].mul
        weight_columns: list[int] = []
        output_of_block: dict[int, int] = {}
        for i_in1, i_in2, i_out, *_ in partial_instructions:
            full_start, full_i_out = weight_start[(i_in1, i_in2, partial_out[i_out].ir)]
            weight_columns += range(full_start, full_start + self.irreps_in[i_in1].mul)
            output_of_block[i_out] = full_i_out
        full_slices = full_out.slices()
        output_columns: list[int] = []
        for block in range(len(partial_out)):
            columns = full_slices[output_of_block[block]]
            output_columns += range(columns.start, columns.stop)
        self.pruned_convolution = partial
        self.pruned_weight_columns = torch.tensor(weight_columns, dtype=torch.long, device=like.device)
        self.pruned_output_columns = torch.tensor(output_columns, dtype=torch.long, device=like.device)
        return irreps_inputs

    @torch.jit.unused
    def convolution_backend_changed(self, backend: str) -> None:
        """After `apply_convolution_backend`: drop the restriction for the e3nn reference,
        restore it (with the new backend) for the others."""
        restricted = hasattr(self, "pruned_convolution")
        if restricted and backend == "e3nn":
            del self.pruned_convolution
            self.pruned_weight_columns = self.pruned_weight_columns.new_zeros(0)
            self.pruned_output_columns = self.pruned_output_columns.new_zeros(0)
        elif not restricted and backend != "e3nn" and self.irreps_read is not None:
            self.restrict_to(self.irreps_read)

    def _aggregate(
        self, features: Tensor, edge_sh: Tensor, edge_radial: Tensor, edge_index: Tensor,
        paired: bool = False,
    ) -> Tensor:
        """Σ over incoming edges of the convolution, [N, convolution.irreps_out.dim];
        edge_radial per edge, or with `paired` per pair of the edges in pair order."""
        sender, receiver = edge_index[0], edge_index[1]
        num_nodes = features.shape[0]
        # the radial weights = hidden @ last_weight, formed by the convolution per edge chunk
        hidden, last_weight = self.radial_weights.last_layer(edge_radial)
        if not hasattr(self, "pruned_convolution"):  # resolved when scripting
            return self.convolution.aggregate_radial(
                features, edge_sh, hidden, last_weight, sender, receiver, num_nodes, paired
            )
        # only the needed output columns of the radial MLP's last (linear) layer
        last_weight = last_weight.index_select(1, self.pruned_weight_columns)
        partial = self.pruned_convolution.aggregate_radial(
            features, edge_sh, hidden, last_weight, sender, receiver, num_nodes, paired
        )
        full = features.new_zeros(num_nodes, self.convolution_dim)
        return full.index_copy(1, self.pruned_output_columns, partial)

    def forward(
        self,
        node_features: Tensor,
        node_attrs: Tensor,
        edge_sh: Tensor,
        edge_radial: Tensor,
        edge_index: Tensor,
        paired: bool = False,
    ) -> Tensor:
        features = self.sender_normalization(self.linear_in(node_features), node_attrs)
        aggregated = self._aggregate(features, edge_sh, edge_radial, edge_index, paired)
        updated = self.linear_out(aggregated * self.message_normalization)
        if self.self_connection is not None:
            updated = updated + self.self_connection(node_features, node_attrs)
        updated = self.gate(updated)
        if self.resnet:
            updated = node_features + updated
        return updated


# the shared tests' configuration (docs/models.md): l_max 2 with both parities, resnet
@register_model(
    "nequip",
    test_hyperparameters=dict(
        l_max=2, num_features=8, num_layers=2, avg_num_neighbors=10.0, resnet=True
    ),
)
class NequIP(Potential):
    """NequIP potential. Hyperparameter names and defaults follow the NequIP paper/code."""

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        l_max: int = 2,
        num_features: int | list[int] = 32,
        num_layers: int = 4,
        num_bessel: int = 8,
        polynomial_p: int = 6,
        parity: bool = True,
        trainable_bessel: bool = True,
        radial_mlp_hidden: tuple[int, ...] | list[int] = (64, 64),
        avg_num_neighbors: float = 1.0,
        resnet: bool = False,
        gate_activation: str = "sigmoid",
        first_layer_self_connection: bool = True,
        last_layer_scalars_only: bool = False,
        readout_hidden_features: int | None = None,
        per_species_energy_scales: bool = False,
        type_embed_features: int | None = None,
        sh_parity: int | None = None,
        per_species_avg_num_neighbors: bool = False,
        readout_activation: str | None = None,
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
                # nequip ≥ 0.7 conventions (docs/nequip.md); the defaults are the paper's
                gate_activation=gate_activation,
                first_layer_self_connection=first_layer_self_connection,
                last_layer_scalars_only=last_layer_scalars_only,
                readout_hidden_features=readout_hidden_features,
                per_species_energy_scales=per_species_energy_scales,
                type_embed_features=type_embed_features,
                sh_parity=sh_parity,
                per_species_avg_num_neighbors=per_species_avg_num_neighbors,
                readout_activation=readout_activation,
            ),
        )
        irreps_attrs = o3.Irreps(f"{self.num_species}x0e")
        # sh_parity -1: the true (polar) harmonics whatever `parity` (nequip ≥ 0.7)
        irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=sh_parity or (-1 if parity else 1))
        scalars = num_features[0] if isinstance(num_features, list) else num_features
        irreps_hidden = hidden_irreps(num_features, l_max, parity)

        self.spherical_harmonics = o3.SphericalHarmonics(
            irreps_sh, normalize=True, normalization="component"
        )
        # Y(-r) = (-1)^l Y(r): with edges in pair order, Y once per pair (`harmonics_per_edge`)
        self.register_buffer("sh_signs", reflection_signs(irreps_sh), persistent=False)
        self.radial_embedding = RadialEmbedding(
            r_max, num_bessel, polynomial_p, trainable=trainable_bessel
        )
        # R(r) and the radial MLPs once per pair of reverse edges where the neighbour list is
        # made of such pairs (`edge_pairs`); False: per edge. The same function either way.
        self.share_pair_radial = True
        irreps = o3.Irreps(f"{type_embed_features or scalars}x0e")  # species embedding
        self.embedding = linear(irreps_attrs, irreps)
        layers = []
        for index in range(num_layers):
            last = index == num_layers - 1
            layer = NequIPInteraction(
                irreps,
                o3.Irreps(f"{scalars}x0e") if last_layer_scalars_only and last else irreps_hidden,
                irreps_sh,
                irreps_attrs,
                num_bessel,
                list(radial_mlp_hidden),
                avg_num_neighbors,
                resnet,
                self_connection=first_layer_self_connection or index > 0,
                gate_activation=gate_activation,
                per_species_normalization=self.num_species if per_species_avg_num_neighbors else 0,
            )
            layers.append(layer)
            irreps = layer.irreps_out
        self.interactions = nn.ModuleList(layers)
        # The readout reads only the scalars (0e) of the last layer: from there back, each layer
        # computes only what the energy depends on (exact; see NequIPInteraction.restrict_to).
        irreps_read = o3.Irreps("0e")
        for layer in reversed(layers):
            irreps_read = layer.restrict_to(irreps_read)
        if readout_hidden_features == 0:  # one linear readout (nequip ≥ 0.7)
            self.readout_hidden: nn.Module = nn.Identity()
            self.readout = linear(irreps, o3.Irreps("1x0e"))
        else:
            hidden = readout_hidden_features or max(scalars // 2, 1)
            self.readout_hidden = linear(irreps, o3.Irreps(f"{hidden}x0e"))
            self.readout = linear(self.readout_hidden.irreps_out, o3.Irreps("1x0e"))
        # between the two readout linears: none (the paper's) or SiLU (nequip's MLP readout)
        self.readout_activation = {None: nn.Identity, "silu": nn.SiLU}[readout_activation]()
        self.species_energy_scale = (
            SpeciesEnergyScale(self.num_species)
            if per_species_energy_scales
            else NoSpeciesEnergyScale()
        )

    @torch.jit.unused
    def start_from_constant_energy(self) -> bool:
        """Zero the final readout linear (e_i = 0: the model predicts E0 + shift)."""
        with torch.no_grad():
            for parameter in self.readout.parameters():
                parameter.zero_()
        return True

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)
        node_attrs = one_hot(species, self.num_species, graph.positions.dtype)
        # R(r) once per pair of reverse edges where the list is made of such pairs: the edges in
        # pair order (edge_pairs.py; the same function)
        edge_index, vectors, paired = in_pair_order(
            graph.edge_index, edge_vectors(graph), graph.edge_shift, species.shape[0],
            self.share_pair_radial,
        )  # [2, E], [E, 3] Å, bool
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)
        edge_sh = harmonics_per_edge(
            self.spherical_harmonics(first_of_pairs(vectors, paired)), self.sh_signs, paired
        )  # [E, (l_max+1)²]
        edge_radial = self.radial_embedding(first_of_pairs(lengths, paired))  # [E or P, num_radial]
        node_features = self.embedding(node_attrs)
        for interaction in self.interactions:
            node_features = interaction(
                node_features, node_attrs, edge_sh, edge_radial, edge_index, paired
            )
        hidden = self.readout_activation(self.readout_hidden(node_features))
        energy = self.readout(hidden).squeeze(-1)
        return self.scale_shift(self.species_energy_scale(energy, species), species)
