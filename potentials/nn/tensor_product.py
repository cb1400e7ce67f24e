"""The tensor-product core: the edge convolution h_i ⊗ Y(r̂_ij), weighted per edge.

One interface, several backends. `e3nn` is the reference backend; fast backends are tested
against it (equal outputs, equal forces, energy conservation; tests/test_tensor_product_backends.py).

Both NequIP and MACE use the same "uvu" convolution: every input channel u of irrep l1 is
coupled with the spherical harmonics Y^l2 into every allowed l3 (no channel mixing), with one
weight per (edge, path, channel) produced by a radial MLP.

Backends (all share `irreps_out`, `weight_numel`, the weight layout and the output layout, and
hold no weights of their own, so models and checkpoints are interchangeable between them):

- ``"e3nn"``:  `e3nn.o3.TensorProduct` (the reference).
- ``"fused"``: `equimd.potentials.nn.fused_convolution.FusedUVUConvolution`: per-edge coupling
  matrices from one matmul, channels batched in one bmm per input block, fused
  gather → convolution → scatter in `aggregate` (see docs/performance.md). The default.
- ``"so2"``:   `equimd.potentials.nn.so2_convolution.SO2UVUConvolution`: the SO(2)/eSCN convolution in
  each edge's frame. Exact when `edge_sh` are the spherical harmonics of the edge vectors (as
  in NequIP and MACE), so it is listed in `GEOMETRIC_TP_BACKENDS`, not in `TP_BACKENDS`
  (backends exact for any `edge_sh`); see docs/performance.md ("SO(2) convolution").
- ``"cueq"``:  `equimd.potentials.nn.cueq_convolution.CueqUVUConvolution`: NVIDIA cuEquivariance's
  segmented polynomial built from e3nn's coefficients; its fused CUDA kernels on a GPU with
  `cuequivariance-ops-torch-cu12`, plain PyTorch otherwise. Optional (`equimd[cueq]`):
  `available_tp_backends()` lists it only when `cuequivariance_torch` imports.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.cueq_convolution import HAS_CUEQ, CueqUVUConvolution
from equimd.potentials.nn.fused_convolution import FusedUVUConvolution
from equimd.potentials.nn.scatter import scatter_sum
from equimd.potentials.nn.so2_convolution import SO2UVUConvolution

TP_BACKENDS = ("fused", "e3nn", "cueq")
GEOMETRIC_TP_BACKENDS = ("so2",)  # exact only for edge_sh = Y(edge vectors)
OPTIONAL_TP_BACKENDS = ("cueq",)  # need an optional package (cuequivariance-torch)
DEFAULT_TP_BACKEND = "fused"


def available_tp_backends() -> tuple[str, ...]:
    """Backends usable in this environment (optional ones only when their package imports)."""
    missing = () if HAS_CUEQ else ("cueq",)
    return tuple(b for b in TP_BACKENDS + GEOMETRIC_TP_BACKENDS if b not in missing)


def convolution_irreps(
    irreps_node: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps
) -> tuple[o3.Irreps, list[tuple[int, int, int, str, bool]]]:
    """Output irreps and "uvu" instructions of the convolution (as in NequIP and MACE).

    Every (mul × l1) ⊗ l2 → l3 with l3 present in `irreps_target` becomes a path; outputs are
    sorted by irrep (not simplified), and instructions are permuted accordingly.
    """
    irreps_out: list[tuple[int, o3.Irrep]] = []
    instructions: list[tuple[int, int, int, str, bool]] = []
    for i, (mul, ir_in) in enumerate(irreps_node):
        for j, (_, ir_edge) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_edge:
                if ir_out in irreps_target:
                    k = len(irreps_out)
                    irreps_out.append((mul, ir_out))
                    instructions.append((i, j, k, "uvu", True))
    irreps_out_sorted, permutation, _ = o3.Irreps(irreps_out).sort()
    instructions = [
        (i_in1, i_in2, permutation[i_out], mode, train)
        for i_in1, i_in2, i_out, mode, train in instructions
    ]
    return irreps_out_sorted, instructions


class EdgeConvolution(nn.Module):
    """Per-edge tensor product of sender features and edge spherical harmonics.

    forward(node_features [E, irreps_node.dim] (features of the sender of each edge),
            edge_sh [E, irreps_sh.dim], weights [E, weight_numel] (from the radial MLP))
        -> [E, irreps_out.dim]
    aggregate(node_features [N, irreps_node.dim], edge_sh, weights, sender [E], receiver [E],
              num_nodes) -> [N, irreps_out.dim]:  Σ_{e: receiver[e] = n} forward(x[sender])[e],
        the message-passing step of NequIP and MACE (fused in the fast backend).

    `backend` is one of `TP_BACKENDS`; the choice never changes the numbers beyond rounding.
    """

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_target: o3.Irreps,
        backend: str = DEFAULT_TP_BACKEND,
    ) -> None:
        super().__init__()
        if backend not in TP_BACKENDS + GEOMETRIC_TP_BACKENDS:
            raise ValueError(
                f"unknown tensor-product backend {backend!r}; "
                f"available: {list(TP_BACKENDS + GEOMETRIC_TP_BACKENDS)}"
            )
        self.backend = backend
        self.irreps_node = o3.Irreps(irreps_node)
        self.irreps_sh = o3.Irreps(irreps_sh)
        self.irreps_out, instructions = convolution_irreps(
            self.irreps_node, self.irreps_sh, o3.Irreps(irreps_target)
        )
        reference = o3.TensorProduct(
            self.irreps_node,
            self.irreps_sh,
            self.irreps_out,
            instructions=instructions,
            shared_weights=False,
            internal_weights=False,
        )
        self.weight_numel = reference.weight_numel
        self.tp: nn.Module
        # path weights (normalisation) are taken from e3nn's instructions: same numbers
        paths = [(ins.i_in1, ins.i_in2, ins.i_out, ins.path_weight) for ins in reference.instructions]
        if backend == "e3nn":
            self.tp = E3nnConvolution(reference)
        elif backend == "so2":
            self.tp = SO2UVUConvolution(self.irreps_node, self.irreps_sh, self.irreps_out, paths)
        elif backend == "cueq":
            self.tp = CueqUVUConvolution(self.irreps_node, self.irreps_sh, self.irreps_out, paths)
        else:
            self.tp = FusedUVUConvolution(self.irreps_node, self.irreps_sh, self.irreps_out, paths)
        # Backend constants (e3nn's `output_mask`, Wigner-3j buffers) are not model weights:
        # incoming ones are replaced by this backend's own, so any backend loads any checkpoint.
        self.register_load_state_dict_pre_hook(_use_own_backend_constants)

    def forward(self, node_features: Tensor, edge_sh: Tensor, weights: Tensor) -> Tensor:
        return self.tp(node_features, edge_sh, weights)

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
        return self.tp.aggregate(node_features, edge_sh, weights, sender, receiver, num_nodes)


class E3nnConvolution(nn.Module):
    """Reference backend: e3nn's `TensorProduct`; `aggregate` = gather → forward → scatter-sum."""

    def __init__(self, tensor_product: o3.TensorProduct) -> None:
        super().__init__()
        self.tp = tensor_product

    def forward(self, node_features: Tensor, edge_sh: Tensor, weights: Tensor) -> Tensor:
        return self.tp(node_features, edge_sh, weights)

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
        messages = self.tp(node_features.index_select(0, sender), edge_sh, weights)
        return scatter_sum(messages, receiver, num_nodes)


def _use_own_backend_constants(module: EdgeConvolution, state_dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: drop the checkpoint's `tp.*` entries, supply the module's own."""
    for key in [k for k in state_dict if k.startswith(prefix + "tp.")]:
        del state_dict[key]
    for name, value in module.tp.state_dict(prefix=prefix + "tp.").items():
        state_dict[name] = value
