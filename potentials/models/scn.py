"""SCN: Zitnick et al., "Spherical Channels for Modeling Atomic Interactions", NeurIPS 2022
(arXiv:2206.14331). Hyperparameter names, layers and their order follow fairchem-core 1.10's
`SphericalChannelNetwork` (`scn`); docs/architectures/scn.md.

Node features are C spherical channels per atom, coefficients x_i [(L+1)², C] (L = lmax,
e3nn real basis, integral normalization). With d_ij = x_j − x_i the vector from the receiver i
to the sender j and R_ij its edge frame (R_ij d̂_ij = ŷ, `nn/wigner.py`), and the orders
|m| ≤ mmax kept in the frame (mmax 0 or 1):

    x_i⁰ = e(Z_i) at (l, m) = (0, 0), zero elsewhere                        atom embedding
    per interaction t = 0..T−1:
      h_ij = SiLU(W_e SiLU(a(Z_j) + b(Z_i) + W_g g(|d_ij|)))   edge invariants (`EdgeBlock`)
      z_i  = W_down x_i                                         C → C_r channels (no bias)
      for each tap θ (rotations about the edge axis: 0; or 0, π/2, π, 3π/2 for mmax 1):
        s_θ = T_θ D(R_ij) z_j,  t_θ = T_θ D(R_ij) z_i           into the (turned) edge frame
        y_θ = σ(W_2 σ(W_1 (σ(W_p [s_θ, t_θ]) ⊙ σ(W_d h_ij))))   an MLP on the coefficients
      m_ij = f_c(|d_ij|) D(R_ij)ᵀ (1/n_θ) Σ_θ T_θᵀ y_θ            back to the lab frame
      a_i  = Σ_j m_ij
      u_i  = F3 σ(F2 σ(F1 [z_i, a_i]))  (use_grid)   or   u_i = a_i
      x_i ← W_up u_i (t = 0),  x_i ← x_i + W_up u_i (t > 0)
    E_i = E0[Z_i] + scale · ⟨ fc3 σ(fc2 σ(fc1 x_i(p))) ⟩_p + shift          energy head

T_θ is the Wigner matrix of the turn by θ about ŷ on the kept orders; σ is SiLU. SCN's message
MLP acts on the edge-frame coefficients directly: for mmax 0 they are the m = 0 coefficients,
invariant under any rotation about the edge, and the message is exactly equivariant; for
mmax 1 the m = ±1 coefficients enter the MLP, and the average over the four taps makes the
message equivariant only under quarter turns about the edge (the paper's relaxed
equivariance).

`nonlinearity` chooses σ in the node update F and the readout points p:
- "grid" (fairchem's): σ is SiLU on the values of the functions on the 2(L+1) × (2L+3)
  latitude/longitude grid, F's biases act on those values, and the energy is averaged over
  `num_sphere_samples` weighted Fibonacci points: equivariant up to grid aliasing. For parity
  with fairchem weights; any mmax.
- "gate" (default): σ in F is the channel gate σ(x)_{lm,c} = x_{lm,c} sigmoid(x_{00,c}), F's
  bias b enters as the constant function b (coefficient √(4π) b at l = 0), the energy head
  reads the sphere average x_00 Y_00. Exactly O(3)-invariant; needs mmax 0 (above).

f_c is the polynomial cutoff envelope (`cutoff_envelope`; fairchem has none).
"""

from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.dtype import default_dtype
from equimd.potentials.nn.radial import PolynomialCutoff
from equimd.potentials.nn.scatter import scatter_sum
from equimd.potentials.nn.spherical_channels import (
    EdgeBlock,
    channel_gate,
    initial_channels,
    readout_harmonics,
    unit_edges,
)
from equimd.potentials.nn.spherical_grid import SphericalGrid, coefficient_orders
from equimd.potentials.nn.wigner import EdgeFrameRotation, WignerMatrices, edge_frame_rotation

NONLINEARITIES = ("gate", "grid")


def tap_rotations(lmax: int, mmax: int, num_taps: int) -> Tensor:
    """T_θ [n_θ, K, K] (float64): Wigner matrices, on the orders |m| ≤ mmax, of fairchem's turns
    about ŷ, R_θ = [[cos θ, 0, −sin θ], [0, 1, 0], [sin θ, 0, cos θ]], θ = 0 (mmax 0 or
    num_taps 1) or θ = 0, π/2, π, 3π/2 (mmax 1, any other num_taps)."""
    if mmax == 0 or num_taps == 1:
        angles = [0.0]
    else:
        angles = [0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi]
    turns = torch.tensor(
        [
            [[math.cos(a), 0.0, -math.sin(a)], [0.0, 1.0, 0.0], [math.sin(a), 0.0, math.cos(a)]]
            for a in angles
        ],
        dtype=torch.float64,
    )
    with default_dtype(torch.float64):  # exact sampling matrices, whatever the model's dtype
        wigner = WignerMatrices(lmax)(turns)  # D^l(R_θ): [n_θ, 2l+1, 2l+1]
    kept = EdgeFrameRotation(lmax, mmax)
    blocks = []
    for degree in range(lmax + 1):
        mu = kept.half_widths[degree]
        blocks.append(
            wigner[degree][:, degree - mu : degree + mu + 1, degree - mu : degree + mu + 1]
        )
    return torch.stack([torch.block_diag(*[b[t] for b in blocks]) for t in range(len(angles))])


class MessageBlock(nn.Module):
    """m_ij in the edge frame (before f_c and the rotation back): [E, K, C_r].

    forward(source [E, K, C_r], target [E, K, C_r] edge-frame coefficients of z_j and z_i,
    edge_features [E, num_basis_functions]). Layer names as fairchem's SCN `MessageBlock`.
    """

    def __init__(
        self, sphere_channels_reduce: int, hidden_channels: int, num_basis_functions: int,
        lmax: int, mmax: int, num_taps: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_coefficients = len(coefficient_orders(lmax, mmax))  # K
        self.channels = sphere_channels_reduce
        self.hidden_channels = hidden_channels
        num_inputs = self.num_coefficients * sphere_channels_reduce
        self.num_inputs = num_inputs  # K·C_r
        self.fc1_dist = nn.Linear(num_basis_functions, hidden_channels)
        self.fc1_edge_proj = nn.Linear(2 * num_inputs, hidden_channels)
        self.fc1_edge = nn.Linear(hidden_channels, hidden_channels)
        self.fc2_edge = nn.Linear(hidden_channels, num_inputs)
        dtype = torch.get_default_dtype()
        taps = tap_rotations(lmax, mmax, num_taps)  # [n_θ, K, K]
        self.num_taps = int(taps.shape[0])
        self.register_buffer("taps", taps.to(dtype), persistent=False)
        # (1/n_θ) T_θᵀ: each tap's message turned back by −θ, averaged (fairchem's
        # `mapping_y_rot`, written out there as the cos/sin of θ on the m = ±1 pairs)
        combine = taps.transpose(1, 2) / self.num_taps
        self.register_buffer("combine", combine.to(dtype), persistent=False)

    def forward(self, source: Tensor, target: Tensor, edge_features: Tensor) -> Tensor:
        num_edges = source.shape[0]
        radial = torch.nn.functional.silu(self.fc1_dist(edge_features))  # [E, H]
        # every tap of both ends, flattened coefficient-major: [E, n_θ, K·C_r]
        source_taps = torch.matmul(self.taps, source.unsqueeze(1))  # [E, n_θ, K, C_r]
        target_taps = torch.matmul(self.taps, target.unsqueeze(1))
        message = torch.cat(
            [
                source_taps.reshape(num_edges, self.num_taps, self.num_inputs),
                target_taps.reshape(num_edges, self.num_taps, self.num_inputs),
            ],
            dim=2,
        )  # fmt: skip
        message = torch.nn.functional.silu(self.fc1_edge_proj(message)) * radial.unsqueeze(1)
        message = torch.nn.functional.silu(self.fc1_edge(message))
        message = torch.nn.functional.silu(self.fc2_edge(message))  # [E, n_θ, K·C_r]
        message = message.view(num_edges, self.num_taps, self.num_coefficients, self.channels)
        return torch.matmul(self.combine, message).sum(dim=1)  # [E, K, C_r]


class NodeUpdate(nn.Module):
    """u_i = F3 σ(F2 σ(F1 [z_i, a_i])): [N, (L+1)², 2 C_r] → [N, (L+1)², C_r] (fairchem's
    `fc*_sphere`), on grid values ("grid") or on coefficients with the gate ("gate")."""

    def __init__(self, sphere_channels_reduce: int, lmax: int, nonlinearity: str) -> None:
        super().__init__()
        width = 2 * sphere_channels_reduce  # num_bands = 1
        self.fc1_sphere = nn.Linear(width, width)
        self.fc2_sphere = nn.Linear(width, width)
        self.fc3_sphere = nn.Linear(width, sphere_channels_reduce)
        self.grid = SphericalGrid(lmax, lmax) if nonlinearity == "grid" else None

    @staticmethod
    def _on_coefficients(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """A layer applied to functions: W x, plus the constant function b (at l = 0)."""
        out = torch.matmul(x, weight.t())  # [N, (L+1)², out]
        # the constant function 1 on the sphere has coefficient √(4π) at (l, m) = (0, 0)
        scalar = out.narrow(1, 0, 1) + bias * math.sqrt(4.0 * math.pi)
        return torch.cat([scalar, out.narrow(1, 1, out.shape[1] - 1)], dim=1)

    def forward(self, features: Tensor) -> Tensor:
        grid = self.grid
        if grid is not None:
            values = grid.to_grid(features)  # [N, P, 2C_r]
            values = torch.nn.functional.silu(self.fc1_sphere(values))
            values = torch.nn.functional.silu(self.fc2_sphere(values))
            return grid.from_grid(self.fc3_sphere(values))
        fc1, fc2, fc3 = self.fc1_sphere, self.fc2_sphere, self.fc3_sphere
        hidden = channel_gate(self._on_coefficients(features, fc1.weight, fc1.bias))
        hidden = channel_gate(self._on_coefficients(hidden, fc2.weight, fc2.bias))
        return self._on_coefficients(hidden, fc3.weight, fc3.bias)


class InteractionBlock(nn.Module):
    """One SCN interaction (fairchem's SCN `EdgeBlock`): x_i → W_up u_i, [N, (L+1)², C]."""

    def __init__(
        self, num_species: int, sphere_channels: int, sphere_channels_reduce: int,
        hidden_channels: int, num_basis_functions: int, lmax: int, mmax: int, num_taps: int,
        use_grid: bool, cutoff: float, num_gaussians: int, basis_width_scalar: float,
        nonlinearity: str,
    ) -> None:  # fmt: skip
        super().__init__()
        self.dist_block = EdgeBlock(
            num_species, num_basis_functions, cutoff, num_gaussians, basis_width_scalar
        )
        self.message_block = MessageBlock(
            sphere_channels_reduce, hidden_channels, num_basis_functions, lmax, mmax, num_taps
        )
        self.frame = EdgeFrameRotation(lmax, mmax)
        self.reduce = sphere_channels != sphere_channels_reduce
        # equivariant channel maps (no bias), as fairchem: present only when C_r ≠ C
        self.downsample = (
            nn.Linear(sphere_channels, sphere_channels_reduce, bias=False) if self.reduce else None
        )
        self.upsample = (
            nn.Linear(sphere_channels_reduce, sphere_channels, bias=False) if self.reduce else None
        )
        self.node_update = (
            NodeUpdate(sphere_channels_reduce, lmax, nonlinearity) if use_grid else None
        )

    def forward(
        self, x: Tensor, species: Tensor, distances: Tensor, envelope: Tensor,
        edge_index: Tensor, wigner: List[Tensor],
    ) -> Tensor:  # fmt: skip
        sender, receiver = edge_index[0], edge_index[1]
        edge_features = self.dist_block(distances, species[sender], species[receiver])
        downsample = self.downsample
        reduced = x if downsample is None else downsample(x)  # z_i: [N, (L+1)², C_r]
        source = self.frame.rotate(reduced.index_select(0, sender), wigner)  # [E, K, C_r]
        target = self.frame.rotate(reduced.index_select(0, receiver), wigner)
        message = self.message_block(source, target, edge_features) * envelope.view(-1, 1, 1)
        message = self.frame.rotate_back(message, wigner)  # [E, (L+1)², C_r]
        aggregated = scatter_sum(message, receiver, x.shape[0], keep_source=False)
        node_update = self.node_update
        if node_update is not None:
            aggregated = node_update(torch.cat([reduced, aggregated], dim=2))
        upsample = self.upsample
        return aggregated if upsample is None else upsample(aggregated)  # [N, (L+1)², C]


@register_model(
    "scn",
    test_hyperparameters=dict(
        num_interactions=3, lmax=2, mmax=0, sphere_channels=4, sphere_channels_reduce=3,
        hidden_channels=6, num_basis_functions=5, distance_resolution=0.5,
    ),
)  # fmt: skip
class SCN(Potential):
    """SCN potential (module docstring). r_max: the cutoff (fairchem's `cutoff`), Å.

    lmax: highest degree L; mmax: highest order kept in the edge frames (0 or 1); num_taps:
    1, or anything else for the four turns about the edge (mmax 1 only); use_grid: the node
    update F (else a_i is used as it is); distance_resolution: spacing of the int(r_max /
    distance_resolution) Gaussians, Å; num_basis_functions: width of h_ij; num_sphere_samples:
    readout points ("grid" only). num_resolutions and num_bands: 1 (the only values accepted).
    """

    equivariance = "O(3)"

    def __init__(
        self,
        species: list[int],
        r_max: float = 8.0,
        num_interactions: int = 8,
        lmax: int = 6,
        mmax: int = 0,
        num_resolutions: int = 1,
        sphere_channels: int = 128,
        sphere_channels_reduce: int = 128,
        hidden_channels: int = 256,
        num_taps: int = -1,
        use_grid: bool = True,
        num_bands: int = 1,
        num_sphere_samples: int = 128,
        num_basis_functions: int = 128,
        distance_function: str = "gaussian",
        basis_width_scalar: float = 1.0,
        distance_resolution: float = 0.02,
        nonlinearity: str = "gate",
        cutoff_envelope: bool = True,
        polynomial_p: int = 6,
    ) -> None:
        super().__init__(
            species, r_max,
            dict(
                num_interactions=num_interactions, lmax=lmax, mmax=mmax,
                num_resolutions=num_resolutions, sphere_channels=sphere_channels,
                sphere_channels_reduce=sphere_channels_reduce, hidden_channels=hidden_channels,
                num_taps=num_taps, use_grid=use_grid, num_bands=num_bands,
                num_sphere_samples=num_sphere_samples, num_basis_functions=num_basis_functions,
                distance_function=distance_function, basis_width_scalar=basis_width_scalar,
                distance_resolution=distance_resolution, nonlinearity=nonlinearity,
                cutoff_envelope=cutoff_envelope, polynomial_p=polynomial_p,
            ),
        )  # fmt: skip
        if num_resolutions != 1:
            raise ValueError(
                f"num_resolutions {num_resolutions}: only 1 is implemented (fairchem's second "
                "resolution is chosen per edge by its distance rank among the receiver's "
                "neighbours, which makes the energy jump when two neighbours swap rank)"
            )
        if num_bands != 1:
            raise ValueError(f"num_bands {num_bands}: only 1 is implemented")
        if distance_function != "gaussian":
            raise ValueError(
                f"distance_function {distance_function!r}: only 'gaussian' is implemented"
            )
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        if mmax not in (0, 1) or lmax < 1:
            raise ValueError(f"need lmax >= 1 and mmax 0 or 1 (as fairchem), got {lmax}, {mmax}")
        if nonlinearity == "gate" and mmax != 0:
            raise ValueError(
                "nonlinearity 'gate' (exactly equivariant) needs mmax 0: with mmax 1 SCN's "
                "message MLP acts on the m = ±1 edge-frame coefficients, which is equivariant "
                "only under the taps' quarter turns; use nonlinearity 'grid' (fairchem's "
                "relaxed equivariance) or the eSCN model"
            )
        self.lmax, self.sphere_channels = int(lmax), sphere_channels
        self.num_coefficients = (self.lmax + 1) ** 2
        self.use_grid_readout = nonlinearity == "grid"
        self.cutoff_envelope = bool(cutoff_envelope)
        num_gaussians = int(r_max / distance_resolution)

        self.sphere_embedding = nn.Embedding(self.num_species, sphere_channels)  # e(Z)
        self.wigner = WignerMatrices(self.lmax)
        self.envelope = PolynomialCutoff(r_max, polynomial_p)
        self.edge_blocks = nn.ModuleList(
            [
                InteractionBlock(
                    self.num_species,
                    sphere_channels,
                    sphere_channels_reduce,
                    hidden_channels,
                    num_basis_functions,
                    self.lmax,
                    mmax,
                    num_taps,
                    use_grid,
                    self.r_max,
                    num_gaussians,
                    basis_width_scalar,
                    nonlinearity,
                )  # fmt: skip
                for _ in range(num_interactions)
            ]
        )
        # energy head (fairchem's energy_fc1..3; no 0.001 factor in SCN)
        self.energy_fc1 = nn.Linear(sphere_channels, sphere_channels)
        self.energy_fc2 = nn.Linear(sphere_channels, sphere_channels_reduce)
        self.energy_fc3 = nn.Linear(sphere_channels_reduce, 1)
        readout = readout_harmonics(self.lmax, self.use_grid_readout, num_sphere_samples)
        self.register_buffer("readout_harmonics", readout.to(torch.get_default_dtype()))

    @torch.jit.unused
    def start_from_constant_energy(self) -> bool:
        """Zero the energy head's last layer: E_i = E0 + shift until training moves it."""
        with torch.no_grad():
            self.energy_fc3.weight.zero_()
            self.energy_fc3.bias.zero_()
        return True

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        distances, unit = unit_edges(-edge_vectors(graph))  # [E] Å, [E, 3]; d_ij = x_s − x_r
        wigner = self.wigner(edge_frame_rotation(unit))  # D^l(R_ij): [E, 2l+1, 2l+1]
        if self.cutoff_envelope:
            envelope = self.envelope(distances)  # [E]
        else:
            envelope = torch.ones_like(distances)

        x = initial_channels(self.sphere_embedding(species), self.num_coefficients)  # [N, (L+1)², C]
        for index, interaction in enumerate(self.edge_blocks):
            update = interaction(x, species, distances, envelope, graph.edge_index, wigner)
            x = update if index == 0 else x + update  # [N, (L+1)², C]

        values = torch.matmul(self.readout_harmonics, x)  # [N, P, C] at the readout points
        hidden = torch.nn.functional.silu(self.energy_fc1(values))
        hidden = torch.nn.functional.silu(self.energy_fc2(hidden))
        energy = self.energy_fc3(hidden).squeeze(-1).mean(dim=1)  # [N] eV
        return self.scale_shift(energy, species)
