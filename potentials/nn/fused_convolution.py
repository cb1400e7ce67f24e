"""Fast backend of the "uvu" edge convolution (`EdgeConvolution(..., backend="fused")`).

Same numbers as e3nn's `TensorProduct` with the same instructions, weights and layouts, computed
in a different order. For an input irrep block x_b (mul U, degree l1, d1 = 2 l1 + 1) and a path
t = (l1, l2 → l3) with path weight α_t and Clebsch–Gordan block C_t (d1 × d2 × d3):

    m_t[e, u, k] = w_t[e, u] · α_t Σ_ij C_t[i, j, k] x_b[e, u, i] Y^{l2}[e, j]
                 = w_t[e, u] · Σ_i M_t[e, k, i] x_b[e, i, u],
    M_t[e, k, i] = α_t Σ_j C_t[i, j, k] Y^{l2}[e, j]                        (per edge, no channels)

1. The per-edge coupling matrices M_t of all paths of a block come from ONE matmul of the
   spherical harmonics with a constant matrix (α_t C_t folded in): [E, D_sh] @ [D_sh, D3_b·d1].
2. All paths of a block share ONE batched matmul over edges: [E, D3_b, d1] @ [E, d1, U], i.e.
   the channels u are batched and the d2 factor of e3nn's outer product x ⊗ Y is never formed.
3. Internally the layout is "m-major" [E, 2l+1, U] (channels innermost), so the per-path weight
   multiply broadcasts over a leading axis and vectorises over U; e3nn's [E, U, 2l+1] layout is
   restored once per path (on nodes, not edges, in `aggregate`).
4. Pieces are taken with `torch.split` (backward: one `cat`) instead of slicing (backward: a full
   zero tensor per slice), and the output is built with one `torch.cat`.
5. `aggregate` fuses gather (sender) → convolution → scatter-sum (receiver): every edge-level
   tensor is per block or per path, the layout change happens on nodes, and no [E, irreps_out.dim]
   tensor is ever formed.

TorchScript-compatible (plain tensor ops, typed attributes), device-agnostic, float32/float64.
The coupling constants are recomputed exactly in float64 and cast whenever the module changes
dtype or device, so a model built in float32 and cast to float64 has float64-exact constants.
"""

from __future__ import annotations

from typing import List

import torch
from e3nn import o3
from torch import Tensor, nn

from potentials.nn.scatter import scatter_sum


class _Path:
    """One "uvu" path of a block: l1 ⊗ l2 → l3 (plain Python record used at construction)."""

    def __init__(
        self, sh_index: int, output_index: int, path_weight: float, weight_start: int
    ) -> None:
        self.sh_index = sh_index
        self.output_index = output_index
        self.path_weight = path_weight
        self.weight_start = weight_start


class FusedConvolutionBlock(nn.Module):
    """All paths leaving one input irrep block (mul × l1) of the convolution.

    forward(x [E, d1, U] m-major, edge_sh [E, D_sh], weights [P][E, U]) -> [P][E, d3_t, U]
    where P is the number of paths of the block, in instruction order.
    """

    __jit_ignored_attributes__ = ["_coupling_exact"]

    def __init__(
        self, irreps_sh: o3.Irreps, irrep_in: o3.Irrep, irreps_out: o3.Irreps, paths: list[_Path]
    ) -> None:
        super().__init__()
        self.dim_in: int = irrep_in.dim
        self.path_dims: List[int] = [irreps_out[p.output_index].ir.dim for p in paths]
        self.num_rows: int = sum(self.path_dims)
        # coupling[j, (row, i)] with row = offset_t + k: α_t C_t[i, j - start(l2), k]
        coupling = torch.zeros(irreps_sh.dim, self.num_rows, self.dim_in, dtype=torch.float64)
        sh_slices = irreps_sh.slices()
        row = 0
        for path, d3 in zip(paths, self.path_dims):
            ir_sh = irreps_sh[path.sh_index].ir
            ir_out = irreps_out[path.output_index].ir
            cg = o3.wigner_3j(irrep_in.l, ir_sh.l, ir_out.l, dtype=torch.float64)  # [i, j, k]
            sh = sh_slices[path.sh_index]
            coupling[sh.start : sh.stop, row : row + d3, :] = path.path_weight * cg.permute(1, 2, 0)
            row += d3
        self._coupling_exact = coupling.reshape(irreps_sh.dim, self.num_rows * self.dim_in)
        self.register_buffer(
            "coupling", self._coupling_exact.to(torch.get_default_dtype()), persistent=False
        )

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch.nn.Module signature
        module = super()._apply(fn, recurse)
        # Re-derive the constants from their float64 values (no float32 rounding after .double()).
        self.coupling = self._coupling_exact.to(
            device=self.coupling.device, dtype=self.coupling.dtype
        )
        return module

    def forward(self, x: Tensor, edge_sh: Tensor, weights: List[Tensor]) -> List[Tensor]:
        num_edges = x.shape[0]
        # M[e, row, i]: per-edge coupling of all paths of this block, [E, D3_b, d1]
        coupling = torch.mm(edge_sh, self.coupling).view(num_edges, self.num_rows, self.dim_in)
        messages: List[Tensor] = []
        if self.dim_in == 1:
            # scalar inputs: m_t = M_t ⊙ (w_t x), an outer product per edge
            for coupling_path, weight in zip(torch.split(coupling, self.path_dims, dim=1), weights):
                messages.append(coupling_path * (x * weight.unsqueeze(1)))
        else:
            products = torch.bmm(coupling, x)  # [E, D3_b, U]
            for product, weight in zip(torch.split(products, self.path_dims, dim=1), weights):
                messages.append(product * weight.unsqueeze(1))
        return messages


class FusedUVUConvolution(nn.Module):
    """The "uvu" convolution of `EdgeConvolution`, fast backend (see the module docstring).

    instructions: (i_in1, i_in2, i_out, path_weight) in e3nn's weight order; each output irrep
    block is written by exactly one instruction (the convolution's outputs are not simplified).

    forward(node_features [E, irreps_node.dim], edge_sh [E, irreps_sh.dim],
            weights [E, weight_numel]) -> [E, irreps_out.dim]                (e3nn layouts)
    aggregate(node_features [N, irreps_node.dim], edge_sh, weights, sender [E], receiver [E],
              num_nodes) -> [N, irreps_out.dim] = Σ_{e: receiver[e] = n} forward(x[sender])[e]
    """

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        instructions: list[tuple[int, int, int, float]],
    ) -> None:
        super().__init__()
        irreps_node, irreps_sh, irreps_out = (o3.Irreps(i) for i in (irreps_node, irreps_sh, irreps_out))
        if any(mul != 1 for mul, _ in irreps_sh):
            raise ValueError(f"fused convolution needs multiplicity 1 in irreps_sh, got {irreps_sh}")
        outputs = sorted(i_out for _, _, i_out, _ in instructions)
        if outputs != list(range(len(irreps_out))):
            raise ValueError("fused convolution needs exactly one instruction per output irrep block")
        self.weight_numel: int = 0
        paths_of_block: list[list[_Path]] = [[] for _ in irreps_node]
        for i_in1, i_in2, i_out, path_weight in instructions:
            mul_in, ir_in = irreps_node[i_in1]
            mul_out, ir_out = irreps_out[i_out]
            if mul_in != mul_out or ir_out not in ir_in * irreps_sh[i_in2].ir:
                raise ValueError(f"instruction {(i_in1, i_in2, i_out)} is not a uvu path")
            paths_of_block[i_in1].append(_Path(i_in2, i_out, float(path_weight), self.weight_numel))
            self.weight_numel += mul_in

        self.num_outputs: int = len(irreps_out)
        self.input_sizes: List[int] = [mul_ir.dim for mul_ir in irreps_node]
        self.block_index: List[int] = []  # which input block feeds each FusedConvolutionBlock
        self.block_mul: List[int] = []
        self.block_dim: List[int] = []
        weight_order: list[_Path] = []
        output_of_piece: list[int] = []
        blocks = []
        for index, ((mul, ir), paths) in enumerate(zip(irreps_node, paths_of_block)):
            if not paths:
                continue
            blocks.append(FusedConvolutionBlock(irreps_sh, ir, irreps_out, paths))
            self.block_index.append(index)
            self.block_mul.append(mul)
            self.block_dim.append(ir.dim)
            weight_order += paths
            output_of_piece += [p.output_index for p in paths]
        self.blocks = nn.ModuleList(blocks)
        # weights are split per path in e3nn's (instruction) order; pieces come in block order
        self.weight_sizes: List[int] = [
            irreps_node[i_in1].mul for i_in1, _, _, _ in instructions
        ]
        starts = [p.weight_start for p in weight_order]
        all_starts = sorted(starts)
        self.weight_piece: List[int] = [all_starts.index(s) for s in starts]
        self.path_counts: List[int] = [len(b.path_dims) for b in blocks]
        self.output_order: List[int] = [output_of_piece.index(k) for k in range(self.num_outputs)]
        self.output_dims: List[int] = [mul_ir.ir.dim for mul_ir in irreps_out]

    def _block_weights(self, weights: Tensor) -> List[List[Tensor]]:
        """Split [E, weight_numel] into per-path [E, U] pieces, grouped by block."""
        pieces = torch.split(weights, self.weight_sizes, dim=1)
        grouped: List[List[Tensor]] = []
        start = 0
        for count in self.path_counts:
            grouped.append([pieces[self.weight_piece[start + t]] for t in range(count)])
            start += count
        return grouped

    def forward(self, node_features: Tensor, edge_sh: Tensor, weights: Tensor) -> Tensor:
        num_edges = node_features.shape[0]
        inputs = torch.split(node_features, self.input_sizes, dim=1)
        block_weights = self._block_weights(weights)
        pieces: List[Tensor] = []
        for b, block in enumerate(self.blocks):
            mul = self.block_mul[b]
            x = inputs[self.block_index[b]].reshape(num_edges, mul, self.block_dim[b])
            for message in block(x.transpose(1, 2), edge_sh, block_weights[b]):
                pieces.append(
                    message.transpose(1, 2).reshape(num_edges, message.shape[1] * message.shape[2])
                )
        return self._assemble(pieces, node_features)

    @torch.jit.export
    def aggregate(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        weights: Tensor,
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
    ) -> Tensor:
        inputs = torch.split(node_features, self.input_sizes, dim=1)
        block_weights = self._block_weights(weights)
        pieces: List[Tensor] = []
        for b, block in enumerate(self.blocks):
            mul = self.block_mul[b]
            x = inputs[self.block_index[b]].reshape(num_nodes, mul, self.block_dim[b])
            x = x.transpose(1, 2).contiguous().index_select(0, sender)  # [E, d1, U]
            for message in block(x, edge_sh, block_weights[b]):
                summed = scatter_sum(message, receiver, num_nodes)  # [N, d3, U]
                pieces.append(
                    summed.transpose(1, 2).reshape(num_nodes, summed.shape[1] * summed.shape[2])
                )
        return self._assemble(pieces, node_features)

    def _assemble(self, pieces: List[Tensor], like: Tensor) -> Tensor:
        """Concatenate per-path pieces [rows, U·d3] in output-irrep order."""
        if len(pieces) == 0:
            return like.new_zeros(like.shape[0], 0)
        return torch.cat([pieces[i] for i in self.output_order], dim=1)
