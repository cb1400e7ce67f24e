"""eSCN: Passaro & Zitnick, "Reducing SO(3) Convolutions to SO(2) for Efficient Equivariant
GNNs", ICML 2023 (arXiv:2302.03655); the spherical channels of SCN (Zitnick et al., NeurIPS
2022). Hyperparameter names, layers and their order follow fairchem-core 1.10's `eSCN`.

Node features are C spherical channels per atom, coefficients x_i [(L+1)², C] (L = lmax) of
functions on the sphere (e3nn real basis, integral normalization). With d_ij = x_j − x_i the
vector from the receiver i to the sender j (fairchem's edge vector) and R_ij its edge frame
(R_ij d̂_ij = ŷ, `nn/wigner.py`):

    x_i⁰ = e(Z_i) at (l, m) = (0, 0), zero elsewhere                      atom embedding
    h_ij = SiLU(W_e SiLU(a(Z_j) + b(Z_i) + W_g g(|d_ij|)))                 edge invariants (g:
                                                  Gaussians, `nn/spherical_channels.EdgeBlock`)
    per layer t = 0..T−1:
      x'_j = D(R_ij) x_j|_{|m| ≤ mmax},  x'_i likewise                    into the edge frame
      m_ij = D(R_ij)ᵀ σ_S²( SO2_s(x'_j, h_ij) + SO2_t(x'_i, h_ij) ) · f_c(|d_ij|)
                                                            SO(2) convolutions (`nn/so2_block.py`)
      a_i  = Σ_j m_ij                                                      aggregation
      u_i  = F3 σ(F2 σ(F1 [x_i, a_i]))                 point-wise MLP on the sphere (`LayerBlock`)
      x_i ← u_i (t = 0),  x_i ← x_i + u_i (t > 0)
    e_i  = κ · ⟨ MLP(x_i(p)) ⟩_p ;  E_i = E0[Z_i] + scale · e_i + shift   (`EnergyBlock`; κ below)

`nonlinearity` chooses σ, σ_S² and the readout points p:

- "grid" (fairchem's): SiLU on the values of the functions on latitude/longitude grids (the
  edge-frame grid of orders ≤ mmax for σ_S², the full grid for σ), and the energy averaged over
  `num_sphere_samples` weighted Fibonacci points. Point-wise non-linearities on a finite grid are
  equivariant only up to aliasing (~1e-6 relative in the energy under a rotation, with the
  fixture's fairchem weights), and through σ_S² the result depends on the roll of the edge
  frame, which `edge_frame_rotation` fixes (fairchem draws it at random per call). For parity
  with fairchem weights.
- "gate" (the default): the same layers with the point-wise SiLU replaced by its exactly
  equivariant counterpart, a per-channel gate by the l = 0 coefficient,
  σ(x)_{lm,c} = x_{lm,c} · sigmoid(x_{00,c}) (SiLU on the scalar), and the readout MLP applied to
  the sphere average of the channels, x_{00,c} Y_00, with κ = 1 (fairchem's κ = 0.001 in
  "grid"; the trainer's `scale` sets the energy scale either way). The energy is then exactly invariant under
  rotations and the frame's roll, and smooth.

f_c is the polynomial cutoff envelope (`cutoff_envelope`; fairchem has none, so its energy jumps
when an atom crosses r_max). Messages with their imaginary SO(2) weights are not
parity-symmetric: the model is SE(3)-, not O(3)-invariant.
"""

from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.radial import PolynomialCutoff
from equimd.potentials.nn.scatter import scatter_sum
from equimd.potentials.nn.so2_block import SO2Block
from equimd.potentials.nn.spherical_channels import (
    EdgeBlock,
    channel_gate,
    initial_channels,
    readout_harmonics,
    unit_edges,
)
from equimd.potentials.nn.spherical_grid import SphericalGrid
from equimd.potentials.nn.wigner import EdgeFrameRotation, WignerMatrices, edge_frame_rotation

NONLINEARITIES = ("gate", "grid")
# fairchem scales the energy head's output "to balance numerical precision w.r.t. forces"
ENERGY_FACTOR = 0.001


class SphericalActivation(nn.Module):
    """SiLU of coefficients [N, K, C] (orders |m| ≤ m_max): on a grid ("grid") or gated ("gate")."""

    def __init__(self, nonlinearity: str, lmax: int, mmax: int) -> None:
        super().__init__()
        self.use_grid = nonlinearity == "grid"
        self.grid = SphericalGrid(lmax, mmax) if self.use_grid else None

    def forward(self, x: Tensor) -> Tensor:
        grid = self.grid
        if grid is None:
            return channel_gate(x)
        return grid.from_grid(torch.nn.functional.silu(grid.to_grid(x)))


class MessageBlock(nn.Module):
    """a_i = Σ_j f_c D(R_ij)ᵀ σ_S²(SO2_s(D x_j) + SO2_t(D x_i)): [N, (L+1)², C]."""

    def __init__(
        self, num_species: int, sphere_channels: int, hidden_channels: int, edge_channels: int,
        lmax: int, mmax: int, cutoff: float, num_gaussians: int, basis_width_scalar: float,
        nonlinearity: str,
    ) -> None:  # fmt: skip
        super().__init__()
        self.edge_block = EdgeBlock(
            num_species, edge_channels, cutoff, num_gaussians, basis_width_scalar
        )
        self.so2_block_source = SO2Block(
            sphere_channels, hidden_channels, edge_channels, lmax, mmax
        )
        self.so2_block_target = SO2Block(
            sphere_channels, hidden_channels, edge_channels, lmax, mmax
        )
        self.activation = SphericalActivation(nonlinearity, lmax, mmax)
        self.frame = EdgeFrameRotation(lmax, mmax)

    def forward(
        self, x: Tensor, species: Tensor, distances: Tensor, envelope: Tensor,
        edge_index: Tensor, wigner: List[Tensor],
    ) -> Tensor:  # fmt: skip
        sender, receiver = edge_index[0], edge_index[1]
        x_edge = self.edge_block(distances, species[sender], species[receiver])  # [E, edge_ch]
        x_source = self.frame.rotate(x.index_select(0, sender), wigner)  # [E, K, C]
        x_target = self.frame.rotate(x.index_select(0, receiver), wigner)  # [E, K, C]
        message = self.so2_block_source(x_source, x_edge) + self.so2_block_target(x_target, x_edge)
        message = self.activation(message) * envelope.view(-1, 1, 1)  # f_c in the frame: [E, K, C]
        message = self.frame.rotate_back(message, wigner)  # [E, (L+1)², C]
        return scatter_sum(message, receiver, x.shape[0], keep_source=False)  # [N, (L+1)², C]


class LayerBlock(nn.Module):
    """One eSCN layer: messages, then u_i = F3 σ(F2 σ(F1 [x_i, a_i])): [N, (L+1)², C]."""

    def __init__(
        self, num_species: int, sphere_channels: int, hidden_channels: int, edge_channels: int,
        lmax: int, mmax: int, cutoff: float, num_gaussians: int, basis_width_scalar: float,
        nonlinearity: str,
    ) -> None:  # fmt: skip
        super().__init__()
        self.message_block = MessageBlock(
            num_species, sphere_channels, hidden_channels, edge_channels, lmax, mmax, cutoff,
            num_gaussians, basis_width_scalar, nonlinearity,
        )  # fmt: skip
        self.use_grid = nonlinearity == "grid"
        self.grid = SphericalGrid(lmax, lmax) if self.use_grid else None
        self.fc1_sphere = nn.Linear(2 * sphere_channels, sphere_channels, bias=False)
        self.fc2_sphere = nn.Linear(sphere_channels, sphere_channels, bias=False)
        self.fc3_sphere = nn.Linear(sphere_channels, sphere_channels, bias=False)
        if not self.use_grid:  # variance-preserving for the gate, which halves small inputs
            for layer, gain in (
                (self.fc1_sphere, 2.0),
                (self.fc2_sphere, 2.0),
                (self.fc3_sphere, 1.0),
            ):
                nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(layer.in_features))

    def forward(
        self, x: Tensor, species: Tensor, distances: Tensor, envelope: Tensor,
        edge_index: Tensor, wigner: List[Tensor],
    ) -> Tensor:  # fmt: skip
        aggregated = self.message_block(x, species, distances, envelope, edge_index, wigner)
        grid = self.grid
        if grid is not None:  # values at the P grid points: [N, P, 2C]
            values = torch.cat([grid.to_grid(x), grid.to_grid(aggregated)], dim=2)
            values = torch.nn.functional.silu(self.fc1_sphere(values))
            values = torch.nn.functional.silu(self.fc2_sphere(values))
            return grid.from_grid(self.fc3_sphere(values))
        hidden = channel_gate(self.fc1_sphere(torch.cat([x, aggregated], dim=2)))
        hidden = channel_gate(self.fc2_sphere(hidden))
        return self.fc3_sphere(hidden)  # [N, (L+1)², C]


class EnergyBlock(nn.Module):
    """e_i = κ · mean_p fc3 SiLU(fc2 SiLU(fc1 x_i(p))): values [N, P, C] → [N] eV."""

    def __init__(self, num_channels: int, energy_factor: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(num_channels, num_channels)
        self.fc2 = nn.Linear(num_channels, num_channels)
        self.fc3 = nn.Linear(num_channels, 1, bias=False)
        self.energy_factor = float(energy_factor)

    def forward(self, values: Tensor) -> Tensor:
        hidden = torch.nn.functional.silu(self.fc1(values))
        hidden = torch.nn.functional.silu(self.fc2(hidden))
        return self.energy_factor * self.fc3(hidden).squeeze(-1).mean(dim=1)


@register_model(
    "escn",
    test_hyperparameters=dict(
        num_layers=3, lmax_list=[2], mmax_list=[1], sphere_channels=4, hidden_channels=6,
        edge_channels=5, distance_resolution=0.5,
    ),
)  # fmt: skip
class ESCN(Potential):
    """eSCN potential (module docstring). r_max: the cutoff (fairchem's `cutoff`), Å.

    lmax_list / mmax_list: one resolution, [L] and [m_max] (fairchem's multi-resolution lists
    are accepted with one entry). distance_resolution: spacing of the int(r_max /
    distance_resolution) Gaussians, Å. num_sphere_samples: readout points ("grid" only).
    """

    equivariance = "SE(3)"

    def __init__(
        self,
        species: list[int],
        r_max: float = 8.0,
        num_layers: int = 8,
        lmax_list: list[int] | None = None,
        mmax_list: list[int] | None = None,
        sphere_channels: int = 128,
        hidden_channels: int = 256,
        edge_channels: int = 128,
        num_sphere_samples: int = 128,
        distance_function: str = "gaussian",
        basis_width_scalar: float = 1.0,
        distance_resolution: float = 0.02,
        nonlinearity: str = "gate",
        cutoff_envelope: bool = True,
        polynomial_p: int = 6,
    ) -> None:
        lmax_list = [6] if lmax_list is None else [int(v) for v in lmax_list]
        mmax_list = [2] if mmax_list is None else [int(v) for v in mmax_list]
        super().__init__(
            species, r_max,
            dict(
                num_layers=num_layers, lmax_list=lmax_list, mmax_list=mmax_list,
                sphere_channels=sphere_channels, hidden_channels=hidden_channels,
                edge_channels=edge_channels, num_sphere_samples=num_sphere_samples,
                distance_function=distance_function, basis_width_scalar=basis_width_scalar,
                distance_resolution=distance_resolution, nonlinearity=nonlinearity,
                cutoff_envelope=cutoff_envelope, polynomial_p=polynomial_p,
            ),
        )  # fmt: skip
        if len(lmax_list) != 1 or len(mmax_list) != 1:
            raise ValueError(
                f"one resolution is supported: lmax_list {lmax_list}, mmax_list {mmax_list}"
            )
        if distance_function != "gaussian":
            raise ValueError(
                f"distance_function {distance_function!r}: only 'gaussian' is implemented"
            )
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        lmax, mmax = lmax_list[0], mmax_list[0]
        if not 0 <= mmax <= lmax:
            raise ValueError(f"need 0 <= mmax <= lmax, got lmax {lmax}, mmax {mmax}")
        self.lmax, self.sphere_channels = lmax, sphere_channels
        self.num_coefficients = (lmax + 1) ** 2
        self.use_grid = nonlinearity == "grid"
        self.cutoff_envelope = bool(cutoff_envelope)
        num_gaussians = int(r_max / distance_resolution)

        self.sphere_embedding = nn.Embedding(self.num_species, sphere_channels)  # e(Z)
        self.wigner = WignerMatrices(lmax)
        self.envelope = PolynomialCutoff(r_max, polynomial_p)
        self.layer_blocks = nn.ModuleList(
            [
                LayerBlock(
                    self.num_species,
                    sphere_channels,
                    hidden_channels,
                    edge_channels,
                    lmax,
                    mmax,
                    self.r_max,
                    num_gaussians,
                    basis_width_scalar,
                    nonlinearity,
                )  # fmt: skip
                for _ in range(num_layers)
            ]
        )
        # fairchem's 0.001 with its weights ("grid"); the gate model leaves the energy scale to
        # `scale_shift`, which training fits
        self.energy_block = EnergyBlock(sphere_channels, ENERGY_FACTOR if self.use_grid else 1.0)
        # readout points p: weighted Fibonacci samples ("grid") or the sphere average ("gate",
        # x_00 Y_00 with Y_00 = 1/√(4π)); harmonics with fairchem's integral normalization
        dtype = torch.get_default_dtype()
        readout = readout_harmonics(lmax, self.use_grid, num_sphere_samples)  # [P, (L+1)²]
        self.register_buffer("readout_harmonics", readout.to(dtype))  # exact after loading

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        distances, unit = unit_edges(-edge_vectors(graph))  # [E] Å, [E, 3]; d_ij = x_s − x_r
        wigner = self.wigner(edge_frame_rotation(unit))  # D^l(R_ij): [E, 2l+1, 2l+1]
        if self.cutoff_envelope:
            envelope = self.envelope(distances)  # [E]
        else:
            envelope = torch.ones_like(distances)

        x = initial_channels(self.sphere_embedding(species), self.num_coefficients)  # [N, (L+1)², C]
        for index, layer in enumerate(self.layer_blocks):
            update = layer(x, species, distances, envelope, graph.edge_index, wigner)
            x = update if index == 0 else x + update  # [N, (L+1)², C]

        values = torch.matmul(self.readout_harmonics, x)  # [N, P, C] channels at the points p
        energy = self.energy_block(values)  # [N] eV
        return self.scale_shift(energy, species)
