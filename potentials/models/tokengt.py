"""TokenGT as an interatomic potential.

Kim et al., "Pure Transformers are Powerful Graph Learners", NeurIPS 2022; reference code
jw9730/tokengt (hyperparameter names follow its `encoder_*` arguments). TokenGT treats the
nodes and the edges of a graph as independent tokens, marks each token with node identifiers
[P_u ‖ P_v] (u = v for a node) and a type identifier (node or edge), and runs a plain
Transformer over them, with no graph-specific attention bias.

Here the tokens are the N atoms and the E directed neighbour edges j → i within r_max (each
periodic image its own edge token). With s_i the species index, u the polynomial cutoff
envelope and B(r) the Bessel basis times u (`RadialEmbedding`):

    P_i      = Emb_id(s_i)                                              node identifier
    x_i^0    = W_V onehot(s_i) + W_P [P_i ‖ P_i] + E^V                  node token
    x_ji^0   = W_E B(r_ji)     + W_P [P_j ‖ P_i] + E^E                  edge token
    x        ← x + MHA(LN(x)),  x ← x + FFN(LN(x))      `encoder_layers` times, attending over
               node i:     itself, its neighbour atoms j and its edge tokens j → i, weight u(r_ji)
               edge j → i: itself and its two end atoms j and i
               with w = u exp(q·k/sqrt(D/H)) / Σ u exp(q·k/sqrt(D/H)) (no pair bias)
    e_i      = FFN(LN(x_i))                                             per-atom energy
    E_i      = E0[Z_i] + scale · e_i + shift                            (`Potential.scale_shift`)

Changes from the published model, for molecular dynamics (docs/architectures/tokengt.md): the
orthonormal node identifiers (random per evaluation, or Laplacian eigenvectors with their sign
and basis ambiguity) are replaced by a learned species embedding, deterministic and
permutation-invariant; the incidence information they let attention discover is given
directly by restricting each token's attention to the tokens it is incident to (above), so
the energy is a smooth, size-extensive sum of per-atom terms; edges carry the interatomic
distance; the [graph] token readout becomes a per-atom readout summed over atoms; no dropout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.radial import RadialEmbedding
from equimd.potentials.nn.species import one_hot
from equimd.potentials.nn.transformer import FeedForward, TransformerBlock, with_self_edges


def token_attention_edges(
    sender: Tensor, receiver: Tensor, envelope: Tensor, num_atoms: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Attention edges (key → query) among N atom tokens and E edge tokens (edge e is token
    N + e): atom j → atom i and edge token → atom i with weight u_e, atom i and atom j → edge
    token with weight 1, and one self edge per token. Returns keys, queries, envelope [N + 5E]."""
    edge_tokens = num_atoms + torch.arange(
        sender.shape[0], dtype=sender.dtype, device=sender.device
    )
    ones = torch.ones_like(envelope)  # [E]
    keys = torch.cat([sender, edge_tokens, receiver, sender])  # [4E]
    queries = torch.cat([receiver, receiver, edge_tokens, edge_tokens])  # [4E]
    weights = torch.cat([envelope, envelope, ones, ones])  # [4E]
    return with_self_edges(keys, queries, weights, num_atoms + sender.shape[0])


@register_model(
    "tokengt",
    test_hyperparameters={
        "encoder_layers": 2,
        "encoder_embed_dim": 16,
        "encoder_ffn_embed_dim": 16,
        "encoder_attention_heads": 2,
        "node_id_dim": 4,
        "num_bessel": 4,
    },
)
class TokenGT(Potential):
    """forward(graph) -> [N] eV: a Transformer over atom and edge tokens (module docstring)."""

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        encoder_layers: int = 12,
        encoder_embed_dim: int = 768,
        encoder_ffn_embed_dim: int = 768,
        encoder_attention_heads: int = 32,
        node_id_dim: int = 16,
        num_bessel: int = 8,
        polynomial_p: int = 6,
    ) -> None:
        super().__init__(
            species,
            r_max,
            dict(
                encoder_layers=encoder_layers,
                encoder_embed_dim=encoder_embed_dim,
                encoder_ffn_embed_dim=encoder_ffn_embed_dim,
                encoder_attention_heads=encoder_attention_heads,
                node_id_dim=node_id_dim,
                num_bessel=num_bessel,
                polynomial_p=polynomial_p,
            ),
        )
        dim = encoder_embed_dim
        self.radial_embedding = RadialEmbedding(r_max, num_bessel, polynomial_p)
        self.node_identifier = nn.Embedding(self.num_species, node_id_dim)  # P(s)
        self.node_encoder = nn.Linear(self.num_species, dim, bias=False)  # W_V
        self.edge_encoder = nn.Linear(num_bessel, dim, bias=False)  # W_E
        self.identifier_proj = nn.Linear(2 * node_id_dim, dim, bias=False)  # W_P
        self.type_identifier = nn.Embedding(2, dim)  # E^V, E^E
        # identifiers start small (N(0, 0.02), TokenGT's and BERT's embedding init) so that
        # the geometry in the edge tokens is not drowned by them after the first LayerNorm
        nn.init.normal_(self.node_identifier.weight, std=0.02)
        nn.init.normal_(self.type_identifier.weight, std=0.02)
        self.layers = nn.ModuleList(
            [
                TransformerBlock(dim, encoder_ffn_embed_dim, encoder_attention_heads)
                for _ in range(encoder_layers)
            ]
        )
        self.final_layer_norm = nn.LayerNorm(dim)
        self.energy_proj = FeedForward(dim, dim, 1)

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        num_atoms = species.shape[0]
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        lengths = torch.linalg.norm(edge_vectors(graph), dim=-1, keepdim=True)  # [E, 1] Å
        radial = self.radial_embedding(lengths)  # [E, num_bessel], zero at r_max
        envelope = self.radial_embedding.cutoff_fn(lengths).squeeze(-1)  # [E]
        identifiers = self.node_identifier(species)  # [N, d_p]
        node_tokens = (
            self.node_encoder(one_hot(species, self.num_species, identifiers.dtype))
            + self.identifier_proj(torch.cat([identifiers, identifiers], dim=-1))
            + self.type_identifier.weight[0]
        )  # [N, D]
        edge_tokens = (
            self.edge_encoder(radial)
            + self.identifier_proj(torch.cat([identifiers[sender], identifiers[receiver]], dim=-1))
            + self.type_identifier.weight[1]
        )  # [E, D]
        tokens = torch.cat([node_tokens, edge_tokens])  # [N + E, D]
        keys, queries, weights = token_attention_edges(sender, receiver, envelope, num_atoms)
        for layer in self.layers:
            tokens = layer(tokens, keys, queries, weights)  # [N + E, D]
        atom_tokens = self.final_layer_norm(tokens[:num_atoms])  # [N, D]
        energy = self.energy_proj(atom_tokens).squeeze(-1)  # [N]
        return self.scale_shift(energy, species)
