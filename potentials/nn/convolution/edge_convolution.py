"""`EdgeConvolution`: the convolution module the models hold, computing with one backend.

The module keeps what every backend shares (irreps, the "uvu" paths with e3nn's path weights,
`weight_numel`) and delegates to `tp`, an instance of the backend class `BACKENDS[backend]`.
Backends hold no weights (the per-edge weights come from the model's radial MLP), so swapping
`tp` (`use_backend`, called by `apply_convolution_backend`) never changes the model's weights,
and a state dict loads into the module whatever backend wrote it.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.convolution.backends import BACKENDS, DEFAULT_BACKEND, check_backend


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


def uvu_paths(
    irreps_node: o3.Irreps,
    irreps_sh: o3.Irreps,
    irreps_out: o3.Irreps,
    instructions: list[tuple[int, int, int, str, bool]],
) -> tuple[list[tuple[int, int, int, float]], int]:
    """(i_in1, i_in2, i_out, path_weight) per instruction and `weight_numel`, as e3nn's
    `TensorProduct` computes them (its normalisation: every backend gets the same numbers)."""
    reference = o3.TensorProduct(
        irreps_node,
        irreps_sh,
        irreps_out,
        instructions=instructions,
        shared_weights=False,
        internal_weights=False,
        compile_left_right=False,  # only the instructions are read: no code generation
    )
    paths = [(ins.i_in1, ins.i_in2, ins.i_out, ins.path_weight) for ins in reference.instructions]
    return paths, reference.weight_numel


class EdgeConvolution(nn.Module):
    """Per-edge tensor product of sender features and edge spherical harmonics.

    forward(node_features [E, irreps_node.dim] (features of the sender of each edge),
            edge_sh [E, irreps_sh.dim], weights [E, weight_numel] (from the radial MLP))
        -> [E, irreps_out.dim]
    aggregate(node_features [N, irreps_node.dim], edge_sh, weights, sender [E], receiver [E],
              num_nodes) -> [N, irreps_out.dim]:  Σ_{e: receiver[e] = n} forward(x[sender])[e],
        the message-passing step of NequIP and MACE (fused in the fast backends).
    aggregate_radial(node_features, edge_sh, hidden [E, h], last_weight [h, weight_numel],
                     sender, receiver, num_nodes): the same with weights = hidden @ last_weight
        (the radial MLP's last layer), computed per edge chunk and group by the fast backends.

    `backend` is a name of `BACKENDS`; the choice never changes the numbers beyond rounding.
    """

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_target: o3.Irreps,
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        super().__init__()
        check_backend(backend)
        self.irreps_node = o3.Irreps(irreps_node)
        self.irreps_sh = o3.Irreps(irreps_sh)
        self.irreps_out, instructions = convolution_irreps(
            self.irreps_node, self.irreps_sh, o3.Irreps(irreps_target)
        )
        self.paths, self.weight_numel = uvu_paths(
            self.irreps_node, self.irreps_sh, self.irreps_out, instructions
        )
        self.backend = backend
        self.tp: nn.Module = BACKENDS[backend](
            self.irreps_node, self.irreps_sh, self.irreps_out, self.paths
        )
        # Backend constants (e3nn's `output_mask`, Wigner-3j buffers) are not model weights:
        # incoming ones are replaced by this backend's own, so any backend loads any checkpoint.
        self.register_load_state_dict_pre_hook(_use_own_backend_constants)

    @torch.jit.unused
    def use_backend(self, backend: str) -> None:
        """Compute with `backend` from now on: a new `tp`, with its constants in the dtype and on
        the device of the current ones, in the same train/eval mode. No weights change."""
        check_backend(backend)
        if backend == self.backend:
            return
        like = _constants(self.tp)
        tp = BACKENDS[backend](self.irreps_node, self.irreps_sh, self.irreps_out, self.paths)
        if like is not None:
            tp = tp.to(device=like.device, dtype=like.dtype)
        self.tp = tp.train(self.training)
        self.backend = backend

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
        """`aggregate` with weights = hidden [E, h] @ last_weight [h, weight_numel]: the radial
        MLP's last layer (`RadialMLP.last_layer`) left to the backend, which may compute the
        weights per edge chunk and per group from the matching columns (fused, so2), so no
        [E, weight_numel] tensor or gradient is formed. With `paired`, the edges are in pair
        order (`equimd.potentials.nn.edge_pairs`) and hidden has one row per pair [P, h]."""
        return self.tp.aggregate_radial(
            node_features, edge_sh, hidden, last_weight, sender, receiver, num_nodes, paired
        )


def _constants(module: nn.Module) -> Tensor | None:
    """A floating-point buffer of `module` (its constants' dtype and device), if it has one."""
    return next((b for b in module.buffers() if b.is_floating_point()), None)


def _use_own_backend_constants(module: EdgeConvolution, state_dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: drop the checkpoint's `tp.*` entries, supply the module's own."""
    for key in [k for k in state_dict if k.startswith(prefix + "tp.")]:
        del state_dict[key]
    for name, value in module.tp.state_dict(prefix=prefix + "tp.").items():
        state_dict[name] = value
