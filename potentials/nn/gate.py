"""Gated equivariant nonlinearity (Weiler et al. 2018; NequIP eq. 9)."""

from __future__ import annotations

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3


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
) -> e3nn_nn.Gate:
    """SiLU on even scalars, tanh on odd scalars; gates through sigmoid (even) / tanh (odd).

    gate_activation: of the even gates, "sigmoid" (the NequIP paper) or "silu" (nequip ≥ 0.7).
    """
    silu = torch.nn.functional.silu
    even_gate = {"sigmoid": torch.sigmoid, "silu": silu}[gate_activation]
    return e3nn_nn.Gate(
        scalars,
        [silu if ir.p == 1 else torch.tanh for _, ir in scalars],
        gates,
        [even_gate if ir.p == 1 else torch.tanh for _, ir in gates],
        gated,
    )
