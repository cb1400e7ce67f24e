"""Edge-aligned frames and their Wigner-D matrices, for models that work in the frame of an edge
(eSCN's SO(2) convolutions; the `so2` convolution backend uses the same frame).

Frame. For a unit vector r̂ = (x, y, z), σ = ±1 the sign of y (+1 at y = 0) and
q = 1 / (1 + σ y) ∈ [1/2, 1], the rotation

    R = [[ y + σ z² q,  −x,   −σ x z q  ],
         [ x,            y,    z         ],
         [ −x z q,      −σ z,  σ y + x² q]]

maps r̂ to ŷ (R r̂ = ŷ, the axis about which e3nn's spherical harmonics are symmetric: Y^l(ŷ)
is nonzero only at m = 0). It is the minimal rotation r̂ → σŷ followed, for σ = −1, by a half
turn about ẑ: two charts, each smooth and NaN-free, poles included. The charts differ by a
rotation about ŷ (the "roll" of the frame), which any exactly SO(2)-equivariant edge operation
does not see.

Wigner-D. D^l(R) is the matrix with Y^l(R v) = D^l(R) Y^l(v) (e3nn's real basis, index
m + l for m = −l..l). It is a polynomial in R, read off K sampled directions V:
D^l(R) = Y^l(R V) A_l⁺ with A_l = Y^l(V) (`wigner_sampling`, well conditioned). Coefficients
x of a function f(u) = Σ x_lm Y_lm(u) rotated into the frame, x' = D(R) x, describe
f'(u) = f(Rᵀ u): f'(ŷ) = f(r̂).
"""

from __future__ import annotations

import math
from typing import List

import torch
from e3nn import o3
from torch import Tensor, nn

# Largest condition number accepted for the sampling matrices A_l = Y^l(V) (l ≤ max degree).
_MAX_SAMPLING_CONDITION = 8.0


def _fibonacci_sphere(num_points: int) -> Tensor:
    """Quasi-uniform unit vectors [num_points, 3] (float64)."""
    i = torch.arange(num_points, dtype=torch.float64) + 0.5
    polar = torch.acos(1.0 - 2.0 * i / num_points)
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * i
    return torch.stack(
        [
            torch.cos(azimuth) * torch.sin(polar),
            torch.cos(polar),
            torch.sin(azimuth) * torch.sin(polar),
        ],
        dim=1,
    )


def wigner_sampling(l_max: int) -> tuple[Tensor, Tensor]:
    """Points V [K, 3] and pseudo-inverses A_l⁺, concatenated [K, Σ_{l=1..l_max} (2l+1)], such
    that D^l(R) = Y^l(R V) A_l⁺ for every rotation R (component normalization, float64).

    K is the smallest count ≥ 2 l_max + 1 whose sampling matrices all have condition ≤ 8.
    """
    for num_points in range(2 * l_max + 1, (l_max + 1) ** 2 + 2):
        points = _fibonacci_sphere(num_points)
        inverses, condition = [], 0.0
        for degree in range(1, l_max + 1):
            sampling = o3.spherical_harmonics(degree, points, False, "component").T  # [2l+1, K]
            singular = torch.linalg.svdvals(sampling)
            condition = max(condition, float(singular[0] / singular[-1]))
            inverses.append(torch.linalg.pinv(sampling))  # [K, 2l+1]
        if condition <= _MAX_SAMPLING_CONDITION:
            return points, torch.cat(inverses, dim=1)
    raise ValueError(f"no well-conditioned Wigner sampling found for l_max {l_max}")


def edge_frame_rotation(unit_vectors: Tensor) -> Tensor:
    """R [E, 3, 3] with R r̂ = ŷ (the two-chart frame of the module docstring).

    unit_vectors: [E, 3], unit length (a zero vector gives a finite, meaningless R).
    """
    x, y, z = unit_vectors.unbind(1)
    sigma = 1.0 - 2.0 * (y < 0).to(y.dtype)  # chart: +1 for y ≥ 0 (no gradient)
    q = 1.0 / (1.0 + sigma * y)
    xzq = x * z * q
    rows = [
        y + sigma * z * z * q,
        -x,
        -sigma * xzq,
        x,
        y,
        z,
        -xzq,
        -sigma * z,
        sigma * y + x * x * q,
    ]
    return torch.stack(rows, dim=1).view(-1, 3, 3)


class WignerMatrices(nn.Module):
    """Wigner-D matrices D^l(R) of rotations R, l = 0..l_max (e3nn's real basis).

    forward(rotation [E, 3, 3]) -> [D^0, ..., D^l_max], D^l: [E, 2l+1, 2l+1] (D^0 = 1).
    """

    def __init__(self, l_max: int) -> None:
        super().__init__()
        self.l_max = int(l_max)
        self.degrees = list(range(1, self.l_max + 1))
        self.dims = [2 * degree + 1 for degree in self.degrees]
        if self.l_max > 0:
            points, inverses = wigner_sampling(self.l_max)  # [K, 3], [K, Σ (2l+1)] float64
        else:
            points, inverses = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 0)
        dtype = torch.get_default_dtype()
        # persistent: a model rebuilt in float32 and loaded into float64 gets the exact values
        self.register_buffer("points", points.to(dtype))
        self.register_buffer("inverses", inverses.to(dtype))
        self.num_points = int(points.shape[0])
        self.num_harmonics = sum(self.dims)
        self.harmonics = o3.SphericalHarmonics(
            list(range(1, self.l_max + 1)) if self.l_max > 0 else [0],
            normalize=False,
            normalization="component",
        )

    def forward(self, rotation: Tensor) -> List[Tensor]:
        num_edges = rotation.shape[0]
        wigner: List[Tensor] = [rotation.new_ones(num_edges, 1, 1)]
        if self.l_max == 0:
            return wigner
        rotated_points = torch.matmul(self.points, rotation.transpose(1, 2))  # [E, K, 3] (R V)ᵀ
        sampled = self.harmonics(rotated_points.reshape(-1, 3)).view(
            num_edges, self.num_points, self.num_harmonics
        )
        inverses = torch.split(self.inverses, self.dims, dim=1)
        offset = 0
        for index, degree in enumerate(self.degrees):
            harmonics = sampled.narrow(2, offset, 2 * degree + 1).transpose(1, 2)  # [E, 2l+1, K]
            wigner.append(torch.matmul(harmonics, inverses[index]))  # [E, 2l+1, 2l+1]
            offset += 2 * degree + 1
        return wigner


class EdgeFrameRotation(nn.Module):
    """Coefficients into and out of edge frames, keeping the orders |m| ≤ m_max in the frame.

    rotate(x [E, (l_max+1)², C], wigner) -> [E, K, C]: x'_l = D^l(R)[|m| ≤ min(l, m_max)] x_l
    (K coefficients l-major, `spherical_grid.coefficient_orders(l_max, m_max)`);
    rotate_back(y [E, K, C], wigner) -> [E, (l_max+1)², C]: y_l = D^l(R)[|m| ≤ ...]ᵀ y'_l.
    wigner: D^l(R), l = 0..l_max (`WignerMatrices`).
    """

    def __init__(self, l_max: int, m_max: int) -> None:
        super().__init__()
        self.l_max, self.m_max = int(l_max), int(m_max)
        self.full_sizes = [2 * degree + 1 for degree in range(self.l_max + 1)]
        self.half_widths = [min(degree, self.m_max) for degree in range(self.l_max + 1)]
        self.frame_sizes = [2 * mu + 1 for mu in self.half_widths]

    def rotate(self, x: Tensor, wigner: List[Tensor]) -> Tensor:
        blocks = torch.split(x, self.full_sizes, dim=1)
        rotated: List[Tensor] = []
        for degree, block in enumerate(blocks):
            mu = self.half_widths[degree]
            rows = wigner[degree].narrow(1, degree - mu, 2 * mu + 1)  # [E, 2μ+1, 2l+1]
            rotated.append(torch.bmm(rows, block))  # [E, 2μ+1, C]
        return torch.cat(rotated, dim=1)

    def rotate_back(self, y: Tensor, wigner: List[Tensor]) -> Tensor:
        blocks = torch.split(y, self.frame_sizes, dim=1)
        rotated: List[Tensor] = []
        for degree, block in enumerate(blocks):
            mu = self.half_widths[degree]
            rows = wigner[degree].narrow(1, degree - mu, 2 * mu + 1)  # [E, 2μ+1, 2l+1]
            rotated.append(torch.bmm(rows.transpose(1, 2), block))  # [E, 2l+1, C]
        return torch.cat(rotated, dim=1)
