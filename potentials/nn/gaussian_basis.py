"""Gaussian radial basis (SchNet, CGCNN, GeoT, Matformer): g_k(r) = exp(-γ (r - μ_k)²)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GaussianBasis(nn.Module):
    """r: [E] Å → [E, num_basis], centres μ_k = linspace(start, stop, num_basis) Å.

    `gamma` (Å⁻²) is the width parameter γ. GeoT uses γ = 10 Å⁻² with 0.1 Å spacing;
    Matformer (after CGCNN/ALIGNN) uses γ = 1 / spacing, the reciprocal of the centre spacing in
    Å taken as a number (`gamma=None` selects this).
    """

    def __init__(
        self, start: float, stop: float, num_basis: int, gamma: float | None = None
    ) -> None:
        super().__init__()
        centers = torch.linspace(start, stop, num_basis, dtype=torch.get_default_dtype())
        self.register_buffer("centers", centers)
        if gamma is None:
            gamma = (num_basis - 1) / (stop - start) if num_basis > 1 else 1.0
        self.gamma = float(gamma)
        self.num_basis = num_basis

    def forward(self, r: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (r.unsqueeze(-1) - self.centers) ** 2)


def shifted_softplus(x: Tensor) -> Tensor:
    """ssp(x) = softplus(x) - ln 2 (SchNet; zero at x = 0)."""
    return torch.nn.functional.softplus(x) - 0.6931471805599453
