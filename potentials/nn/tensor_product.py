"""The tensor-product core: the edge convolution h_i ⊗ Y(r̂_ij), weighted per edge.

One interface, several backends. `e3nn` is the reference backend; fast backends are tested
against it (equal outputs, equal forces, energy conservation).

Both NequIP and MACE use the same "uvu" convolution: every input channel u of irrep l1 is
coupled with the spherical harmonics Y^l2 into every allowed l3 (no channel mixing), with one
weight per (edge, path, channel) produced by a radial MLP.
"""

from __future__ import annotations

from e3nn import o3
from torch import Tensor, nn


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

    node_features: [E, irreps_node.dim] (features of the sender of each edge)
    edge_sh:       [E, irreps_sh.dim]
    weights:       [E, weight_numel] (from the radial MLP)
    returns        [E, irreps_out.dim]
    """

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_target: o3.Irreps,
        backend: str = "e3nn",
    ) -> None:
        super().__init__()
        if backend != "e3nn":
            raise ValueError(f"unknown tensor-product backend {backend!r}; available: 'e3nn'")
        self.irreps_node = o3.Irreps(irreps_node)
        self.irreps_sh = o3.Irreps(irreps_sh)
        self.irreps_out, instructions = convolution_irreps(
            self.irreps_node, self.irreps_sh, o3.Irreps(irreps_target)
        )
        self.tp = o3.TensorProduct(
            self.irreps_node,
            self.irreps_sh,
            self.irreps_out,
            instructions=instructions,
            shared_weights=False,
            internal_weights=False,
        )
        self.weight_numel = self.tp.weight_numel

    def forward(self, node_features: Tensor, edge_sh: Tensor, weights: Tensor) -> Tensor:
        return self.tp(node_features, edge_sh, weights)
