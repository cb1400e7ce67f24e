"""Transformer blocks over attention edges: multi-head attention with a pair bias and a smooth
envelope, the feed-forward network, and the pre-LayerNorm block that chains them.

Attention here is sparse: each query token q attends over a list of key tokens given as
attention edges (key k(a) → query q(a), a = 1..A), not over a dense [T, T] matrix, so the cost
is O(A · D) in time and memory (A ≈ the number of neighbour edges for an interatomic
potential) instead of O(T² · D). Periodic images of one atom are separate attention edges
(separate keys with their own pair bias and envelope), which keeps a periodic cell smaller
than the cutoff equal to its supercell.

    logit_ah  = q_{q(a),h} · k_{k(a),h} / sqrt(D/H) + b_ah                   (pair bias b)
    α_ah      = softmax over the attention edges of query q(a)                  (`edge_softmax`)
    w_ah      = u_a α_ah / Σ_{a': q(a') = q(a)} u_a' α_a'h                      (envelope u ∈ [0, 1])
    out_q,h   = Σ_{a: q(a) = q} w_ah v_{k(a),h}

w_ah = u_a exp(logit_ah) / Σ u_a' exp(logit_a'h): an edge enters and leaves the normalised
attention with its envelope, so a neighbour crossing the cutoff (u → 0 with its derivatives)
changes nothing discontinuously. This needs a key with u = 1 for every query (the token itself,
a self edge): otherwise a single neighbour would get weight 1 whatever its envelope. Every
caller adds one self edge per token.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from equimd.potentials.nn.edge_softmax import edge_softmax
from equimd.potentials.nn.scatter import scatter_sum


def enveloped_softmax(logits: Tensor, envelope: Tensor, queries: Tensor, num_tokens: int) -> Tensor:
    """w [A, H] = u_a exp(logit_a) / Σ_{a' → same query} u_a' exp(logit_a'), per head.

    logits: [A, H]; envelope: [A] in [0, 1] (1 for the query's self edge); queries: [A].
    Edges with u = 0 (beyond the cutoff, e.g. inside a neighbour-list skin) are masked before
    the softmax so they cannot set its maximum and underflow the others.
    """
    envelope = envelope.unsqueeze(-1)  # [A, 1]
    masked = torch.where(envelope > 0.0, logits, torch.full_like(logits, -torch.inf))
    alpha = edge_softmax(masked, queries, num_tokens)  # [A, H]
    weighted = envelope * alpha  # [A, H]
    norm = scatter_sum(weighted, queries, num_tokens, keep_source=False)  # [T, H]
    return weighted / norm[queries]


class EdgeMultiheadAttention(nn.Module):
    """Multi-head attention of each token over its attention edges (module docstring).

    tokens [T, D] → [T, D]; in_proj and out_proj as in `torch.nn.MultiheadAttention` and
    Graphormer's `SelfMultiheadAttention` (one Linear D → 3D for q, k, v; q scaled by
    (D/H)^-1/2).
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim) ** -0.5
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self,
        tokens: Tensor,
        keys: Tensor,
        queries: Tensor,
        envelope: Tensor,
        pair_bias: Optional[Tensor] = None,
    ) -> Tensor:
        """tokens [T, D]; keys, queries [A] token indices; envelope [A]; pair_bias [A, H]."""
        num_tokens = tokens.shape[0]
        shape = [num_tokens, self.num_heads, self.head_dim]
        q, k, v = self.in_proj(tokens).chunk(3, dim=-1)  # 3 × [T, D]
        q = (q * self.scaling).reshape(shape)  # [T, H, D/H]
        k = k.reshape(shape)
        v = v.reshape(shape)
        logits = (q[queries] * k[keys]).sum(dim=-1)  # [A, H]
        if pair_bias is not None:
            logits = logits + pair_bias
        weights = enveloped_softmax(logits, envelope, queries, num_tokens)  # [A, H]
        messages = weights.unsqueeze(-1) * v[keys]  # [A, H, D/H]
        attended = scatter_sum(messages, queries, num_tokens, keep_source=False)  # [T, H, D/H]
        return self.out_proj(attended.reshape(num_tokens, self.embed_dim))  # [T, D]


class FeedForward(nn.Module):
    """x [.., D] → fc2(GELU(fc1(x))) [.., out_dim]: the Transformer FFN (hidden width
    `hidden_dim`) and Graphormer's `NonLinear` head (hidden = input width by default)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: Optional[int] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, in_dim if out_dim is None else out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm Transformer layer over attention edges (Graphormer-3D encoder layer,
    Xiong et al. 2020 placement; dropout omitted — potentials for MD train without it):

        x ← x + MHA(LN(x))          (attention edges, envelope, optional pair bias)
        x ← x + FFN(LN(x))
    """

    def __init__(self, embed_dim: int, ffn_embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.self_attn = EdgeMultiheadAttention(embed_dim, num_heads)
        self.final_layer_norm = nn.LayerNorm(embed_dim)
        self.feed_forward = FeedForward(embed_dim, ffn_embed_dim)

    def forward(
        self,
        tokens: Tensor,
        keys: Tensor,
        queries: Tensor,
        envelope: Tensor,
        pair_bias: Optional[Tensor] = None,
    ) -> Tensor:
        """tokens [T, D] → [T, D]; see `EdgeMultiheadAttention.forward` for the rest."""
        attended = self.self_attn(
            self.self_attn_layer_norm(tokens), keys, queries, envelope, pair_bias
        )
        tokens = tokens + attended
        return tokens + self.feed_forward(self.final_layer_norm(tokens))


def with_self_edges(
    keys: Tensor, queries: Tensor, envelope: Tensor, num_tokens: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Append one self edge (t → t, envelope 1) per token: keys, queries [A + T], envelope
    [A + T]. The self edge keeps the enveloped softmax well defined and continuous."""
    tokens = torch.arange(num_tokens, dtype=keys.dtype, device=keys.device)  # [T]
    ones = torch.ones(num_tokens, dtype=envelope.dtype, device=envelope.device)  # [T]
    return (
        torch.cat([keys, tokens]),
        torch.cat([queries, tokens]),
        torch.cat([envelope, ones]),
    )
