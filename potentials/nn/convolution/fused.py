"""Fast backend of the "uvu" edge convolution (`EdgeConvolution(..., backend="fused")`).

Same numbers as e3nn's `TensorProduct` with the same instructions, weights and layouts, computed
in a different order. For an input irrep block x_b (U channels, degree l1, d1 = 2 l1 + 1) and a
path t = (l1 ⊗ l2 → l3) with path weight α_t and Clebsch–Gordan block C_t (d1 × d2 × d3):

    m_t[e, u, k] = w_t[e, u] · α_t Σ_ij C_t[i, j, k] x_b[e, u, i] Y^{l2}[e, j]
                 = w_t[e, u] · Σ_i M_t[e, k, i] x_b[e, i, u],
    M_t[e, k, i] = α_t Σ_j C_t[i, j, k] Y^{l2}[e, j]        (per edge, independent of channels)

How it is computed (see docs/performance.md for the measurements behind each choice):

1. Paths are grouped by (input block, d3). Within a group all paths have the same shapes, so
   every operation below is one call per group, not per path (few operations per layer: the
   per-operation overhead dominates small systems). Input blocks with the same coupling
   structure (e.g. 1o and 1e) are concatenated along the channels and share every operation.
2. The coupling matrices M_t of all paths come from ONE matmul of the spherical harmonics with a
   constant matrix (α_t C_t folded in): [E, D_sh] @ [D_sh, Σ_t d3·d1].
3. Per group, ONE batched matmul over edges contracts M with the sender features, channels
   batched: [E, P·d3, d1] @ [E, d1, U]. e3nn's outer product x ⊗ Y (d2 times larger) is never
   formed. Scalar inputs (d1 = 1) use a broadcast product instead of a matmul.
4. Internally features are "m-major", [E, 2l+1, U] (channels innermost), so the weight multiply
   broadcasts over leading axes and vectorises over U. The layout change to and from e3nn's
   [U, 2l+1] happens once per call, on nodes (N rows) rather than edges in `aggregate`.
5. Weights: models pass the radial MLP's last layer (`aggregate_radial`), and each edge
   chunk's group weights are one matmul with that group's columns, in group order: no
   [E, weight_numel] tensor, no regrouping. A weight tensor (`aggregate`, `forward`) is brought
   into group order with one split + cat (backward: one cat). Inputs and outputs are permuted
   with one index_select each: no slicing, hence none of the zero-filled full-size gradients
   that slicing produces in autograd.
6. `aggregate` fuses gather (sender) → convolution → scatter-sum (receiver): the edge-level
   tensors are per group, and no [E, irreps_out.dim] tensor is formed.
7. `aggregate` contracts over each receiver's edges instead of forming messages and
   scattering them (scatter-then-contract, exact). With h_t[e, i, u] = w_t[e, u] x[sender(e), i, u],

       A_t[n, k, u] = Σ_{e: receiver(e) = n} Σ_i M_t[e, k, i] h_t[e, i, u]
                    = (M_n^T H_n)[k, u],   M_n: [K·d1, d3], H_n: [K·d1, U],

   one batched matmul per group over (receiver, path) pairs with inner dimension K·d1, the
   edges of each receiver padded with zero rows to the largest in-degree K
   (`_aggregate_by_receiver`; the inputs, once per block, and each group's weights are padded,
   each by one gather from the node features / the weights' rows, and h is formed padded:
   d1 + P instead of P·d1 values moved per edge, no [E, ·] edge tensor, no zero fill). No
   [E, d3·U] message tensor, no per-edge [d3, d1] @ [d1, U] products and no scatter; the flops
   are those of the messages (times K / mean in-degree) but run as GEMMs with long inner
   dimensions. Up to 4 · `chunk_elements` padded values the edges are used in their order;
   above, receivers are processed in chunks of about `chunk_elements` padded values (edges
   sorted by receiver). Used when the padded tables are smaller than the messages
   (`sums_by_receiver`, `RECEIVER_PADDING_ALLOWANCE`): MACE's and NequIP's scalar-input
   layers and MACE-medium's second layer, not NequIP's higher-degree layers (padded ≈
   messages). Traced with symbolic shapes (AOTInductor) the in-degree is data-dependent, so
   the message path below is used there.
8. Memory of large systems: edge chunks, and messages recomputed in the backward pass when
   autograd would keep more than `RECOMPUTE_ABOVE_BYTES` for one layer (e.g. MACE-medium on
   2048 Cu atoms in float64: ~9 GB), come from `edge_aggregation`, shared with the SO(2)
   backend. Same numbers either way.

TorchScript-compatible (plain tensor ops, typed attributes), device-agnostic, float32/float64.
The coupling constants are recomputed exactly in float64 and cast whenever the module changes
dtype or device, so a model built in float32 and cast to float64 has float64-exact constants.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from e3nn import o3
from torch import Tensor

from equimd.potentials.nn.convolution.edge_aggregation import EdgeChunkedConvolution
from equimd.potentials.nn.edge_pairs import per_edge
from equimd.potentials.nn.edge_slots import edge_ranks, incoming_edge_offsets
from equimd.potentials.nn.shapes import is_symbolic_size

# Padded rows per edge of `_aggregate_by_receiver`: largest / mean in-degree, 1.0-1.4 on liquid
# water, fcc Cu and 3BPA at 5-6 Å. A layer sums per receiver when its padded values per edge,
# times this, are at most its messages per edge: measured on the water box (2026-12-05),
# MACE-medium's second layer (2,904 padded vs 5,120 message values per edge) is faster per
# receiver, NequIP's higher-degree layers (padded ≈ messages) are faster with messages.
RECEIVER_PADDING_ALLOWANCE = 1.5
# `_aggregate_by_receiver` pads all receivers at once up to this many times `chunk_elements`
# padded values (2^26 = 64 M, 256 MiB in float32, by default), else receivers in chunks of
# `chunk_elements`. One piece keeps each pair's radial weights formed once (in receiver chunks
# the two edges of a pair fall apart) and needs fewer, larger operations: MACE medium on the
# water box (55.7 M padded values in its second layer) 392 against 418 ms per energy + forces
# with a bound of 2^24 (float32, 2 threads; float64 809 against 855 ms), for 145 MB (float64
# 310 MB) more peak memory.
RECEIVER_ONE_PIECE = 4


class FusedUVUConvolution(EdgeChunkedConvolution):
    """The "uvu" convolution of `EdgeConvolution`, fast backend (see the module docstring).

    instructions: (i_in1, i_in2, i_out, path_weight) in e3nn's weight order; each output irrep
    block is written by exactly one instruction (the convolution's outputs are not simplified).

    forward / aggregate: as `EdgeChunkedConvolution` (e3nn layouts in and out).
    """

    backend = "fused"

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        instructions: list[tuple[int, int, int, float]],
    ) -> None:
        super().__init__(irreps_node, irreps_sh, irreps_out, instructions)
        irreps_node, irreps_sh, irreps_out = self.irreps_node, self.irreps_sh, self.irreps_out
        self.num_outputs = len(irreps_out)

        # Paths of each input block, grouped by d3 (groups in order of first appearance,
        # paths in instruction order within a group).
        block_groups: dict[int, dict[int, list[int]]] = {}
        for t, (i_in1, _, i_out, _) in enumerate(instructions):
            d3 = irreps_out[i_out].ir.dim
            block_groups.setdefault(i_in1, {}).setdefault(d3, []).append(t)

        # Units: input blocks with identical coupling structure (same l1, and the same
        # (Y block, l3, path weight) in every group position, e.g. 1o and 1e) are concatenated
        # along the channels and share every operation: fewer and larger operations.
        def signature(b: int) -> tuple:
            return (
                irreps_node[b].ir.l,
                tuple(
                    (d3, tuple((instructions[t][1], irreps_out[instructions[t][2]].ir.l,
                                round(float(instructions[t][3]), 12)) for t in paths))
                    for d3, paths in block_groups[b].items()
                ),
            )

        units: dict[tuple, list[int]] = {}
        for b in sorted(block_groups):
            units.setdefault(signature(b), []).append(b)

        # input permutation: e3nn [N, (u, i)] per block -> m-major [N, (i, (b, u))] per unit
        in_offsets = [s.start for s in irreps_node.slices()]
        input_permutation: list[int] = []
        self.block_sizes = []  # m-major units, [(i, (b, u))]
        for unit in units.values():
            d1 = irreps_node[unit[0]].ir.dim
            for i in range(d1):
                for b in unit:
                    input_permutation += [in_offsets[b] + u * d1 + i for u in range(irreps_node[b].mul)]
            self.block_sizes.append(d1 * sum(irreps_node[b].mul for b in unit))

        out_offsets = [s.start for s in irreps_out.slices()]
        sh_slices = irreps_sh.slices()
        coupling_columns: list[Tensor] = []
        output_source = [0] * irreps_out.dim
        # per group g: m-major input unit, number of paths P, d1, d3, channels U, sizes
        group_block, group_paths, group_dim_in, group_dim_out = [], [], [], []
        group_mul, group_coupling_sizes, weight_order = [], [], []
        message_offset = 0
        for position, unit in enumerate(units.values()):
            ir_in = irreps_node[unit[0]].ir
            d1 = ir_in.dim
            mul = sum(irreps_node[b].mul for b in unit)
            channel_offsets = [sum(irreps_node[c].mul for c in unit[:k]) for k in range(len(unit))]
            for d3, paths in block_groups[unit[0]].items():
                # coupling[j, (p, k, i)] = α_p C_p[i, j - start(l2_p), k]
                coupling = torch.zeros(irreps_sh.dim, len(paths), d3, d1, dtype=torch.float64)
                for p, t in enumerate(paths):
                    _, i_in2, i_out, path_weight = instructions[t]
                    l2, l3 = irreps_sh[i_in2].ir.l, irreps_out[i_out].ir.l
                    cg = o3.wigner_3j(ir_in.l, l2, l3, dtype=torch.float64)  # [i, j, k]
                    sh = sh_slices[i_in2]
                    coupling[sh.start : sh.stop, p] = path_weight * cg.permute(1, 2, 0)
                for p in range(len(paths)):
                    for b, channel_offset in zip(unit, channel_offsets, strict=True):
                        t = block_groups[b][d3][p]
                        i_out = instructions[t][2]
                        weight_order.append(t)  # weights in (p, b, u) order
                        # messages [(p, k, (b, u))] -> e3nn output [(u, k)] of block i_out
                        for k in range(d3):
                            for u in range(irreps_node[b].mul):
                                output_source[out_offsets[i_out] + u * d3 + k] = (
                                    message_offset + (p * d3 + k) * mul + channel_offset + u
                                )
                coupling_columns.append(coupling.reshape(irreps_sh.dim, -1))
                group_block.append(position)
                group_paths.append(len(paths))
                group_dim_in.append(d1)
                group_dim_out.append(d3)
                group_mul.append(mul)
                group_coupling_sizes.append(len(paths) * d3 * d1)
                message_offset += len(paths) * d3 * mul
        self.group_block = group_block
        self.group_paths = group_paths
        self.group_dim_in = group_dim_in
        self.group_dim_out = group_dim_out
        self.group_mul = group_mul
        self.group_coupling_sizes = group_coupling_sizes
        self.group_message_sizes = [
            p * d3 * u for p, d3, u in zip(group_paths, group_dim_out, group_mul, strict=True)
        ]
        self.group_weight_sizes = [p * u for p, u in zip(group_paths, group_mul, strict=True)]
        self.weight_order = weight_order  # instruction index of each path, in group order
        self.weights_in_group_order = weight_order == list(range(len(instructions)))
        self.path_weight_sizes = [irreps_node[i_in1].mul for i_in1, _, _, _ in instructions]
        # `aggregate_radial` computes each group's weights from its own columns of the radial
        # MLP's last layer: e3nn's columns in group order (none when they already are)
        self.weight_group_sizes = list(self.group_weight_sizes)
        if not self.weights_in_group_order:
            columns = [self.weight_starts[t] + u for t in weight_order
                       for u in range(self.path_weight_sizes[t])]
            self.weight_group_columns = torch.tensor(columns, dtype=torch.long)

        # largest per-edge tensor of a chunk (elements): a group's messages, or the weights
        self.elements_per_edge = max(
            self.group_message_sizes + [self.weight_numel, irreps_node.dim]
        )
        # values autograd keeps per edge: coupling rows, gathered inputs, weights, and per group
        # the product the weights multiply (P·U for scalar inputs, P·d3·U otherwise); the
        # messages of large calls are not kept (the scatter keeps only the receiver index)
        products = [
            p * u if d1 == 1 else p * d3 * u
            for p, d1, d3, u in zip(group_paths, group_dim_in, group_dim_out, group_mul, strict=True)
        ]
        self.saved_per_edge = (
            sum(products) + sum(self.group_coupling_sizes) + irreps_node.dim + self.weight_numel
        )
        # padded values per edge slot of `_aggregate_by_receiver`: h (P·d1·U) and M (P·d1·d3),
        # the tables its products read (and the size its chunks are bounded by); the inputs
        # (d1·U, once per block) and the weights (P·U), which h is formed from, are padded too:
        # up to half as much again (MACE medium's second layer: 1,152 on 2,904)
        self.padded_per_edge = sum(
            p * d1 * (u + d3)
            for p, d1, d3, u in zip(group_paths, group_dim_in, group_dim_out, group_mul, strict=True)
        )
        # `aggregate` contracts per receiver (docstring, 7.) when its padded tables are smaller
        # than the messages it replaces, allowing for the padding; else messages and a scatter
        self.sums_by_receiver = (
            RECEIVER_PADDING_ALLOWANCE * self.padded_per_edge <= sum(self.group_message_sizes)
        )
        self.receiver_one_piece = RECEIVER_ONE_PIECE
        self._register_exact("coupling", torch.cat(coupling_columns, dim=1))
        # the same coupling with each path's block transposed, [(p, i, k)]: M_t^T rows per edge
        transposed = [
            column.view(irreps_sh.dim, p, d3, d1).transpose(2, 3).reshape(irreps_sh.dim, -1)
            for column, p, d1, d3 in zip(
                coupling_columns, group_paths, group_dim_in, group_dim_out, strict=True
            )
        ]
        self._register_exact("receiver_coupling", torch.cat(transposed, dim=1))
        self.register_buffer(
            "input_permutation", torch.tensor(input_permutation, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "output_permutation", torch.tensor(output_source, dtype=torch.long), persistent=False
        )

    def _grouped_weights(self, weights: Tensor) -> List[Tensor]:
        """[E, weight_numel] in e3nn's order → per group [E, P·U] ((p, b, u) order): one split
        when the groups already follow e3nn's order (MACE), else split + cat."""
        if self.weights_in_group_order:
            return torch.split(weights, self.group_weight_sizes, dim=1)
        path_weights = torch.split(weights, self.path_weight_sizes, dim=1)
        return torch.split(
            torch.cat([path_weights[t] for t in self.weight_order], dim=1),
            self.group_weight_sizes,
            dim=1,
        )

    def _messages(
        self, inputs: Tensor, edge_sh: Tensor, grouped_weights: List[Tensor],
        sender: Optional[Tensor] = None,
    ) -> List[Tensor]:
        """Messages per group, [E, P·d3·U] each ((p, k, u) order).

        inputs: [E, Σ_b d1·U] sender features, m-major per block (with `sender` [E]: the node
        features [N, ·], gathered per block, `_edge_blocks`); edge_sh: [E, D_sh];
        grouped_weights: [E, P·U] per group ((p, b, u) order, `_grouped_weights`), or one row
        per pair of edges in pair order ([E/2, P·U], broadcast over the pair's two edges).
        """
        num_edges = edge_sh.shape[0]
        blocks = self._edge_blocks(inputs, self.block_sizes, sender)
        couplings = torch.split(torch.mm(edge_sh, self.coupling), self.group_coupling_sizes, dim=1)
        messages: List[Tensor] = []
        for g, coupling in enumerate(couplings):
            paths, dim_in, dim_out, mul = (
                self.group_paths[g], self.group_dim_in[g], self.group_dim_out[g], self.group_mul[g]
            )
            weight = grouped_weights[g]
            x = blocks[self.group_block[g]].view(num_edges, dim_in, mul)
            if dim_in == 1:  # scalar inputs: an outer product per edge, weights on the small side
                message = coupling.view(num_edges, paths, dim_out, 1) * _weighted(
                    x.view(num_edges, 1, 1, mul), weight, paths
                )
            elif paths * dim_out == 1:  # one scalar output row: a dot product, cheaper than bmm
                product = (coupling.view(num_edges, dim_in, 1) * x).sum(dim=1, keepdim=True)
                message = _weighted(product.view(num_edges, 1, 1, mul), weight, paths)
            else:
                product = torch.bmm(coupling.view(num_edges, paths * dim_out, dim_in), x)
                message = _weighted(product.view(num_edges, paths, dim_out, mul), weight, paths)
            messages.append(message.view(num_edges, paths * dim_out * mul))
        return messages

    def contracts_by_receiver(self, edge_sh: Tensor) -> bool:
        """Whether `aggregate` contracts per receiver (docstring, 7.): `sums_by_receiver`, at
        least one edge, concrete shapes (not symbolic tracing), and no recomputation needed."""
        if not self.sums_by_receiver or edge_sh.shape[0] == 0:
            return False
        num_edges = edge_sh.shape[0]
        if is_symbolic_size(num_edges):  # make_fx, export: the in-degree is data-dependent
            return False
        if not torch.jit.is_scripting():
            saved_bytes = num_edges * self.saved_per_edge * edge_sh.element_size()
            if torch.is_grad_enabled() and saved_bytes > self.recompute_above_bytes:
                return False  # the message path recomputes in the backward pass
        return True

    def _aggregate_by_receiver(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        source: Tensor,
        blocks: List[Tensor],
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
        paired: bool = False,
    ) -> Tensor:
        """`aggregate` as A_t[n] = M_t[edges of n]^T · h_t[edges of n] per receiver n, edges
        padded to the largest in-degree (docstring, 7.). The weights as (source, blocks),
        `_weight_groups`; with `paired`, source has one row per pair of the edges in pair
        order."""
        order, counts, starts = incoming_edge_offsets(receiver, num_nodes)  # [E], [N], [N]
        width = int(counts.max())  # K, the largest in-degree
        # each edge's row in the [N·K] padded table: receiver · K + its rank at the receiver
        slot = receiver * width + edge_ranks(receiver, order, starts)  # [E]
        features = node_features.index_select(1, self.input_permutation)
        padded_per_node = width * self.padded_per_edge
        if num_nodes * padded_per_node <= self.receiver_one_piece * self.chunk_elements:
            # one chunk (up to 256 MiB in float32): the edges stay in their order, no reordering
            # of the [E, weight_numel] weights (a gather forward, fill + scatter backward)
            summed = self._contract_by_receiver(
                features, sender, edge_sh, self._weight_groups(source, blocks), slot, num_nodes,
                width,
            )
            return self._to_e3nn_layout([summed])
        sorted_sh = edge_sh.index_select(0, order)
        sorted_sender = sender.index_select(0, order)
        # receivers in chunks whose padded tensors hold about chunk_elements values
        nodes_per_chunk = max(self.chunk_elements // padded_per_node, 1)
        node_edges: List[int] = []  # edges of each node chunk, in receiver order
        chunk_starts: List[int] = []
        ends = torch.cumsum(counts, 0)
        previous = 0
        for first in range(0, num_nodes, nodes_per_chunk):
            last = min(first + nodes_per_chunk, num_nodes)
            end = int(ends[last - 1])
            node_edges.append(end - previous)
            chunk_starts.append(first)
            previous = end
        pieces: List[Tensor] = []
        sh_chunks = torch.split(sorted_sh, node_edges)
        # each edge's row of source in receiver order (paired: its pair's hidden row)
        rows = torch.div(order, 2, rounding_mode="floor") if paired else order
        source_chunks = torch.split(source.index_select(0, rows), node_edges)
        sender_chunks = torch.split(sorted_sender, node_edges)
        slots = torch.split(slot.index_select(0, order), node_edges)
        for c in range(len(node_edges)):
            first = chunk_starts[c]
            nodes = min(first + nodes_per_chunk, num_nodes) - first
            pieces.append(
                self._contract_by_receiver(
                    features, sender_chunks[c], sh_chunks[c],
                    self._weight_groups(source_chunks[c], blocks), slots[c] - first * width,
                    nodes, width,
                )
            )
        return self._to_e3nn_layout([torch.cat(pieces, dim=0)])

    def _contract_by_receiver(
        self, features: Tensor, sender: Tensor, edge_sh: Tensor, grouped_weights: List[Tensor],
        slot: Tensor, nodes: int, width: int,
    ) -> Tensor:
        """[nodes, Σ_g P·d3·U] sums of one receiver chunk ((p, k, u) order per group).

        features [N, ·] node features (m-major units), sender [E_c]; edge_sh [E_c, D_sh];
        grouped_weights [E_c, P·U] per group, or [E_c/2, P·U] per pair of edges in pair order;
        slot [E_c]: receiver-in-chunk · width + rank.
        A group's padded tables have rows (receiver, p, rank): each (receiver, path) pair is one
        [K·d1, ·] matrix of the batched matmul, and its output is already in (p, k, u) order.
        """
        num_edges = edge_sh.shape[0]
        node_blocks = torch.split(features, self.block_sizes, dim=1)  # [N, d1·U] each
        couplings = torch.split(
            torch.mm(edge_sh, self.receiver_coupling), self.group_coupling_sizes, dim=1
        )  # [E_c, P·d1·d3] per group, (p, i, k)
        sums: List[Tensor] = []
        padded_inputs: List[Optional[Tensor]] = [None for _ in self.block_sizes]
        slot_sender: Optional[Tensor] = None  # [n·K]: each slot's sender, N where empty
        slot_row: Optional[Tensor] = None  # [n·K]: each slot's row of the weights, 0 where empty
        for g, coupling in enumerate(couplings):
            paths, dim_in, dim_out, mul = (
                self.group_paths[g], self.group_dim_in[g], self.group_dim_out[g], self.group_mul[g]
            )
            if paths == 1:
                rows = slot
            else:  # row of (edge, p): (receiver · P + p) · K + rank = slot + receiver · (P − 1) · K + p · K
                receiver_in_chunk = torch.div(slot, width, rounding_mode="floor")
                offsets = torch.arange(paths, device=slot.device, dtype=slot.dtype) * width
                rows = ((slot + receiver_in_chunk * ((paths - 1) * width)).unsqueeze(1) + offsets).view(-1)
            # the inputs (shared by the block's groups) and each group's weights are padded and
            # h = w·x is formed padded: d1 + P values per slot instead of the P·d1 of h, each
            # table by one gather (empty slots read a zero input row, so their weight row is
            # any finite one), no [E_c, ·] edge tensor, no zero fill
            block = self.group_block[g]
            x_padded = padded_inputs[block]
            if x_padded is None:
                if slot_sender is None:
                    slot_sender = torch.full(
                        [nodes * width], features.shape[0], dtype=sender.dtype,
                        device=sender.device,
                    ).index_copy_(0, slot, sender)
                node_block = node_blocks[block]
                x_padded = torch.cat(
                    [node_block, node_block.new_zeros(1, dim_in * mul)]
                ).index_select(0, slot_sender)  # [n·K, d1·U]
                padded_inputs[block] = x_padded
            weight = grouped_weights[g]  # [E_c or E_c/2, P·U]
            if num_edges > 0:  # (a receiver chunk may have no edges)
                if slot_row is None:
                    edge_rows = torch.arange(num_edges, device=slot.device, dtype=slot.dtype)
                    if weight.shape[0] != num_edges:  # a row per pair of edges in pair order
                        edge_rows = torch.div(edge_rows, 2, rounding_mode="floor")
                    slot_row = torch.zeros(
                        [nodes * width], dtype=slot.dtype, device=slot.device
                    ).index_copy_(0, slot, edge_rows)
                if paths == 1:
                    w_padded = weight.index_select(0, slot_row)  # [n·K, U]
                else:  # rows (receiver, p, rank) of the weights' (row, p) rows
                    path_rows = slot_row.view(nodes, 1, width) * paths + torch.arange(
                        paths, device=slot.device, dtype=slot.dtype
                    ).view(1, paths, 1)
                    w_padded = weight.reshape(weight.shape[0] * paths, mul).index_select(
                        0, path_rows.view(-1)
                    )  # [n·P·K, U]
            else:
                w_padded = weight.new_zeros(nodes * paths * width, mul)
            h_padded = x_padded.view(nodes, 1, width, dim_in, mul) * w_padded.view(
                nodes, paths, width, 1, mul
            )  # [n, P, K, d1, U]
            m_padded = coupling.new_zeros(nodes * paths * width, dim_in * dim_out).index_copy_(
                0, rows, coupling.reshape(num_edges * paths, dim_in * dim_out)
            )  # [n·P·K, d1·d3]
            summed = torch.bmm(
                m_padded.view(nodes * paths, width * dim_in, dim_out).transpose(1, 2),
                h_padded.view(nodes * paths, width * dim_in, mul),
            )  # [n·P, d3, U]
            sums.append(summed.view(nodes, paths * dim_out * mul))
        return torch.cat(sums, dim=1)


def _weighted(values: Tensor, weight: Tensor, paths: int) -> Tensor:
    """values [E, P or 1, d, U] times the weights [E, P·U] (one row per edge), or [E/2, P·U]
    (one row per pair of edges in pair order: edges 2p and 2p + 1 take row p) → [E, P, d, U].

    Pair rows are broadcast over the two edges where d = 1; for d > 1 they are first copied to
    both edges, because the broadcast's backward (a sum over the pair and d axes at once) runs
    ~5× slower in torch than the copy's (a sum over the pair axis) plus the per-edge product's.
    """
    num_edges, dim, mul = values.shape[0], values.shape[2], values.shape[3]
    if dim > 1:
        weight = per_edge(weight, num_edges)  # as it is when it has a row per edge
    if weight.shape[0] == num_edges:
        return values * weight.view(num_edges, paths, 1, mul)
    pairs = weight.shape[0]
    product = values.view(pairs, 2, values.shape[1], dim, mul) * weight.view(pairs, 1, paths, 1, mul)
    return product.view(num_edges, paths, dim, mul)
