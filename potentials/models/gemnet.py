"""GemNet-T (Gasteiger, Becker, Günnemann, "GemNet: universal directional graph neural
networks for molecules", NeurIPS 2021): the triplets-only GemNet, as fairchem's `GemNetT`,
with forces from the energy gradient (GemNet-dT's direct force head is not a potential).

Directed edges s→t (sender s, receiver t, r_st = x_t - x_s + shift, d_st = |r_st|); atom
embeddings h [N, A], edge embeddings m [E, M]; triplets b→a←c are two distinct edges into
one atom a (`equimd.potentials.nn.triplets.build_receiver_pairs`; b = c through another
periodic image is a triplet), φ_cab the angle at a between r_ca and r_ba; swap(e) is the
reverse edge. σ = SiLU/0.6; Dense = He-orthogonal linear map without bias, σ after it unless
noted; ResidualLayer(x) = (x + Dense(Dense(x)))/√2 (`equimd.potentials.nn.gemnet_blocks`).

    e_RBF(d) = u(d/c) · g(d/c)           u polynomial envelope, g Gaussians (or sph. Bessel)
    a_CBF(d_ca, φ_cab)_ln = e_RBF(d_ca)_n · Y_l0(φ_cab)                       (l < num_spherical)
    h⁰_a = emb(Z_a);  m⁰_st = Dense([h_s ‖ h_t ‖ e_RBF(d_st)])                    embedding
    shared: r3 = W_rbf3 e_RBF, r_h = W_rbf_h e_RBF, r_out = W_rbf_out e_RBF,
            B_ca[i, l] = Σ_n e_RBF(d_ca)_n W_cbf3[l, n, i]
    for each interaction block:
        x_ba = Dense_down(s_rbf · Dense_ba(m_ba) ⊙ W_rbf r3_ba)                        [E, trip]
        y_ca = s_cbf · Σ_{j,i} W_bil[j, i, :] Σ_l B_ca[i, l] Σ_b Y_l0(φ_cab) x_ba[j]     triplets
        x3_ca = (Dense_ca↑(y_ca) + Dense_ac↑(y_swap(ca))) / √2
        m ← ResidualLayers_after((m + ResidualLayers_before((Dense_ca(m) + x3)/√2)) / √2)
        h ← (h + AtomUpdate(m, r_h)) / √2,  AtomUpdate = ResLayers(Dense(s Σ_s m_st ⊙ W r_h_st))
        m ← (m + ResidualLayers_concat(Dense([h_s ‖ h_t ‖ m_st]))) / √2
    output block b (after the embedding and each interaction block):
        e_a += W_out AtomUpdate_b(m, r_out)_a  (linear, no σ)
    E_a = E0[Z_a] + scale · e_a + shift
Hyperparameter names and defaults follow fairchem's GemNetT (sizes of the paper's MD17
GemNet-T); `r_max` is its `cutoff`, `rbf` its rbf name. Energies eV, lengths Å.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.edge_slots import EdgeSlots, incoming_edge_offsets
from equimd.potentials.nn.gemnet_blocks import (
    AtomUpdateBlock,
    Dense,
    EdgeEmbedding,
    RadialBasis,
    ResidualLayer,
    ScaleFactor,
)
from equimd.potentials.nn.orthogonal_init import he_orthogonal
from equimd.potentials.nn.spherical_basis import legendre_harmonics
from equimd.potentials.nn.triplets import (
    TripletIndex,
    build_receiver_pairs,
    cos_angle,
    pad_triplets,
    reverse_edges,
    sum_over_triplets,
    triplet_slots,
)


class TripletInteraction(nn.Module):
    """x3_ca from the messages m_ba of the edges meeting ca at its receiver (see module doc)."""

    def __init__(
        self,
        emb_size_edge: int,
        emb_size_trip: int,
        emb_size_bilinear: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
    ) -> None:
        super().__init__()
        self.dense_ba = Dense(emb_size_edge, emb_size_edge)
        self.mlp_rbf = Dense(emb_size_rbf, emb_size_edge, activation=False)
        self.scale_rbf = ScaleFactor()
        # fairchem's EfficientInteractionBilinear weight [trip, cbf, bilinear]
        self.bilinear = nn.Parameter(torch.empty(emb_size_trip, emb_size_cbf, emb_size_bilinear))
        he_orthogonal(self.bilinear)
        self.scale_cbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_edge, emb_size_trip)
        self.up_projection_ca = Dense(emb_size_bilinear, emb_size_edge)
        self.up_projection_ac = Dense(emb_size_bilinear, emb_size_edge)

    def forward(
        self,
        m: Tensor,
        rbf3: Tensor,
        cbf_radial: Tensor,
        cbf_angular: Tensor,
        triplets: TripletIndex,
        incoming: EdgeSlots,
        outgoing: EdgeSlots,
        swap: Tensor,
    ) -> Tensor:
        """m [E, M], rbf3 [E, R], cbf_radial B [E, C, L], cbf_angular Y·mask as laid out by
        `pad_triplets` → [E, M]."""
        x_ba = self.scale_rbf(self.dense_ba(m) * self.mlp_rbf(rbf3))  # [E, M]
        x_ba = self.down_projection(x_ba)  # [E, trip]
        num_edges = m.shape[0]
        summed = sum_over_triplets(cbf_angular, x_ba, triplets, incoming, outgoing)  # [E, L, trip]
        per_edge = torch.bmm(cbf_radial, summed)  # [E, C, trip]: Σ_l B_ca[i, l] (...)[l, j]
        weight = self.bilinear.permute(1, 0, 2).reshape(
            -1, self.bilinear.shape[-1]
        )  # [C·trip, bil]
        y = self.scale_cbf_sum(
            per_edge.reshape(num_edges, per_edge.shape[1] * per_edge.shape[2]) @ weight
        )  # [E, bil]
        x_ca = self.up_projection_ca(y)  # [E, M]
        x_ac = self.up_projection_ac(y)[swap]  # [E, M]: the reverse edge's, added to this one
        return (x_ca + x_ac) * math.sqrt(0.5)


class InteractionBlockTripletsOnly(nn.Module):
    """One GemNet-T interaction: triplet update of m, atom update of h, m from [h_s ‖ h_t ‖ m]."""

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_trip: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        emb_size_bil_trip: int,
        num_before_skip: int,
        num_after_skip: int,
        num_concat: int,
        num_atom: int,
    ) -> None:
        super().__init__()
        self.dense_ca = Dense(emb_size_edge, emb_size_edge)
        self.trip_interaction = TripletInteraction(
            emb_size_edge, emb_size_trip, emb_size_bil_trip, emb_size_rbf, emb_size_cbf
        )
        self.layers_before_skip = nn.ModuleList(
            [ResidualLayer(emb_size_edge) for _ in range(num_before_skip)]
        )
        self.layers_after_skip = nn.ModuleList(
            [ResidualLayer(emb_size_edge) for _ in range(num_after_skip)]
        )
        self.atom_update = AtomUpdateBlock(emb_size_atom, emb_size_edge, emb_size_rbf, num_atom)
        self.concat_layer = EdgeEmbedding(emb_size_atom, emb_size_edge, emb_size_edge)
        self.residual_m = nn.ModuleList([ResidualLayer(emb_size_edge) for _ in range(num_concat)])

    def forward(
        self,
        h: Tensor,
        m: Tensor,
        rbf3: Tensor,
        cbf_radial: Tensor,
        cbf_angular: Tensor,
        triplets: TripletIndex,
        incoming: EdgeSlots,
        outgoing: EdgeSlots,
        swap: Tensor,
        rbf_h: Tensor,
        sender: Tensor,
        receiver: Tensor,
    ) -> tuple[Tensor, Tensor]:
        x3 = self.trip_interaction(
            m, rbf3, cbf_radial, cbf_angular, triplets, incoming, outgoing, swap
        )
        x = (self.dense_ca(m) + x3) * math.sqrt(0.5)  # [E, M]
        for layer in self.layers_before_skip:
            x = layer(x)
        m = (m + x) * math.sqrt(0.5)
        for layer in self.layers_after_skip:
            m = layer(m)
        h = (h + self.atom_update(m, rbf_h, receiver, h.shape[0])) * math.sqrt(0.5)  # [N, A]
        m2 = self.concat_layer(h, m, sender, receiver)  # [E, M]
        for layer in self.residual_m:
            m2 = layer(m2)
        return h, (m + m2) * math.sqrt(0.5)


class OutputBlock(nn.Module):
    """e_t = W_out AtomUpdate(m, r_out)_t: per-atom energy contribution [N]."""

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_rbf: int,
        num_atom: int,
        output_init: str,
    ) -> None:
        super().__init__()
        self.atom_update = AtomUpdateBlock(emb_size_atom, emb_size_edge, emb_size_rbf, num_atom)
        self.out_energy = Dense(emb_size_atom, 1, activation=False)
        if output_init.lower() == "zeros":
            nn.init.zeros_(self.out_energy.linear.weight)
        elif output_init.lower() != "heorthogonal":
            raise ValueError(f"output_init must be 'HeOrthogonal' or 'zeros', got {output_init!r}")

    def forward(self, m: Tensor, rbf_out: Tensor, receiver: Tensor, num_nodes: int) -> Tensor:
        return self.out_energy(self.atom_update(m, rbf_out, receiver, num_nodes)).squeeze(-1)


@register_model(
    "gemnet",
    test_hyperparameters=dict(
        num_spherical=3,
        num_radial=4,
        num_blocks=2,
        emb_size_atom=6,
        emb_size_edge=6,
        emb_size_trip=4,
        emb_size_rbf=3,
        emb_size_cbf=3,
        emb_size_bil_trip=4,
        num_before_skip=1,
        num_after_skip=1,
        num_concat=1,
        num_atom=1,
    ),
)
class GemNetT(Potential):
    """GemNet-T: per-atom energies [N] eV from edge and atom embeddings updated over triplets.

    Distances and angles only: invariant under rotations and reflections (O(3)).
    """

    equivariance = "O(3)"

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        num_spherical: int = 7,
        num_radial: int = 6,
        num_blocks: int = 4,
        emb_size_atom: int = 128,
        emb_size_edge: int = 128,
        emb_size_trip: int = 64,
        emb_size_rbf: int = 16,
        emb_size_cbf: int = 16,
        emb_size_bil_trip: int = 64,
        num_before_skip: int = 1,
        num_after_skip: int = 1,
        num_concat: int = 1,
        num_atom: int = 2,
        rbf: str = "gaussian",
        envelope_exponent: int = 5,
        output_init: str = "HeOrthogonal",
    ) -> None:
        super().__init__(
            species,
            r_max,
            dict(
                num_spherical=num_spherical,
                num_radial=num_radial,
                num_blocks=num_blocks,
                emb_size_atom=emb_size_atom,
                emb_size_edge=emb_size_edge,
                emb_size_trip=emb_size_trip,
                emb_size_rbf=emb_size_rbf,
                emb_size_cbf=emb_size_cbf,
                emb_size_bil_trip=emb_size_bil_trip,
                num_before_skip=num_before_skip,
                num_after_skip=num_after_skip,
                num_concat=num_concat,
                num_atom=num_atom,
                rbf=rbf,
                envelope_exponent=envelope_exponent,
                output_init=output_init,
            ),
        )
        self.num_spherical = num_spherical
        self.radial_basis = RadialBasis(num_radial, r_max, rbf, envelope_exponent)
        self.radial_basis_cbf3 = RadialBasis(num_radial, r_max, rbf, envelope_exponent)
        self.mlp_rbf3 = Dense(num_radial, emb_size_rbf, activation=False)
        # fairchem's EfficientInteractionDownProjection weight [num_spherical, num_radial, cbf]
        self.mlp_cbf3 = nn.Parameter(torch.empty(num_spherical, num_radial, emb_size_cbf))
        he_orthogonal(self.mlp_cbf3)
        self.mlp_rbf_h = Dense(num_radial, emb_size_rbf, activation=False)
        self.mlp_rbf_out = Dense(num_radial, emb_size_rbf, activation=False)
        self.atom_emb = nn.Embedding(self.num_species, emb_size_atom)
        nn.init.uniform_(self.atom_emb.weight, -math.sqrt(3.0), math.sqrt(3.0))
        self.edge_emb = EdgeEmbedding(emb_size_atom, num_radial, emb_size_edge)
        self.int_blocks = nn.ModuleList(
            [
                InteractionBlockTripletsOnly(
                    emb_size_atom,
                    emb_size_edge,
                    emb_size_trip,
                    emb_size_rbf,
                    emb_size_cbf,
                    emb_size_bil_trip,
                    num_before_skip,
                    num_after_skip,
                    num_concat,
                    num_atom,
                )
                for _ in range(num_blocks)
            ]
        )
        output_block = (emb_size_atom, emb_size_edge, emb_size_rbf, num_atom, output_init)
        self.out_embedding = OutputBlock(*output_block)  # fairchem: out_blocks[0]
        self.out_blocks = nn.ModuleList(
            [OutputBlock(*output_block) for _ in range(num_blocks)]
        )  # [1:]

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        num_nodes = species.shape[0]
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        vectors = edge_vectors(graph)  # [E, 3] Å, r_st = x_t - x_s (+ shift)
        distances = torch.linalg.norm(vectors, dim=-1)  # [E]
        by_receiver = incoming_edge_offsets(receiver, num_nodes)  # the edges sorted once
        triplets = build_receiver_pairs(graph.edge_index, num_nodes, vectors.dtype, by_receiver)  # b→a←c
        swap = reverse_edges(graph.edge_index, graph.edge_shift)  # [E]
        cos_cab = cos_angle(vectors[triplets.edge_kj], vectors[triplets.edge_ji])  # [T]
        incoming, outgoing = triplet_slots(triplets, sender, receiver, num_nodes, True, by_receiver)
        cbf_angular = pad_triplets(
            legendre_harmonics(cos_cab, self.num_spherical) * triplets.mask.unsqueeze(-1),
            triplets,
            incoming,
            outgoing,
        )  # Y_l0(φ_cab) [T, L], or per atom [N, K·L, K]
        cbf_radial = torch.einsum(
            "en,lni->eil", self.radial_basis_cbf3(distances), self.mlp_cbf3
        )  # [E, C, L]
        rbf = self.radial_basis(distances)  # [E, R]
        rbf3, rbf_h, rbf_out = self.mlp_rbf3(rbf), self.mlp_rbf_h(rbf), self.mlp_rbf_out(rbf)
        h = self.atom_emb(species)  # [N, A]
        m = self.edge_emb(h, rbf, sender, receiver)  # [E, M]
        energy = self.out_embedding(m, rbf_out, receiver, num_nodes)  # [N]
        for interaction, output in zip(self.int_blocks, self.out_blocks):  # noqa: B905 - TorchScript
            h, m = interaction(
                h,
                m,
                rbf3,
                cbf_radial,
                cbf_angular,
                triplets,
                incoming,
                outgoing,
                swap,
                rbf_h,
                sender,
                receiver,
            )
            energy = energy + output(m, rbf_out, receiver, num_nodes)
        return self.scale_shift(energy, species)
