"""The polynomial cutoff envelope of `radial.PolynomialCutoff`, evaluated without cancellation.

f(x) = 1 − (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) − p(p+1)/2 x^(p+2),  x = r / r_max < 1, else 0
(Klicpera et al., DimeNet eq. 8) has a triple root at x = 1 (f, f′ and f″ vanish there), so

    f(x) = (1 − x)³ q(x),   q of degree p − 1 (coefficients from the division, in float64).

Summed as written, f near the cutoff is a difference of terms of size ~p², and in float32 its
value and slope there carry absolute errors ~p² ε ≈ 3e-6; a model that multiplies whole
messages by f (eSCN) inherits them as force noise of ~1e-5 relative, ten times that of the
factored form. Same function, same derivatives.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class FactoredPolynomialCutoff(nn.Module):
    """r: [...] Å → f(r / r_max) [...], the envelope of the module docstring."""

    def __init__(self, r_max: float, p: int = 6) -> None:
        super().__init__()
        self.r_max = float(r_max)
        self.p = int(p)
        p_ = float(p)
        # f's coefficients, highest power first: x^(p+2), x^(p+1), x^p, ..., x^0
        f = np.zeros(self.p + 3)
        f[0], f[1], f[2] = -p_ * (p_ + 1) / 2, p_ * (p_ + 2), -(p_ + 1) * (p_ + 2) / 2
        f[-1] = 1.0
        quotient, remainder = np.polydiv(f, np.array([-1.0, 3.0, -3.0, 1.0]))  # ÷ (1 − x)³
        if np.abs(remainder).max() > 1e-9:
            raise AssertionError(f"envelope of p = {p} has no triple root at 1")
        self.coefficients = [float(c) for c in quotient]  # Horner order, highest power first

    def forward(self, r: Tensor) -> Tensor:
        x = r / self.r_max
        q = torch.full_like(x, self.coefficients[0])
        for coefficient in self.coefficients[1:]:
            q = q * x + coefficient
        one_minus_x = 1.0 - x
        return one_minus_x * one_minus_x * one_minus_x * q * (x < 1.0).to(r.dtype)
