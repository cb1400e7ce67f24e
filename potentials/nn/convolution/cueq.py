"""cuEquivariance backend of the "uvu" edge convolution (`EdgeConvolution(..., backend="cueq")`).

Optional: needs `cuequivariance-torch` (`pip install "equimd[cueq]"`); on an NVIDIA GPU with
`cuequivariance-ops-torch-cu12` installed too, the convolution runs in NVIDIA's fused CUDA
kernels (method "uniform_1d" when every input block has the same multiplicity, as in NequIP
and MACE). Without the kernels, or on CPU, cuEquivariance evaluates the same polynomial with
its plain-PyTorch "naive" method: same numbers, slow (a test and fallback path, not a CPU
speed-up: use "fused" there).

Same numbers as e3nn's `TensorProduct`: the polynomial is built here from e3nn's own
Clebsch–Gordan blocks and path weights (not from cuEquivariance's descriptors, whose bases and
normalisation differ), one path per instruction,

    out[k, u] (block i_out) += w_t[u] · Σ_ij c_t[i, j, k] x[i, u] (block i_in1) Y[j] (block i_in2),
    c_t = α_t · wigner_3j(l1, l2, l3)          (subscripts "u,iu,j,ku+ijk", float64 constants),

with the weights in e3nn's order (one segment of U per instruction, the radial MLP's layout).
Node features enter and messages leave in cuEquivariance's "ir_mul" layout ([2l+1, U] per
block), one permutation each way on node rows (not edges). `aggregate` passes the sender and
receiver indices to the kernel (gather and scatter-sum fused into it).
"""

from __future__ import annotations

import importlib.util
from typing import Dict

import torch
from e3nn import o3
from torch import Tensor

from equimd.potentials.nn.convolution.edge_aggregation import UVUConvolution

# optional packages, imported only when the backend is built
HAS_CUEQ = importlib.util.find_spec("cuequivariance_torch") is not None
HAS_CUEQ_KERNELS = importlib.util.find_spec("cuequivariance_ops_torch") is not None  # CUDA


def _mul_ir_to_ir_mul(irreps: o3.Irreps) -> list[int]:
    """Index map: position in the ir_mul layout -> position in e3nn's mul_ir layout."""
    index: list[int] = []
    for (mul, ir), block in zip(irreps, irreps.slices(), strict=True):
        index += [block.start + u * ir.dim + i for i in range(ir.dim) for u in range(mul)]
    return index


def cueq_method(irreps_node: o3.Irreps, irreps_out: o3.Irreps) -> str:
    """'uniform_1d' (CUDA kernels) when installed, a GPU is present and all blocks have one
    multiplicity; otherwise 'naive' (plain PyTorch)."""
    uniform = len({mul for mul, _ in irreps_node} | {mul for mul, _ in irreps_out}) == 1
    return "uniform_1d" if HAS_CUEQ_KERNELS and torch.cuda.is_available() and uniform else "naive"


class CueqUVUConvolution(UVUConvolution):
    """The "uvu" convolution of `EdgeConvolution` on cuEquivariance (see the module docstring).

    forward / aggregate: as `equimd.potentials.nn.convolution.EdgeConvolution` (e3nn layouts).
    """

    backend = "cueq"

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        instructions: list[tuple[int, int, int, float]],
        method: str | None = None,
    ) -> None:
        super().__init__(irreps_node, irreps_sh, irreps_out, instructions)
        if not HAS_CUEQ:
            raise ImportError(
                "tensor-product backend 'cueq' needs cuEquivariance: "
                "pip install cuequivariance-torch (and cuequivariance-ops-torch-cu12 for the "
                "CUDA kernels); or use backend 'fused'"
            )
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        irreps_node, irreps_sh, irreps_out = self.irreps_node, self.irreps_sh, self.irreps_out

        product = cue.SegmentedTensorProduct.from_subscripts("u,iu,j,ku+ijk")
        for mul, ir in irreps_node:
            product.add_segment(1, (ir.dim, mul))
        for _, ir in irreps_sh:
            product.add_segment(2, (ir.dim,))
        for mul, ir in irreps_out:
            product.add_segment(3, (ir.dim, mul))
        for i_in1, i_in2, i_out, path_weight in instructions:  # weight segments in e3nn order
            l1, l2, l3 = irreps_node[i_in1].ir.l, irreps_sh[i_in2].ir.l, irreps_out[i_out].ir.l
            coefficients = path_weight * o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
            product.add_path(
                None, i_in1, i_in2, i_out, c=coefficients.numpy(),
                dims={"u": irreps_node[i_in1].mul},
            )  # fmt: skip
        self.method = method or cueq_method(irreps_node, irreps_out)
        self.polynomial = cuet.SegmentedPolynomial(
            cue.SegmentedPolynomial.eval_last_operand(product), method=self.method
        )
        # cuEquivariance's coefficient buffers are constants, not weights: keep them out of the
        # state dict so checkpoints stay interchangeable with every other backend
        for module in self.polynomial.modules():
            module._non_persistent_buffers_set.update(module._buffers.keys())
        self.output_dim = irreps_out.dim
        self.register_buffer(
            "input_permutation",
            torch.tensor(_mul_ir_to_ir_mul(irreps_node), dtype=torch.long),
            persistent=False,
        )
        ir_mul_positions = _mul_ir_to_ir_mul(irreps_out)
        output_permutation = [0] * irreps_out.dim
        for position, source in enumerate(ir_mul_positions):
            output_permutation[source] = position
        self.register_buffer(
            "output_permutation", torch.tensor(output_permutation, dtype=torch.long), persistent=False
        )

    def forward(self, node_features: Tensor, edge_sh: Tensor, weights: Tensor) -> Tensor:
        if edge_sh.shape[0] == 0:  # cuEquivariance rejects empty batches
            return node_features.new_zeros(0, self.output_dim)
        inputs = node_features.index_select(1, self.input_permutation)
        messages = self.polynomial([weights, inputs, edge_sh])[0]
        return messages.index_select(1, self.output_permutation)

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
        if edge_sh.shape[0] == 0:
            return node_features.new_zeros(num_nodes, self.output_dim)
        inputs = node_features.index_select(1, self.input_permutation)
        input_indices: Dict[int, Tensor] = {1: sender}
        output_indices: Dict[int, Tensor] = {0: receiver}
        output_shapes: Dict[int, Tensor] = {0: inputs.new_empty(num_nodes, 0)}
        summed = self.polynomial(
            [weights, inputs, edge_sh],
            input_indices=input_indices,
            output_shapes=output_shapes,
            output_indices=output_indices,
        )[0]
        return summed.index_select(1, self.output_permutation)
