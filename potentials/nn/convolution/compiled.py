"""Compiled backend of the "uvu" edge convolution (`EdgeConvolution(..., backend="compiled")`).

The fused backend (`fused.FusedUVUConvolution`: same tables, same numbers) with `aggregate`'s
receiver sums in equimd's C++ kernel (`csrc/receiver_sums.cpp`, built by
``equimd kernels build``, `kernel_library`):

    A_t[n, k, u] = Σ_{e: receiver(e) = n} w_t[row(e), u] Σ_i M_t[e, k, i] x[sender(e), i, u]

walked receiver by receiver (edges in CSR order, one thread per receiver range, no atomics),
w·x in a scratch row per path: the weights are read once per edge, in e3nn's column order
(per-path column segments, `weight_segments`), and none of
the eager path's intermediates (messages [E, P·d3·U], padded tables h = w·x, padded weights)
is formed. Models pass the radial MLP's last layer (`aggregate_radial`): the weights are one
matmul [rows, h] @ [h, weight_numel] (rows: one per pair of edges in pair order, read by both
edges). Its backward is a second kernel (dL/dx per sender over a sender CSR; dL/dM, dL/dw per
weight row); M = Y @ coupling, the permutations and the weights' matmul stay autograd ops, so
forces, stress and the gradients with respect to every weight are exact.

Where the kernel does not apply, the fused backend's eager path runs (same numbers):
- training (module in train mode with gradients on): the kernel has no second derivative,
  which forces in the loss need (create_graph); a second derivative in eval mode raises;
- tensors on a GPU (the kernel is CPU code);
- symbolic shapes (`torch.export` / AOTInductor tracing): an AOTInductor file of a "compiled"
  model holds the fused path and does not need the library.

TorchScript files call ``torch.ops.equimd.receiver_sums``: loading one needs the library
(`equimd.deploy.load` loads it from the file's metadata, ``convolution_backend: compiled``).
Building the backend requires the library (`kernel_library.require`), so it is an optional
backend, listed by `available_backends()` only where it is built.
"""

from __future__ import annotations

import itertools
from typing import List

import torch
from e3nn import o3
from torch import Tensor

from equimd.potentials.nn.convolution import kernel_library
from equimd.potentials.nn.convolution.fused import FusedUVUConvolution
from equimd.potentials.nn.shapes import is_symbolic_size


class CompiledUVUConvolution(FusedUVUConvolution):
    """The "uvu" convolution with `aggregate` in the compiled kernel (module docstring).

    kernel_groups: five integers per group for the kernel (the unit's first input column, d1,
    d3, P, U), the fused backend's groups in their order; weight_segments: three per run of
    weight columns (first column in e3nn's weight order, length, first channel), per group and
    path in order, so the kernel reads the weights (or the radial MLP's output) as they are.
    """

    backend = "compiled"

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        instructions: list[tuple[int, int, int, float]],
    ) -> None:
        kernel_library.require()
        super().__init__(irreps_node, irreps_sh, irreps_out, instructions)
        unit_starts = [0, *itertools.accumulate(self.block_sizes)]
        self.kernel_groups: List[int] = []
        self.weight_segments: List[int] = []
        paths = iter(self.weight_order)  # instruction of each (group, path, block), in order
        for g, block in enumerate(self.group_block):
            self.kernel_groups += [
                unit_starts[block], self.group_dim_in[g], self.group_dim_out[g],
                self.group_paths[g], self.group_mul[g],
            ]  # fmt: skip
            for _ in range(self.group_paths[g]):
                channel = 0
                while channel < self.group_mul[g]:  # the unit's blocks, one segment each
                    t = next(paths)
                    self.weight_segments += [self.weight_starts[t], self.path_weight_sizes[t], channel]
                    channel += self.path_weight_sizes[t]

    def uses_kernel(self, edge_sh: Tensor) -> bool:
        """Whether `aggregate` runs in the compiled kernel (module docstring): CPU tensors,
        concrete shapes, and not training with gradients."""
        if is_symbolic_size(edge_sh.shape[0]):
            return False
        if edge_sh.device.type != "cpu":
            return False
        return not (self.training and torch.is_grad_enabled())

    def _kernel_sums(
        self, node_features: Tensor, edge_sh: Tensor, weights: Tensor, sender: Tensor,
        receiver: Tensor, num_nodes: int,
    ) -> Tensor:
        """Σ over each receiver's edges in the kernel; weights [E or E/2, weight_numel] in
        e3nn's column order (a row per edge, or per pair of edges in pair order)."""
        features = node_features.index_select(1, self.input_permutation)  # [N, Din] m-major
        coupling = torch.mm(edge_sh, self.coupling)  # [E, Σ_g P·d3·d1]
        summed = torch.ops.equimd.receiver_sums(
            features, coupling, weights, sender, receiver, num_nodes, self.kernel_groups,
            self.weight_segments,
        )  # [N, Σ_g P·d3·U]
        return summed.index_select(1, self.output_permutation)

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
        if self.uses_kernel(edge_sh):
            return self._kernel_sums(node_features, edge_sh, weights, sender, receiver, num_nodes)
        return self._aggregate(node_features, edge_sh, weights, [], sender, receiver, num_nodes)

    @torch.jit.export
    def aggregate_radial(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        hidden: Tensor,
        last_weight: Tensor,
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
        paired: bool = False,
    ) -> Tensor:
        """`aggregate` with weights = hidden [E, h] (or [E/2, h] per pair with `paired`) @
        last_weight [h, weight_numel]: in the kernel one matmul, else the fused backend's."""
        if self.uses_kernel(edge_sh):
            weights = torch.mm(hidden, last_weight)  # [E or E/2, weight_numel]
            return self._kernel_sums(node_features, edge_sh, weights, sender, receiver, num_nodes)
        blocks = self._last_layer_blocks(last_weight)
        return self._aggregate(
            node_features, edge_sh, hidden, blocks, sender, receiver, num_nodes, paired
        )
