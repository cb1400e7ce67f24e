"""Steerable MLP layers (SEGNN; Brandstetter et al., ICLR 2022, section 3).

A steerable linear layer conditioned on a steerable attribute a (spherical harmonics of an
edge, or their neighbourhood average on a node) is the Clebsch-Gordan tensor product

    W_a h = Σ_paths  w_path · CG(h^(l1) ⊗ a^(l2) → l_out)   (+ b on the scalar outputs)     (eq. 6-7)

with one learnable weight per (input channel, attribute channel, output channel) and path;
a layer without an attribute takes a = 1 (0e), i.e. an ordinary equivariant linear layer. The
non-linearity is the gated one (eq. 9): SiLU on the scalars, sigmoid gates on every l > 0 channel.

    SteerableLinear:      h ↦ W_a h + b
    SteerableGatedLinear: h ↦ Gate(W_a h + b)

Parameterisation: e3nn's `FullyConnectedTensorProduct` (weights N(0, 1), each output divided
by √fan_in); SEGNN's reference code divides the e3nn output by that same 1/√fan_in and draws
its weights from U(±1/√fan_in) instead: the same function class and initial scale, weights
differing by the factor √fan_in.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.gate import equivariant_gate, gated_irreps


def weight_balanced_irreps(hidden_features: int, irreps_attr: o3.Irreps, lmax_h: int) -> o3.Irreps:
    """n × (0e + 1o + 2e + ... up to lmax_h): the smallest n for which the steerable linear
    layer hidden ⊗ attr → hidden has at least as many weights as a linear layer of
    `hidden_features` scalars (SEGNN's "weightbalanced" subspace type).

    With attributes of multiplicity one, that layer has n² weights per CG path, so
    n = ⌈hidden_features / √paths⌉.
    """
    irreps_attr = o3.Irreps(irreps_attr)
    harmonics = o3.Irreps.spherical_harmonics(lmax_h)
    types = {ir for _, ir in harmonics}
    paths = sum(
        1
        for _, ir_in in harmonics
        for mul_attr, ir_attr in irreps_attr
        for ir_out in ir_in * ir_attr
        if ir_out in types
        for _ in range(mul_attr)
    )
    copies = max(1, math.ceil(hidden_features / math.sqrt(paths) - 1e-9))
    return (harmonics * copies).sort().irreps.simplify()


def reachable_irreps(irreps_in: o3.Irreps, irreps_attr: o3.Irreps) -> o3.Irreps:
    """One copy of every irrep that irreps_in ⊗ irreps_attr contains."""
    return (
        o3.Irreps(
            [
                (1, ir)
                for _, a in o3.Irreps(irreps_in)
                for _, b in o3.Irreps(irreps_attr)
                for ir in a * b
            ]
        )
        .sort()
        .irreps.simplify()
    )


class SteerableLinear(nn.Module):
    """features [N, irreps_in.dim], attributes [N, irreps_attr.dim] → [N, irreps_out.dim]:
    the CG tensor product with the attributes plus a bias on every scalar (0e) output channel.

    irreps_out must be reachable from irreps_in ⊗ irreps_attr (an output without a path would
    be a constant and is refused).
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_attr: o3.Irreps, irreps_out: o3.Irreps) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_attr = o3.Irreps(irreps_attr)
        self.irreps_out = o3.Irreps(irreps_out)
        reachable = reachable_irreps(self.irreps_in, self.irreps_attr)
        unreachable = [str(ir) for _, ir in self.irreps_out if ir not in reachable]
        if unreachable:
            raise ValueError(
                f"SteerableLinear: {self.irreps_out} has irreps {unreachable} that "
                f"{self.irreps_in} ⊗ {self.irreps_attr} cannot produce"
            )
        self.tensor_product = o3.FullyConnectedTensorProduct(
            self.irreps_in, self.irreps_attr, self.irreps_out, shared_weights=True
        )
        # scalar output columns: bias [B] @ bias_projection [B, dim] puts one bias on each
        bias_columns = [
            column
            for (mul, ir), block in zip(self.irreps_out, self.irreps_out.slices(), strict=True)
            if ir == o3.Irrep("0e")
            for column in range(block.start, block.stop)
        ]
        projection = torch.zeros(len(bias_columns), self.irreps_out.dim)
        projection[
            torch.arange(len(bias_columns)), torch.tensor(bias_columns, dtype=torch.long)
        ] = 1.0
        self.register_buffer("bias_projection", projection, persistent=False)
        self.bias = nn.Parameter(torch.zeros(len(bias_columns)))

    def forward(self, features: Tensor, attributes: Tensor) -> Tensor:
        out = self.tensor_product(features, attributes)  # [N, irreps_out.dim]
        return out + torch.mm(self.bias.unsqueeze(0), self.bias_projection)


class SteerableGatedLinear(nn.Module):
    """Gate(W_a h + b): features [N, irreps_in.dim], attributes [N, irreps_attr.dim] →
    [N, irreps_out.dim]. SiLU on even and tanh on odd scalars, a sigmoid gate (an extra 0e
    output of the tensor product) per l > 0 channel (`equimd.potentials.nn.gate`)."""

    def __init__(self, irreps_in: o3.Irreps, irreps_attr: o3.Irreps, irreps_out: o3.Irreps) -> None:
        super().__init__()
        scalars, gates, gated = gated_irreps(reachable_irreps(irreps_in, irreps_attr), irreps_out)
        self.gate = equivariant_gate(scalars, gates, gated, "sigmoid")
        if o3.Irreps(self.gate.irreps_out) != o3.Irreps(irreps_out):
            raise ValueError(
                f"SteerableGatedLinear: {irreps_in} ⊗ {irreps_attr} cannot produce {irreps_out} "
                f"(only {self.gate.irreps_out}); give irreps_out in sorted order"
            )
        self.linear = SteerableLinear(irreps_in, irreps_attr, self.gate.irreps_in)
        self.irreps_in = self.linear.irreps_in
        self.irreps_attr = self.linear.irreps_attr
        self.irreps_out = o3.Irreps(self.gate.irreps_out)

    def forward(self, features: Tensor, attributes: Tensor) -> Tensor:
        return self.gate(self.linear(features, attributes))
