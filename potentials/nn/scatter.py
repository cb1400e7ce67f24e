"""Scatter-sum over edges/atoms (TorchScript-able, device-agnostic)."""

from __future__ import annotations

import torch
from torch import Tensor


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """out[k] = Σ_{e: index[e] == k} src[e] along dim 0. src: [E, ...] → [dim_size, ...]."""
    out = torch.zeros((dim_size,) + src.shape[1:], dtype=src.dtype, device=src.device)
    return out.index_add(0, index, src)
