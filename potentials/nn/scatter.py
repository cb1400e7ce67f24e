"""Scatter-sum over edges/atoms (TorchScript-able, device-agnostic).

Two ways to write it, same numbers: `index_add` keeps the whole source ([E, D] messages) for
the backward pass (its derivative reads the source's shape), gigabytes for large systems;
`scatter_add` over a broadcast (stride-0) view of the index keeps only the [E] index, but its
backward (a gather) is slower on CPU. `keep_source` picks one; callers keep the source only
when it is small (`equimd.potentials.nn.convolution.edge_aggregation`). In eager mode
(training, Python MD, the benchmarks) `keep_source=False` runs `index_add_` under a small
autograd function that keeps only the index and whose backward is `index_select` (fast, and
differentiable again for training's double backward); TorchScript files use the `scatter_add`
form.
"""

from __future__ import annotations

import torch
from torch import Tensor


def broadcast_index(index: Tensor, src: Tensor) -> Tensor:
    """index [E] viewed (no copy) as src's shape [E, ...], for scatter/gather along dim 0."""
    shape = [-1] + [1] * (src.dim() - 1)
    return index.view(shape).expand_as(src)


def scatter_sum(src: Tensor, index: Tensor, dim_size: int, keep_source: bool = True) -> Tensor:
    """out[k] = Σ_{e: index[e] == k} src[e] along dim 0. src: [E, ...] → [dim_size, ...]."""
    out = torch.zeros((dim_size,) + src.shape[1:], dtype=src.dtype, device=src.device)
    if keep_source:
        return out.index_add(0, index, src)
    return out.scatter_add(0, broadcast_index(index, src), src)


def scatter_add_(target: Tensor, index: Tensor, src: Tensor, keep_source: bool = True) -> Tensor:
    """target[index[e]] += src[e] along dim 0, in place (see the module docstring)."""
    if keep_source:
        return target.index_add_(0, index, src)
    if not torch.jit.is_scripting():
        return _index_add_keeping_index(target, index, src)
    return target.scatter_add_(0, broadcast_index(index, src), src)


class _IndexAddKeepingIndex(torch.autograd.Function):
    """target.index_add_(0, index, src) that saves only `index` for the backward pass."""

    @staticmethod
    def forward(ctx, target: Tensor, index: Tensor, src: Tensor) -> Tensor:  # noqa: ANN001
        target.index_add_(0, index, src)
        ctx.mark_dirty(target)
        ctx.save_for_backward(index)
        return target

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        (index,) = ctx.saved_tensors
        return grad, None, grad.index_select(0, index)


@torch.jit.unused
def _index_add_keeping_index(target: Tensor, index: Tensor, src: Tensor) -> Tensor:
    return _IndexAddKeepingIndex.apply(target, index, src)
