"""`FastGate` is e3nn's `Gate` (potentials/nn/gate.py): same irreps, same values, same first
and second derivatives (force training differentiates twice), TorchScript-able, and it loads
state dicts written with the e3nn gate."""

from __future__ import annotations

import pytest
import torch
from e3nn import nn as e3nn_nn
from e3nn import o3

from equimd.potentials.nn.gate import FastGate, equivariant_gate, gated_irreps

SILU = torch.nn.functional.silu

CASES = [  # (irreps available, hidden irreps, even gate activation)
    ("0e+1o+2e+0o+1e+2o", "8x0e+8x0o+4x1o+4x1e+2x2e+2x2o", "sigmoid"),  # both parities: tanh on 0o
    ("0e+1o+2e", "16x0e+8x1o+4x2e", "silu"),  # nequip >= 0.7's gate
    ("0o+1o", "8x0o+4x1o", "sigmoid"),  # no 0e: odd gates through tanh
    ("0e", "8x0e", "sigmoid"),  # scalars only
]


def e3nn_gate(available: str, hidden: str, activation: str) -> e3nn_nn.Gate:
    scalars, gates, gated = gated_irreps(o3.Irreps(available), o3.Irreps(hidden))
    even_gate = {"sigmoid": torch.sigmoid, "silu": SILU}[activation]
    return e3nn_nn.Gate(
        scalars, [SILU if ir.p == 1 else torch.tanh for _, ir in scalars],
        gates, [even_gate if ir.p == 1 else torch.tanh for _, ir in gates], gated,
    )  # fmt: skip


@pytest.mark.parametrize("available, hidden, activation", CASES)
def test_fast_gate_equals_e3nn_gate_with_first_and_second_derivatives(available, hidden, activation):
    reference = e3nn_gate(available, hidden, activation)
    scalars, gates, gated = gated_irreps(o3.Irreps(available), o3.Irreps(hidden))
    fast = equivariant_gate(scalars, gates, gated, activation)
    assert (fast.irreps_in, fast.irreps_out) == (reference.irreps_in, reference.irreps_out)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(11, reference.irreps_in.dim, dtype=torch.float64, generator=generator)
    probe = torch.randn(11, reference.irreps_out.dim, dtype=torch.float64, generator=generator)
    results = []
    for gate in (reference, fast, torch.jit.script(fast)):
        inputs = x.clone().requires_grad_(True)
        out = gate(inputs)
        (grad,) = torch.autograd.grad((out * probe).sum(), inputs, create_graph=True)
        (second,) = torch.autograd.grad((grad * grad).sum(), inputs)  # the double backward of training
        results.append((out.detach(), grad.detach(), second))
    for got in results[1:]:
        for expected, value in zip(results[0], got, strict=True):
            torch.testing.assert_close(value, expected, rtol=1e-13, atol=1e-13)


def test_a_gate_is_equivariant_under_rotation_and_parity():
    scalars, gates, gated = gated_irreps(o3.Irreps(CASES[0][0]), o3.Irreps(CASES[0][1]))
    gate = equivariant_gate(scalars, gates, gated).double()
    rotation = o3.rand_matrix(dtype=torch.float64) * -1.0  # a rotation times the inversion
    x = torch.randn(5, gate.irreps_in.dim, dtype=torch.float64)
    d_in = gate.irreps_in.D_from_matrix(rotation)
    d_out = gate.irreps_out.D_from_matrix(rotation)
    torch.testing.assert_close(gate(x @ d_in.T), gate(x) @ d_out.T, rtol=1e-12, atol=1e-12)


def test_state_dicts_of_models_saved_with_the_e3nn_gate_load():
    reference = e3nn_gate(*CASES[1])
    old = {f"layer.gate.{key}": value for key, value in reference.state_dict().items()}
    assert old  # e3nn's gate keeps (empty) buffers of its product, which old checkpoints hold
    holder = torch.nn.Module()
    holder.layer = torch.nn.Module()
    holder.layer.gate = FastGate(reference)
    holder.load_state_dict(old)  # strict: nothing unexpected, nothing missing
