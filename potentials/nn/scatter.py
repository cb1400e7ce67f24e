"""Scatter-sum over edges/atoms (TorchScript-able, device-agnostic).

Written with `scatter_add` over a broadcast (stride-0) view of the index rather than
`index_add`: the same speed, but autograd keeps only the [E] index for the backward pass,
while `index_add` keeps the whole source ([E, D] messages: gigabytes for large systems).
"""

from __future__ import annotations

import torch
from torch import Tensor


def broadcast_index(index: Tensor, src: Tensor) -> Tensor:
    """index [E] viewed (no copy) as src's shape [E, ...], for scatter/gather along dim 0."""
    shape = [-1] + [1] * (src.dim() - 1)
    return index.view(shape).expand_as(src)


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """out[k] = Σ_{e: index[e] == k} src[e] along dim 0. src: [E, ...] → [dim_size, ...]."""
    out = torch.zeros((dim_size,) + src.shape[1:], dtype=src.dtype, device=src.device)
    return out.scatter_add(0, broadcast_index(index, src), src)


def scatter_add_(target: Tensor, index: Tensor, src: Tensor) -> Tensor:
    """target[index[e]] += src[e] along dim 0, in place (see the module docstring)."""
    return target.scatter_add_(0, broadcast_index(index, src), src)
