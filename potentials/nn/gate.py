"""Gated equivariant nonlinearity (Weiler et al. 2018; NequIP eq. 9).

    Gate(x) = (⊕_i φ_i(s_i)) ⊕ (⊕_j φ_j(g_j) · v_j)

s: scalars, g: one gate scalar per gated irrep copy v_j; φ normalised to unit second moment
(e3nn's `normalize2mom`). `FastGate` is `e3nn.nn.Gate` (same irreps, same numbers) in a few
whole-tensor operations: e3nn cuts the input into per-irrep slices and multiplies per path, and
in force training every slice becomes a zero-filled full-width gradient in both backward passes
(~100 autograd nodes per NequIP forward; timed, a NequIP aspirin training step is 4 % faster,
docs/performance.md).
"""

from __future__ import annotations

from typing import Any, List

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import Tensor, nn


def gated_irreps(
    irreps_available: o3.Irreps, irreps_hidden: o3.Irreps
) -> tuple[o3.Irreps, o3.Irreps, o3.Irreps]:
    """Split the target hidden irreps into (scalars, gates, gated) that the layer can produce.

    scalars: l = 0 irreps of `irreps_hidden` reachable from `irreps_available`;
    gated:   l > 0 irreps of `irreps_hidden` reachable from `irreps_available`;
    gates:   one 0e scalar per gated channel (0e if available, else 0o).
    """
    irreps_available = o3.Irreps(irreps_available)
    scalars = o3.Irreps(
        [(mul, ir) for mul, ir in irreps_hidden if ir.l == 0 and ir in irreps_available]
    )
    gated = o3.Irreps(
        [(mul, ir) for mul, ir in irreps_hidden if ir.l > 0 and ir in irreps_available]
    )
    gate_ir = "0e" if o3.Irrep("0e") in irreps_available else "0o"
    gates = o3.Irreps([(mul, gate_ir) for mul, _ in gated])
    return scalars, gates, gated


def equivariant_gate(
    scalars: o3.Irreps, gates: o3.Irreps, gated: o3.Irreps, gate_activation: str = "sigmoid"
) -> FastGate:
    """SiLU on even scalars, tanh on odd scalars; gates through sigmoid (even) / tanh (odd).

    gate_activation: of the even gates, "sigmoid" (the NequIP paper) or "silu" (nequip ≥ 0.7).
    """
    silu = torch.nn.functional.silu
    even_gate = {"sigmoid": torch.sigmoid, "silu": silu}[gate_activation]
    return FastGate(
        e3nn_nn.Gate(
            scalars,
            [silu if ir.p == 1 else torch.tanh for _, ir in scalars],
            gates,
            [even_gate if ir.p == 1 else torch.tanh for _, ir in gates],
            gated,
        )
    )


_ACTIVATIONS = {torch.nn.functional.silu: "silu", torch.tanh: "tanh", torch.sigmoid: "sigmoid"}


def _activation_blocks(activation: e3nn_nn.Activation) -> tuple[list[int], list[str], list[float]]:
    """Widths, function names and normalisation constants of an e3nn `Activation`'s blocks
    (one block where every block has the same function)."""
    widths: list[int] = []
    names: list[str] = []
    constants: list[float] = []
    for (mul, ir), act in zip(activation.irreps_in, activation.acts, strict=True):
        if act is None or ir.l != 0 or act.f not in _ACTIVATIONS:
            raise ValueError(f"FastGate: unsupported activation {act} on {mul}x{ir}")
        widths.append(mul)
        names.append(_ACTIVATIONS[act.f])
        constants.append(1.0 if act._is_id else float(act.cst))
    if len(set(zip(names, constants, strict=True))) == 1:  # one φ: one call, no split
        return [sum(widths)], names[:1], constants[:1]
    return widths, names, constants


def _apply(x: Tensor, name: str, constant: float) -> Tensor:
    if name == "silu":
        y = torch.nn.functional.silu(x)
    elif name == "tanh":
        y = torch.tanh(x)
    else:
        y = torch.sigmoid(x)
    return y if constant == 1.0 else y * constant


def _activate(x: Tensor, widths: List[int], names: List[str], constants: List[float]) -> Tensor:
    """φ_i on consecutive blocks of `x`'s last dimension."""
    if len(widths) == 1:
        return _apply(x, names[0], constants[0])
    blocks = torch.split(x, widths, dim=-1)
    return torch.cat([_apply(b, names[i], constants[i]) for i, b in enumerate(blocks)], dim=-1)


class FastGate(nn.Module):
    """`e3nn.nn.Gate` `gate` as whole-tensor operations (TorchScript-able):

        [s | g | v] = x[:, order]                       one gather into e3nn's cut order
        out = [φ(s) | v · φ(g)[:, gate_of_component]]   one gather expands the gates

    `irreps_in`/`irreps_out`/`irreps_scalars`/`irreps_gates`/`irreps_gated` are the gate's;
    state dicts of models saved with the e3nn gate
    (its empty `mul.*` buffers) load."""

    def __init__(self, gate: e3nn_nn.Gate) -> None:
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(gate.irreps_in), o3.Irreps(gate.irreps_out)
        self.irreps_scalars, self.irreps_gates, self.irreps_gated = (
            gate.irreps_scalars, gate.irreps_gates, gate.irreps_gated
        )
        with torch.no_grad():  # where e3nn's cut takes each piece from: cut the indices themselves
            index = torch.arange(self.irreps_in.dim, dtype=torch.float64).unsqueeze(0)
            pieces = gate.sc(index)
        order = torch.cat([p.reshape(-1) for p in pieces]).round().long()
        self.register_buffer("order", order, persistent=False)
        self.identity_order = bool(torch.equal(order, torch.arange(self.irreps_in.dim)))
        self.widths = [int(p.shape[-1]) for p in pieces]  # scalars, gates, gated
        self.scalar_widths, self.scalar_names, self.scalar_constants = _activation_blocks(gate.act_scalars)
        self.gate_widths, self.gate_names, self.gate_constants = (
            _activation_blocks(gate.act_gates) if self.widths[1] else ([0], ["sigmoid"], [1.0])
        )
        # gated irrep copy j (its 2l+1 components) is scaled by gate scalar j
        dims = [ir.dim for mul, ir in gate.irreps_gated for _ in range(mul)]
        gate_of_component = torch.repeat_interleave(torch.arange(len(dims)), torch.tensor(dims, dtype=torch.long))
        self.register_buffer("gate_of_component", gate_of_component, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.identity_order:
            x = x.index_select(-1, self.order)
        scalars, gates, gated = torch.split(x, self.widths, dim=-1)  # [N, S], [N, G], [N, D]
        scalars = _activate(scalars, self.scalar_widths, self.scalar_names, self.scalar_constants)
        if self.widths[1] == 0:
            return scalars
        gates = _activate(gates, self.gate_widths, self.gate_names, self.gate_constants)
        gated = gated * gates.index_select(-1, self.gate_of_component)  # [N, D]
        return torch.cat([scalars, gated], dim=-1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for key in ("mul.weight", "mul.output_mask"):  # e3nn's gate's buffers (no weights)
            state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(state_dict, prefix, *args)
