"""Spherical-harmonic coefficients ↔ values of the function on the sphere (eSCN, Passaro &
Zitnick 2023; SCN, Zitnick et al. 2022), for point-wise non-linearities on S².

Coefficients x [N, K, C] hold f_c(u) = Σ_{l,m} x_{lm,c} Y_lm(u) in e3nn's real basis
("integral" normalization, ∫ Y_lm Y_l'm' = δ), l-major (l = 0..l_max, m = −l..l), restricted
to the orders |m| ≤ m_max (K = Σ_l (2 min(l, m_max) + 1)), as eSCN keeps them in an edge frame.

`SphericalGrid(l_max, m_max)`: the latitude/longitude grid of e3nn's `ToS2Grid`/`FromS2Grid`
with 2(l_max + 1) latitudes and 2 m_max + 1 longitudes (2 m_max + 3 when m_max = l_max), the
resolution of fairchem's eSCN:

    to_grid:   f_c(p) = Σ_i T[p, i] x_{i,c}         [N, K, C] → [N, P, C]
    from_grid: x_{i,c} = Σ_p F[i, p] f_c(p)          [N, P, C] → [N, K, C]   (quadrature)

from_grid ∘ to_grid is the identity on degree ≤ l_max coefficients; a point-wise non-linearity
in between is equivariant only approximately (aliasing of the degrees it creates above l_max).

`sphere_sample_points(n)`: eSCN's n weighted points of a Fibonacci sphere (the density-weighted
samples of its energy and force heads).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor, nn


def coefficient_orders(l_max: int, m_max: int) -> list[tuple[int, int]]:
    """(l, m) of each kept coefficient, l-major, m = −min(l, m_max)..min(l, m_max)."""
    return [
        (degree, m)
        for degree in range(l_max + 1)
        for m in range(-min(degree, m_max), min(degree, m_max) + 1)
    ]


def _kept_columns(l_max: int, m_max: int) -> list[int]:
    """Indices of the |m| ≤ m_max coefficients among all (l_max + 1)² (l-major)."""
    return [degree * degree + degree + m for degree, m in coefficient_orders(l_max, m_max)]


class SphericalGrid(nn.Module):
    """Coefficients (|m| ≤ m_max) ↔ values on a latitude/longitude grid (module docstring)."""

    def __init__(self, l_max: int, m_max: int) -> None:
        super().__init__()
        self.l_max, self.m_max = int(l_max), int(m_max)
        self.num_latitudes = 2 * (self.l_max + 1)
        self.num_longitudes = 2 * self.m_max + (3 if self.m_max == self.l_max else 1)
        resolution = (self.num_latitudes, self.num_longitudes)
        kept = _kept_columns(self.l_max, self.m_max)
        to_s2 = o3.ToS2Grid(self.l_max, resolution, normalization="integral", dtype=torch.float64)
        from_s2 = o3.FromS2Grid(
            resolution, self.l_max, normalization="integral", dtype=torch.float64
        )
        # T[b, a, i] = Σ_m shb[m, b, i] sha[a, m]  (b: latitude, a: longitude)
        to_grid = torch.einsum("mbi,am->bai", to_s2.shb, to_s2.sha)[:, :, kept]
        from_grid = torch.einsum("am,mbi->bai", from_s2.sha, from_s2.shb)[:, :, kept]
        self.num_points = self.num_latitudes * self.num_longitudes
        dtype = torch.get_default_dtype()
        self.register_buffer(
            "to_grid_matrix", to_grid.reshape(self.num_points, -1).to(dtype), persistent=False
        )  # fmt: skip  [P, K]
        self.register_buffer(
            "from_grid_matrix",
            from_grid.reshape(self.num_points, -1).T.contiguous().to(dtype),
            persistent=False,
        )  # fmt: skip  [K, P]

    def to_grid(self, coefficients: Tensor) -> Tensor:
        """[N, K, C] → [N, P, C]."""
        return torch.matmul(self.to_grid_matrix, coefficients)

    def from_grid(self, values: Tensor) -> Tensor:
        """[N, P, C] → [N, K, C]."""
        return torch.matmul(self.from_grid_matrix, values)


def sphere_sample_points(num_points: int) -> Tensor:
    """eSCN's sphere samples [num_points, 3] (float64): a Fibonacci sphere (azimuth 2π i / φ,
    polar angle arccos(1 − 2 (i + ½) / n)), each point scaled by n w_i / Σ w with
    w_i = 1 / Σ_j exp(−|p_i − p_j|² / 0.15), the inverse local density of the points."""
    golden_ratio = (1.0 + math.sqrt(5.0)) / 2.0
    i = torch.arange(num_points, dtype=torch.float64).view(-1, 1)
    azimuth = 2.0 * math.pi * i / golden_ratio
    polar = torch.arccos(1.0 - 2.0 * (i + 0.5) / num_points)
    points = torch.cat(
        [
            torch.cos(azimuth) * torch.sin(polar),
            torch.sin(azimuth) * torch.sin(polar),
            torch.cos(polar),
        ],
        dim=1,
    )
    squared_distances = ((points.view(1, -1, 3) - points.view(-1, 1, 3)) ** 2).sum(dim=2)
    inverse_density = 1.0 / torch.exp(-squared_distances / (0.5 * 0.3)).sum(dim=1)
    return points * (num_points * inverse_density / inverse_density.sum()).view(-1, 1)
