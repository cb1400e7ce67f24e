"""Blocks shared by the spherical-channel networks SCN (Zitnick et al., NeurIPS 2022) and eSCN
(Passaro & Zitnick, ICML 2023): node features are C functions on the sphere per atom, held as
coefficients x [N, (L+1)², C] (e3nn's real basis, integral normalization, l-major).

- `EdgeBlock`: the edge invariants h_ij from the distance and both species (fairchem's
  `DistanceBlock` in SCN, `EdgeBlock` in eSCN: the same layers and names).
- `channel_gate`: the exactly equivariant counterpart of a point-wise SiLU on the sphere.
- `readout_harmonics`: the points at which the energy head reads the functions.
- `unit_edges`, `initial_channels`: the edge lengths and directions, and the first layer's
  input (the species embedding as the l = 0 coefficient).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.gaussian_basis import GaussianBasis
from equimd.potentials.nn.spherical_grid import sphere_sample_points


def unit_edges(vectors: Tensor) -> Tuple[Tensor, Tensor]:
    """(distances [E] Å, unit vectors [E, 3]) of edge vectors [E, 3] Å (fairchem's convention:
    d_ij = x_sender − x_receiver)."""
    distances = torch.linalg.norm(vectors, dim=1)
    return distances, vectors / distances.clamp_min(1e-12).unsqueeze(1)


def initial_channels(embedding: Tensor, num_coefficients: int) -> Tensor:
    """x⁰ [N, (L+1)², C]: the species embedding [N, C] as the l = 0 coefficient, zero above."""
    higher = embedding.new_zeros(embedding.shape[0], num_coefficients - 1, embedding.shape[1])
    return torch.cat([embedding.unsqueeze(1), higher], dim=1)


def channel_gate(x: Tensor) -> Tensor:
    """σ(x)_{lm,c} = x_{lm,c} · sigmoid(x_{00,c}): x [N, K, C] with (l, m) = (0, 0) first.

    SiLU on the scalar (l = 0) part, the other degrees scaled by the same gate: equivariant
    exactly, where SiLU on grid values of the function is equivariant only up to aliasing."""
    return x * torch.sigmoid(x.narrow(1, 0, 1))


class EdgeBlock(nn.Module):
    """h_ij = SiLU(W_e SiLU(a(Z_sender) + b(Z_receiver) + W_g g(r))): [E, edge_channels].

    g: `num_gaussians` Gaussians on [0, cutoff], exp(−½ (r − μ_k)² / (w Δ)²), Δ the spacing,
    w = basis_width_scalar (fairchem's `GaussianSmearing`). distances [E] Å; species [E] indices.
    """

    def __init__(
        self, num_species: int, edge_channels: int, cutoff: float, num_gaussians: int,
        basis_width_scalar: float,
    ) -> None:  # fmt: skip
        super().__init__()
        spacing = cutoff / (num_gaussians - 1)
        self.distance_expansion = GaussianBasis(
            0.0, cutoff, num_gaussians, gamma=0.5 / (basis_width_scalar * spacing) ** 2
        )
        self.fc1_dist = nn.Linear(num_gaussians, edge_channels)
        self.source_embedding = nn.Embedding(num_species, edge_channels)
        self.target_embedding = nn.Embedding(num_species, edge_channels)
        nn.init.uniform_(self.source_embedding.weight, -0.001, 0.001)
        nn.init.uniform_(self.target_embedding.weight, -0.001, 0.001)
        self.fc1_edge_attr = nn.Linear(edge_channels, edge_channels)

    def forward(
        self, distances: Tensor, sender_species: Tensor, receiver_species: Tensor
    ) -> Tensor:
        x_dist = self.fc1_dist(self.distance_expansion(distances))  # [E, edge_channels]
        x_edge = self.source_embedding(sender_species) + self.target_embedding(receiver_species)
        x_edge = torch.nn.functional.silu(x_edge + x_dist)
        return torch.nn.functional.silu(self.fc1_edge_attr(x_edge))


def readout_harmonics(lmax: int, use_grid: bool, num_sphere_samples: int) -> Tensor:
    """Y [P, (L+1)²] (float64) with x_i(p) = Y x_i the channels at the readout points p.

    use_grid: the `num_sphere_samples` density-weighted Fibonacci points of fairchem's energy
    heads (`sphere_sample_points`); otherwise one row, the sphere average x_00 Y_00 with
    Y_00 = 1/√(4π) (exactly invariant)."""
    if use_grid:
        points = sphere_sample_points(num_sphere_samples)
        return o3.spherical_harmonics(list(range(lmax + 1)), points, False)
    readout = torch.zeros(1, (lmax + 1) ** 2, dtype=torch.float64)
    readout[0, 0] = 1.0 / math.sqrt(4.0 * math.pi)
    return readout
