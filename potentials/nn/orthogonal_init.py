"""Orthogonal weight initialisations of DimeNet/DimeNet++ (glorot_orthogonal) and GemNet
(he_orthogonal). Construction time only; the trained weights replace them."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def glorot_orthogonal(weight: Tensor, scale: float = 2.0) -> Tensor:
    """Orthogonal matrix rescaled to variance scale / (fan_in + fan_out) (DimeNet)."""
    torch.nn.init.orthogonal_(weight)
    fan_out, fan_in = weight.shape[0], weight.shape[-1]
    weight.mul_((scale / ((fan_in + fan_out) * weight.var())) ** 0.5)
    return weight


@torch.no_grad()
def he_orthogonal(weight: Tensor) -> Tensor:
    """Orthogonal matrix standardised over its fan-in (mean 0, unbiased variance 1) and scaled
    to variance 1 / fan_in (GemNet). 2D [out, in] or 3D [a, b, out] (fan-in a·b) weights."""
    torch.nn.init.orthogonal_(weight)
    if weight.dim() == 3:
        dims, fan_in = [0, 1], weight.shape[0] * weight.shape[1]
    else:
        dims, fan_in = [1], weight.shape[1]
    var, mean = torch.var_mean(weight, dim=dims, unbiased=True, keepdim=True)
    weight.copy_((weight - mean) / (var + 1e-6).sqrt() * (1.0 / fan_in) ** 0.5)
    return weight
