"""DimeNet++ (Klicpera, Giri, Margraf, Günnemann, "Fast and uncertainty-aware directional
message passing for non-equilibrium molecules", NeurIPS-W 2020, arXiv:2011.14115), on the
directional message passing of DimeNet (Klicpera, Groß, Günnemann, ICLR 2020).

Messages m_ji live on directed edges j→i (sender j, receiver i, r_ji = x_i - x_j + shift);
triplets are edge pairs (k→j, j→i) meeting at j, θ_kji the angle between r_kj and r_ji
(`equimd.potentials.nn.triplets`; a triplet across a periodic boundary is a triplet, the
exact reverse edge is not). Bases (`equimd.potentials.nn.spherical_basis`):
e_RBF(d_ji) [K] and a_SBF(d_kj, θ_kji) [L·K]. σ = swish (SiLU).

    m⁰_ji = σ(W [h_Z_i ‖ h_Z_j ‖ σ(W_rbf e_RBF(d_ji) + b)] + b)               embedding
    for each interaction block:
        x_kj = σ(W_down (σ(W_kj m_kj + b) ⊙ W_rbf2 W_rbf1 e_RBF(d_kj)))    [E, int_emb_size]
        t_ji = σ(W_up Σ_k x_kj ⊙ W_sbf2 W_sbf1 a_SBF(d_kj, θ_kji))         triplet sum
        m_ji ← ResidualLayers_after(σ(W ResidualLayers_before(σ(W_ji m_ji + b) + t_ji) + b) + m_ji)
    output block b (after the embedding and after each interaction block):
        o_i = W_out σ(W_L ... σ(W_1 W_up Σ_j (W_rbf e_RBF(d_ji)) ⊙ m_ji + b) ... + b)
    e_i = Σ_b o_i ;  E_i = E0[Z_i] + scale · e_i + shift
with ResidualLayer(m) = m + σ(W₂ σ(W₁ m + b) + b). Hyperparameter names and defaults follow
torch_geometric's DimeNetPlusPlus; `r_max` is its `cutoff`. Energies in eV, lengths in Å.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.edge_slots import EdgeSlots, incoming_edge_offsets
from equimd.potentials.nn.orthogonal_init import glorot_orthogonal
from equimd.potentials.nn.scatter import scatter_sum
from equimd.potentials.nn.spherical_basis import EnvelopedBesselBasis, SphericalBasis
from equimd.potentials.nn.triplets import (
    TripletIndex,
    build_triplets,
    cos_angle,
    pad_triplets,
    sum_over_triplets,
    triplet_positions,
    triplet_slots,
)


def dense(fan_in: int, fan_out: int, bias: bool = True) -> nn.Linear:
    """Linear layer with DimeNet's glorot-orthogonal weights and zero bias."""
    layer = nn.Linear(fan_in, fan_out, bias=bias)
    glorot_orthogonal(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class ResidualLayer(nn.Module):
    """m + σ(W₂ σ(W₁ m + b₁) + b₂): [E, H] → [E, H]."""

    def __init__(self, hidden_channels: int) -> None:
        super().__init__()
        self.lin1 = dense(hidden_channels, hidden_channels)
        self.lin2 = dense(hidden_channels, hidden_channels)
        self.act = nn.SiLU()

    def forward(self, messages: Tensor) -> Tensor:
        return messages + self.act(self.lin2(self.act(self.lin1(messages))))


class EmbeddingBlock(nn.Module):
    """Initial edge messages from the species of both ends and the RBF of the distance."""

    def __init__(self, num_species: int, num_radial: int, hidden_channels: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_species, hidden_channels)
        nn.init.uniform_(self.emb.weight, -(3.0**0.5), 3.0**0.5)
        self.lin_rbf = nn.Linear(num_radial, hidden_channels)
        self.lin = nn.Linear(3 * hidden_channels, hidden_channels)
        self.act = nn.SiLU()

    def forward(self, species: Tensor, rbf: Tensor, sender: Tensor, receiver: Tensor) -> Tensor:
        embedded = self.emb(species)  # [N, H]
        radial = self.act(self.lin_rbf(rbf))  # [E, H]
        features = torch.cat([embedded[receiver], embedded[sender], radial], dim=-1)  # [E, 3H]
        return self.act(self.lin(features))  # [E, H]


class InteractionPPBlock(nn.Module):
    """DimeNet++ interaction: triplet messages in a down-projected space, residual update."""

    def __init__(
        self,
        hidden_channels: int,
        int_emb_size: int,
        basis_emb_size: int,
        num_spherical: int,
        num_radial: int,
        num_before_skip: int,
        num_after_skip: int,
    ) -> None:
        super().__init__()
        self.lin_rbf1 = dense(num_radial, basis_emb_size, bias=False)
        self.lin_rbf2 = dense(basis_emb_size, hidden_channels, bias=False)
        self.lin_sbf1 = dense(num_spherical * num_radial, basis_emb_size, bias=False)
        self.lin_sbf2 = dense(basis_emb_size, int_emb_size, bias=False)
        self.lin_kj = dense(hidden_channels, hidden_channels)
        self.lin_ji = dense(hidden_channels, hidden_channels)
        self.lin_down = dense(hidden_channels, int_emb_size, bias=False)
        self.lin_up = dense(int_emb_size, hidden_channels, bias=False)
        self.layers_before_skip = nn.ModuleList(
            [ResidualLayer(hidden_channels) for _ in range(num_before_skip)]
        )
        self.lin = dense(hidden_channels, hidden_channels)
        self.layers_after_skip = nn.ModuleList(
            [ResidualLayer(hidden_channels) for _ in range(num_after_skip)]
        )
        self.act = nn.SiLU()

    def forward(
        self,
        messages: Tensor,
        rbf: Tensor,
        sbf: Tensor,
        triplets: TripletIndex,
        incoming: EdgeSlots,
        outgoing: EdgeSlots,
        position: Tensor,
    ) -> Tensor:
        """messages [E, H], rbf [E, K], sbf [T, L·K] (masked), the triplets, their slots
        (`triplet_slots`) and padded positions (`triplet_positions`) → [E, H]."""
        x_ji = self.act(self.lin_ji(messages))  # [E, H]
        x_kj = self.act(self.lin_kj(messages)) * self.lin_rbf2(self.lin_rbf1(rbf))  # [E, H]
        x_kj = self.act(self.lin_down(x_kj))  # [E, int_emb_size]
        basis = self.lin_sbf1(sbf)  # [T, basis_emb_size]
        if incoming.width == 0:  # no padded layout: one [T, int_emb_size] product, scattered
            triplet = x_kj[triplets.edge_kj] * self.lin_sbf2(basis)  # [T, int_emb_size]
            summed = scatter_sum(triplet, triplets.edge_ji, messages.shape[0], keep_source=False)
        else:  # Σ_k x_kj ⊙ W_sbf2 b_kji = Σ_β W_sbf2[:, β] ⊙ (Σ_k b_kji,β x_kj): matmuls per atom
            per_basis = sum_over_triplets(
                pad_triplets(basis, triplets, incoming, outgoing, position), x_kj, triplets, incoming,
                outgoing,
            )  # [E, basis_emb_size, int_emb_size]
            summed = (per_basis * self.lin_sbf2.weight.t()).sum(dim=1)  # [E, int_emb_size]
        hidden = x_ji + self.act(self.lin_up(summed))  # [E, H]
        for layer in self.layers_before_skip:
            hidden = layer(hidden)
        hidden = self.act(self.lin(hidden)) + messages
        for layer in self.layers_after_skip:
            hidden = layer(hidden)
        return hidden


class OutputPPBlock(nn.Module):
    """Per-atom output: RBF-gated sum of incoming messages, up-projection, MLP → [N]."""

    def __init__(
        self,
        num_radial: int,
        hidden_channels: int,
        out_emb_channels: int,
        num_layers: int,
        output_initializer: str,
    ) -> None:
        super().__init__()
        self.lin_rbf = dense(num_radial, hidden_channels, bias=False)
        self.lin_up = dense(hidden_channels, out_emb_channels, bias=False)
        self.lins = nn.ModuleList(
            [dense(out_emb_channels, out_emb_channels) for _ in range(num_layers)]
        )
        self.lin = nn.Linear(out_emb_channels, 1, bias=False)
        if output_initializer == "zeros":
            nn.init.zeros_(self.lin.weight)
        elif output_initializer == "glorot_orthogonal":
            glorot_orthogonal(self.lin.weight)
        else:
            raise ValueError(
                f"output_initializer must be 'zeros' or 'glorot_orthogonal', got {output_initializer!r}"
            )
        self.act = nn.SiLU()

    def forward(self, messages: Tensor, rbf: Tensor, receiver: Tensor, num_nodes: int) -> Tensor:
        gated = self.lin_rbf(rbf) * messages  # [E, H]
        atom = self.lin_up(scatter_sum(gated, receiver, num_nodes, keep_source=False))  # [N, O]
        for layer in self.lins:
            atom = self.act(layer(atom))
        return self.lin(atom).squeeze(-1)  # [N]


@register_model(
    "dimenetpp",
    test_hyperparameters=dict(
        hidden_channels=8,
        num_blocks=2,
        int_emb_size=4,
        basis_emb_size=3,
        out_emb_channels=8,
        num_spherical=3,
        num_radial=4,
        num_before_skip=1,
        num_after_skip=1,
        num_output_layers=1,
        output_initializer="glorot_orthogonal",
    ),
)
class DimeNetPlusPlus(Potential):
    """DimeNet++: per-atom energies [N] eV from directional messages over edge triplets.

    Uses distances and angles only: invariant under rotations and reflections (O(3)).
    """

    equivariance = "O(3)"

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        hidden_channels: int = 128,
        num_blocks: int = 4,
        int_emb_size: int = 64,
        basis_emb_size: int = 8,
        out_emb_channels: int = 256,
        num_spherical: int = 7,
        num_radial: int = 6,
        envelope_exponent: int = 5,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 3,
        output_initializer: str = "zeros",
    ) -> None:
        super().__init__(
            species,
            r_max,
            dict(
                hidden_channels=hidden_channels,
                num_blocks=num_blocks,
                int_emb_size=int_emb_size,
                basis_emb_size=basis_emb_size,
                out_emb_channels=out_emb_channels,
                num_spherical=num_spherical,
                num_radial=num_radial,
                envelope_exponent=envelope_exponent,
                num_before_skip=num_before_skip,
                num_after_skip=num_after_skip,
                num_output_layers=num_output_layers,
                output_initializer=output_initializer,
            ),
        )
        self.rbf = EnvelopedBesselBasis(num_radial, r_max, envelope_exponent)
        self.sbf = SphericalBasis(num_spherical, num_radial, r_max, envelope_exponent)
        self.emb = EmbeddingBlock(self.num_species, num_radial, hidden_channels)
        output_block = (
            num_radial,
            hidden_channels,
            out_emb_channels,
            num_output_layers,
            output_initializer,
        )
        self.output_embedding = OutputPPBlock(*output_block)  # torch_geometric: output_blocks[0]
        self.output_blocks = nn.ModuleList(  # torch_geometric: output_blocks[1:]
            [OutputPPBlock(*output_block) for _ in range(num_blocks)]
        )
        self.interaction_blocks = nn.ModuleList(
            [
                InteractionPPBlock(
                    hidden_channels,
                    int_emb_size,
                    basis_emb_size,
                    num_spherical,
                    num_radial,
                    num_before_skip,
                    num_after_skip,
                )
                for _ in range(num_blocks)
            ]
        )

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        num_nodes = species.shape[0]
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        vectors = edge_vectors(graph)  # [E, 3] Å, r_ji = x_i - x_j (+ shift)
        distances = torch.linalg.norm(vectors, dim=-1)  # [E]
        by_receiver = incoming_edge_offsets(receiver, num_nodes)  # the edges sorted once
        triplets = build_triplets(graph.edge_index, graph.edge_shift, num_nodes, by_receiver)  # T
        cos_theta = cos_angle(vectors[triplets.edge_kj], vectors[triplets.edge_ji])  # [T]
        rbf = self.rbf(distances)  # [E, K]
        sbf = self.sbf(distances, cos_theta, triplets.edge_kj) * triplets.mask.unsqueeze(-1)
        incoming, outgoing = triplet_slots(triplets, sender, receiver, num_nodes, False, by_receiver)
        position = triplet_positions(triplets, incoming, outgoing)  # [T], for every block's basis
        messages = self.emb(species, rbf, sender, receiver)  # [E, H]
        energy = self.output_embedding(messages, rbf, receiver, num_nodes)  # [N]
        for interaction, output in zip(self.interaction_blocks, self.output_blocks):  # noqa: B905 - TorchScript
            messages = interaction(messages, rbf, sbf, triplets, incoming, outgoing, position)
            energy = energy + output(messages, rbf, receiver, num_nodes)
        return self.scale_shift(energy, species)
