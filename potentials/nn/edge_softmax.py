"""Softmax over the incoming edges of each atom (attention over neighbours).

    α_e = exp(a_e − m_j) / Σ_{e': receiver(e') = j} exp(a_e' − m_j),   j = receiver(e)

with m_j the largest logit arriving at atom j (per head), subtracted for numerical stability
only: the result does not depend on it, so it is taken without gradient. TorchScript- and
AOTInductor-safe (scatter_reduce/scatter_add, no data-dependent shapes); an atom with no
incoming edge simply receives nothing, and E = 0 gives an empty result.
"""

from __future__ import annotations

import torch
from torch import Tensor

from equimd.potentials.nn.scatter import broadcast_index


def edge_softmax(logits: Tensor, receivers: Tensor, num_nodes: int) -> Tensor:
    """α [E, ...]: softmax of `logits` [E, ...] (e.g. [E, heads]) over the edges that share a
    receiver; `receivers` [E] atom indices in [0, num_nodes)."""
    index = broadcast_index(receivers, logits)
    shape = (num_nodes,) + logits.shape[1:]
    lowest = torch.full(shape, -torch.inf, dtype=logits.dtype, device=logits.device)
    maximum = lowest.scatter_reduce(0, index, logits.detach(), reduce="amax", include_self=True)
    weights = torch.exp(logits - maximum.gather(0, index))  # [E, ...] in (0, 1]
    zeros = torch.zeros(shape, dtype=logits.dtype, device=logits.device)
    total = zeros.scatter_add(0, index, weights)  # [num_nodes, ...] ≥ 1 where any edge arrives
    return weights / total.gather(0, index)
