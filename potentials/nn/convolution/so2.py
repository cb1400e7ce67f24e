"""SO(2) (eSCN) backend of the "uvu" edge convolution (`EdgeConvolution(..., backend="so2")`).

Exact, not an approximation: same numbers as e3nn's `TensorProduct` with the same instructions,
weights and layouts, whenever `edge_sh` holds the spherical harmonics of the edge vectors (any
e3nn normalization, normalized or not), which is what NequIP and MACE pass. The e3nn reference
computes, per edge, path t = (l1 ⊗ l2 → l3) with path weight α_t and Clebsch–Gordan block C_t,

    m_t[u, k] = w_t[u] · α_t Σ_ij C_t[i, j, k] x[u, i] Y^{l2}_j(r_ij).

Let R be a rotation with R r̂ = ŷ (ŷ: the axis e3nn's spherical harmonics are symmetric about;
Y^l(ŷ) is nonzero only at m = 0) and D^l(R) its Wigner matrices, Y^l(R v) = D^l(R) Y^l(v).
By equivariance of C_t, with x' = D^{l1} x and Y' = D^{l2} Y = s_{l2} e_{m=0}:

    m_t = D^{l3}(R)ᵀ m'_t,   m'_t[u, m3] = w_t[u] · s_{l2} · Σ_m1 K_t[m3, m1] x'[u, m1],
    K_t[m3, m1] = α_t C_t[m1, 0, m3]   (computed from o3.wigner_3j in float64),
    s_{l2} = (D^{l2}(R) Y^{l2})_0      (= Y^{l2}_0(ŷ), times |r|^{l2} for unnormalized SH).

K_t is invariant under rotations about ŷ, hence block-diagonal in |m| (nonzero only for
|m1| = |m3| ≤ min(l1, l3)), and each 2×2 (m, −m) block is either diagonal (l1 + l2 + l3 even)
or anti-diagonal (odd): every output row m3 reads ONE input row, m1 = ±m3. Per edge and channel
the coupling costs O(min(l1, l3)) instead of O(d1·d3); the price is the rotation in
(rows of D^{l1}: |m| ≤ max min(l1, l3) over the block's paths) and out (per output block, the
rows |m3| ≤ min(l1, l3) of D^{l3}). For l ≤ 3 this is not cheaper than the fused backend
(docs/performance.md, "SO(2) convolution").

The rotation (two charts, smooth and NaN-free for every direction, poles included), with r̂ =
Y^1/|Y^1| read from the l = 1 spherical harmonics (e3nn order x, y, z), σ = ±1 the sign of r̂_y
(+1 at r̂_y = 0) and q = 1 / (1 + σ r̂_y) ∈ [1/2, 1]:

    R = [[ y + σ z² q,  −x,   −σ x z q  ],
         [ x,            y,    z         ],
         [ −x z q,      −σ z,  σ y + x² q]]

(the minimal rotation r̂ → σŷ followed, for σ = −1, by a half turn about ẑ; R = 1 for a zero
vector, whose Y^{l≥1} vanish). The charts differ by a rotation about ŷ, which the result does
not depend on (exactly), so the output is smooth and its derivatives (forces) are right on both
sides of r̂_y = 0. D^l(R) is a polynomial in R:
D^l(R) = Y^l(R V) A_l⁺ for K fixed unit vectors V (A_l = Y^l(V), well conditioned, A_l A_l⁺ = 1).

Gradients with respect to node features, weights and edge vectors (through `edge_sh`) equal the
reference's; a gradient with respect to `edge_sh` treated as a free input (off the manifold of
spherical harmonics) does not, since only the directions and the m = 0 values are read.

Layouts, edge chunks in `aggregate` (with messages recomputed in the backward pass for large
systems) and constants re-derived in float64 on dtype/device changes come from
`edge_aggregation`, shared with the fused backend. TorchScript-compatible, device-agnostic.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from e3nn import o3
from torch import Tensor

from equimd.potentials.nn.convolution.edge_aggregation import EdgeChunkedConvolution
from equimd.potentials.nn.edge_pairs import per_edge
from equimd.potentials.nn.wigner import edge_frame_rotation, wigner_sampling


class SO2UVUConvolution(EdgeChunkedConvolution):
    """The "uvu" convolution of `EdgeConvolution` in the edge frame (see the module docstring).

    instructions: (i_in1, i_in2, i_out, path_weight) in e3nn's weight order; each output irrep
    block is written by exactly one instruction. `irreps_sh` must contain the l = 1 harmonics.

    forward / aggregate: as `EdgeChunkedConvolution` (e3nn layouts), with edge_sh = Y(r_ij) in
    any e3nn normalization.
    """

    backend = "so2"

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        instructions: list[tuple[int, int, int, float]],
    ) -> None:
        super().__init__(irreps_node, irreps_sh, irreps_out, instructions)
        irreps_node, irreps_sh, irreps_out = self.irreps_node, self.irreps_sh, self.irreps_out
        weight_starts = self.weight_starts
        vector_blocks = [j for j, (_, ir) in enumerate(irreps_sh) if ir.l == 1]
        if len(vector_blocks) != 1:
            raise ValueError(
                f"so2 convolution reads the edge direction from the l=1 harmonics; irreps_sh "
                f"{irreps_sh} has {len(vector_blocks)} l=1 blocks"
            )
        sh_slices = irreps_sh.slices()
        self.sh_vector_start = sh_slices[vector_blocks[0]].start
        self.sh_degrees = [ir.l for _, ir in irreps_sh]
        self.sh_starts = [s.start for s in sh_slices]

        def half_width(t: int) -> int:  # rows |m| ≤ μ_t of path t in the edge frame
            i_in1, _, i_out, _ = instructions[t]
            return min(irreps_node[i_in1].ir.l, irreps_out[i_out].ir.l)

        # Input units: the used input blocks of one degree l1, concatenated along the channels,
        # m-major [d1, C]; rotated into the edge frame they keep the rows |m| ≤ M_l1.
        unit_blocks: dict[int, list[int]] = {}
        for i_in1 in sorted({ins[0] for ins in instructions}):
            unit_blocks.setdefault(irreps_node[i_in1].ir.l, []).append(i_in1)
        unit_degrees = sorted(unit_blocks)
        in_offsets = [s.start for s in irreps_node.slices()]
        input_permutation: list[int] = []
        channel_offset: dict[int, int] = {}  # block -> channel offset within its unit
        rotated_offset: dict[int, int] = {}  # degree -> offset of its unit in the rotated input
        unit_half_width: dict[int, int] = {}
        self.unit_degrees, self.unit_sizes, self.unit_channels, self.unit_half_widths = [], [], [], []
        rotated_size = 0
        for l1 in unit_degrees:
            blocks = unit_blocks[l1]
            d1 = 2 * l1 + 1
            channels = 0
            for b in blocks:
                channel_offset[b] = channels
                channels += irreps_node[b].mul
            for i in range(d1):
                for b in blocks:
                    input_permutation += [in_offsets[b] + u * d1 + i for u in range(irreps_node[b].mul)]
            unit_half_width[l1] = max(half_width(t) for t, ins in enumerate(instructions)
                                      if irreps_node[ins[0]].ir.l == l1)
            rotated_offset[l1] = rotated_size
            rotated_size += (2 * unit_half_width[l1] + 1) * channels
            self.unit_degrees.append(l1)
            self.unit_sizes.append(d1 * channels)
            self.unit_channels.append(channels)
            self.unit_half_widths.append(unit_half_width[l1])

        # Path groups (l3, μ): messages [2μ+1, C_g] in the edge frame, all paths of a group
        # concatenated along the channels; rotated back with the rows |m| ≤ μ of D^{l3}.
        group_paths: dict[tuple[int, int], list[int]] = {}
        for t, (_, _, i_out, _) in enumerate(instructions):
            group_paths.setdefault((irreps_out[i_out].ir.l, half_width(t)), []).append(t)
        out_offsets = [s.start for s in irreps_out.slices()]
        gather_index: list[int] = []
        coefficients: list[float] = []
        weight_permutation: list[int] = []
        scale_index: list[int] = []
        output_source = [0] * irreps_out.dim
        self.group_degrees, self.group_half_widths, self.group_channels = [], [], []
        self.group_edge_sizes, self.group_message_sizes = [], []
        message_offset = 0
        for (l3, mu), paths in sorted(group_paths.items()):
            d3 = 2 * l3 + 1
            path_channel = []
            channels = 0
            for t in paths:
                path_channel.append(channels)
                channels += irreps_node[instructions[t][0]].mul
            for r in range(2 * mu + 1):  # row m3 = r - μ, e3nn index l3 + m3
                m3 = r - mu
                for t in paths:
                    i_in1, i_in2, _, path_weight = instructions[t]
                    l1, l2 = irreps_node[i_in1].ir.l, irreps_sh[i_in2].ir.l
                    cg = path_weight * o3.wigner_3j(l1, l2, l3, dtype=torch.float64)[:, l2, l3 + m3]
                    candidates = sorted({l1 + m3, l1 - m3})
                    nonzero = [i for i in range(2 * l1 + 1) if abs(float(cg[i])) > 1e-12]
                    if not set(nonzero) <= set(candidates) or len(nonzero) > 1:
                        raise AssertionError(f"unexpected Clebsch-Gordan structure {(l1, l2, l3)}")
                    i = nonzero[0] if nonzero else l1 + m3
                    row = i - (l1 - unit_half_width[l1])  # row of i in the rotated unit
                    unit_channels = sum(irreps_node[b].mul for b in unit_blocks[l1])
                    for u in range(irreps_node[i_in1].mul):
                        gather_index.append(
                            rotated_offset[l1] + row * unit_channels + channel_offset[i_in1] + u
                        )
                        coefficients.append(float(cg[i]))
            for t, offset in zip(paths, path_channel, strict=True):
                i_in1, i_in2, i_out, _ = instructions[t]
                mul = irreps_node[i_in1].mul
                weight_permutation += [weight_starts[t] + u for u in range(mul)]
                scale_index += [i_in2] * mul
                for k in range(d3):
                    for u in range(mul):
                        output_source[out_offsets[i_out] + u * d3 + k] = (
                            message_offset + k * channels + offset + u
                        )
            self.group_degrees.append(l3)
            self.group_half_widths.append(mu)
            self.group_channels.append(channels)
            self.group_edge_sizes.append((2 * mu + 1) * channels)
            self.group_message_sizes.append(d3 * channels)
            message_offset += d3 * channels

        # Wigner matrices are needed for every rotated input, output and harmonic degree.
        self.max_degree = max(unit_degrees + self.group_degrees + self.sh_degrees)
        self.wigner_degrees = list(range(1, self.max_degree + 1))
        self.wigner_dims = [2 * degree + 1 for degree in self.wigner_degrees]
        points, inverses = wigner_sampling(self.max_degree)
        self.num_points = points.shape[0]
        self.num_harmonics = (self.max_degree + 1) ** 2
        self.sampled_harmonics = o3.SphericalHarmonics(
            list(range(self.max_degree + 1)), normalize=False, normalization="component"
        )
        wigner_per_edge = sum(dim * dim for dim in self.wigner_dims)
        sampled_per_edge = self.num_points * (3 + self.num_harmonics)
        self.elements_per_edge = max(
            [len(gather_index), max(self.group_message_sizes), rotated_size, self.weight_numel,
             irreps_node.dim, self.num_points * self.num_harmonics, wigner_per_edge]
        )
        # values autograd keeps per edge: frames and Wigner matrices, rotated and coupled
        # inputs, scaled weights, messages before and after the rotation back, inputs, weights
        self.saved_per_edge = (
            sampled_per_edge + wigner_per_edge + rotated_size + 2 * len(gather_index)
            + 2 * self.weight_numel + 2 * sum(self.group_message_sizes) + irreps_node.dim
        )  # fmt: skip
        self._register_exact("points", points)
        self._register_exact("inverses", inverses)
        self._register_exact("coefficients", torch.tensor(coefficients, dtype=torch.float64))
        for name, values in (
            ("input_permutation", input_permutation),
            ("gather_index", gather_index),
            ("weight_permutation", weight_permutation),
            ("scale_index", scale_index),
            ("output_permutation", output_source),
        ):
            self.register_buffer(name, torch.tensor(values, dtype=torch.long), persistent=False)

    def edge_frames(self, edge_sh: Tensor) -> tuple[List[Tensor], Tensor]:
        """Wigner matrices of the edge-frame rotations and the harmonics in that frame.

        edge_sh: [E, irreps_sh.dim]. Returns D^l(R) [E, 2l+1, 2l+1] for l = 0..max_degree
        (l = 0: an empty placeholder) and s [E, len(irreps_sh)], s_j = (D^{l_j} Y^{l_j})_{m=0}.
        """
        num_edges = edge_sh.shape[0]
        vector = edge_sh.narrow(1, self.sh_vector_start, 3)
        norm_squared = (vector * vector).sum(dim=1, keepdim=True)
        x, y, z = (vector * torch.rsqrt(norm_squared.clamp_min(1e-30))).unbind(1)
        # a zero vector (Y^{l≥1} = 0) gets the identity frame: only l2 = 0 paths contribute
        y = torch.where(norm_squared.squeeze(1) > 1e-30, y, torch.ones_like(y))
        rotation = edge_frame_rotation(torch.stack([x, y, z], dim=1))  # [E, 3, 3], R r̂ = ŷ
        rotated_points = torch.matmul(self.points, rotation.transpose(1, 2))  # [E, K, 3] = (R V)ᵀ
        sampled = self.sampled_harmonics(rotated_points.reshape(-1, 3)).view(
            num_edges, self.num_points, self.num_harmonics
        )
        wigner: List[Tensor] = [edge_sh.new_empty(0)]
        inverses = torch.split(self.inverses, self.wigner_dims, dim=1)
        for index, degree in enumerate(self.wigner_degrees):
            harmonics = sampled.narrow(2, degree * degree, 2 * degree + 1).transpose(1, 2)
            wigner.append(torch.matmul(harmonics, inverses[index]))  # [E, 2l+1, 2l+1]
        scales: List[Tensor] = []
        for j, degree in enumerate(self.sh_degrees):
            start = self.sh_starts[j]
            if degree == 0:
                scales.append(edge_sh[:, start])
            else:
                middle_row = wigner[degree][:, degree, :]
                scales.append((middle_row * edge_sh.narrow(1, start, 2 * degree + 1)).sum(dim=1))
        return wigner, torch.stack(scales, dim=1)

    def _messages(
        self, inputs: Tensor, edge_sh: Tensor, weight_groups: List[Tensor],
        sender: Optional[Tensor] = None,
    ) -> List[Tensor]:
        """Messages per path group in the lab frame, [E, d3·C_g] each ((k, c) order).

        inputs: [E, Σ_units d1·C] sender features, m-major per unit (with `sender` [E]: the
        node features [N, ·], gathered per unit, `_edge_blocks`); edge_sh: [E, D_sh];
        weight_groups: one block, the weights [E, weight_numel] in e3nn's order (or one row per
        pair of edges in pair order, [E/2, weight_numel]: each edge takes its pair's row).
        """
        num_edges = edge_sh.shape[0]
        weights = per_edge(weight_groups[0], num_edges)
        wigner, scales = self.edge_frames(edge_sh)
        rotated: List[Tensor] = []
        units = self._edge_blocks(inputs, self.unit_sizes, sender)
        for position, l1 in enumerate(self.unit_degrees):
            channels, mu = self.unit_channels[position], self.unit_half_widths[position]
            unit = units[position]
            if l1 > 0:  # x' = D^{l1} x, rows |m| ≤ M_l1
                rows = wigner[l1].narrow(1, l1 - mu, 2 * mu + 1)
                unit = torch.bmm(rows, unit.view(num_edges, 2 * l1 + 1, channels))
                unit = unit.reshape(num_edges, (2 * mu + 1) * channels)
            rotated.append(unit)
        coupled = torch.cat(rotated, dim=1).index_select(1, self.gather_index) * self.coefficients
        path_weights = weights.index_select(1, self.weight_permutation) * scales.index_select(
            1, self.scale_index
        )
        coupled_groups = torch.split(coupled, self.group_edge_sizes, dim=1)
        weight_groups = torch.split(path_weights, self.group_channels, dim=1)
        messages: List[Tensor] = []
        for g, l3 in enumerate(self.group_degrees):
            channels, mu = self.group_channels[g], self.group_half_widths[g]
            frame_message = coupled_groups[g].view(num_edges, 2 * mu + 1, channels) * weight_groups[
                g
            ].view(num_edges, 1, channels)
            if l3 == 0:
                message = frame_message
            elif mu == 0:  # m = 0 only: an outer product with the middle row of D^{l3}
                message = wigner[l3][:, l3, :].unsqueeze(2) * frame_message
            else:  # m = D^{l3}ᵀ m', rows |m| ≤ μ
                rows = wigner[l3].narrow(1, l3 - mu, 2 * mu + 1)
                message = torch.bmm(rows.transpose(1, 2), frame_message)
            messages.append(message.reshape(num_edges, (2 * l3 + 1) * channels))
        return messages
