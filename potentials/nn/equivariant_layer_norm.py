"""Equivariant layer norm over irreps features (Equiformer, Liao & Smidt, ICLR 2023, sec. 3.2;
`EquivariantLayerNormV2` of the Equiformer code).

For each block of `mul` copies of an irrep of dimension d, x: [N, mul, d], per atom:

    x ← x − mean_c x_c                          even scalars (0e) only: centre over the copies
    σ² = mean_c ‖x_c‖²/d  ('component')  or  mean_c ‖x_c‖²  ('norm')
    y_c = γ_c · x_c / sqrt(σ² + ε)  (+ β_c for 0e)

The norms ‖x_c‖ are invariant, so y is equivariant for every irrep (odd ones included: they
are neither centred nor shifted). γ: one weight per irrep copy, β: one bias per 0e copy.
Each block is normalised on its own (a block's statistics never mix with another's).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from e3nn import o3
from torch import Tensor, nn


class EquivariantLayerNorm(nn.Module):
    """forward(features [N, irreps.dim]) -> [N, irreps.dim], normalised irrep block by block.

    irreps: the feature layout (e3nn order, need not be simplified); eps: added to σ²;
    affine: learn γ (ones) and β (zeros); normalization: 'component' or 'norm' (see above).
    """

    def __init__(
        self,
        irreps: o3.Irreps | str,
        eps: float = 1e-5,
        affine: bool = True,
        normalization: str = "component",
    ) -> None:
        super().__init__()
        if normalization not in ("component", "norm"):
            raise ValueError(f"normalization must be 'component' or 'norm', got {normalization!r}")
        self.irreps = o3.Irreps(irreps)
        self.eps = float(eps)
        self.affine = bool(affine)
        self.normalization = normalization
        # (start, mul, dim, weight start, bias start or -1 if not an even scalar) per block
        blocks: List[Tuple[int, int, int, int, int]] = []
        start, weight_start, bias_start = 0, 0, 0
        for mul, ir in self.irreps:
            even_scalar = ir.l == 0 and ir.p == 1
            blocks.append((start, mul, ir.dim, weight_start, bias_start if even_scalar else -1))
            start += mul * ir.dim
            weight_start += mul
            bias_start += mul if even_scalar else 0
        self.blocks = blocks
        self.dim = self.irreps.dim
        num_scalars = bias_start
        self.affine_weight = nn.Parameter(torch.ones(self.irreps.num_irreps), requires_grad=affine)
        self.affine_bias = nn.Parameter(torch.zeros(num_scalars), requires_grad=affine)

    def forward(self, features: Tensor) -> Tensor:
        fields: List[Tensor] = []
        num_nodes = features.shape[0]
        component = self.normalization == "component"
        for start, mul, dim, weight_start, bias_start in self.blocks:
            field = features.narrow(1, start, mul * dim).reshape(num_nodes, mul, dim)
            if bias_start >= 0:  # even scalars: centred over the copies
                field = field - field.mean(dim=1, keepdim=True)
            squares = field.pow(2)
            squared_norm = squares.mean(dim=-1) if component else squares.sum(dim=-1)  # [N, mul]
            inverse = (squared_norm.mean(dim=1, keepdim=True) + self.eps).pow(-0.5)  # [N, 1]
            scale = inverse * self.affine_weight.narrow(0, weight_start, mul)  # [N, mul]
            field = field * scale.unsqueeze(-1)
            if bias_start >= 0:
                field = field + self.affine_bias.narrow(0, bias_start, mul).unsqueeze(-1)
            fields.append(field.reshape(num_nodes, mul * dim))
        if len(fields) == 0:
            return features
        return torch.cat(fields, dim=-1)

    def extra_repr(self) -> str:
        return f"{self.irreps}, eps={self.eps}, normalization={self.normalization!r}"
