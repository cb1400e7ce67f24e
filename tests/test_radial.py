"""The polynomial cutoff envelope: the factored form equals the paper's polynomial and keeps
its derivative accurate in float32 near the cutoff (where forces come from). The radial MLP:
e3nn's FullyConnectedNet with its normalisation folded into the weights, same function."""

from __future__ import annotations

import pytest
import torch

from equimd.potentials.nn.radial import PolynomialCutoff, polynomial_envelope, radial_mlp


def expanded(x: torch.Tensor, p: int) -> torch.Tensor:
    return (1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1)
            - p * (p + 1) / 2 * x ** (p + 2)) * (x < 1)


@pytest.mark.parametrize("p", [1, 2, 5, 6, 9])
def test_factored_form_is_the_polynomial_and_vanishes_smoothly(p):
    x = torch.linspace(0.0, 1.3, 2001, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(polynomial_envelope(x, p), expanded(x, p), rtol=0, atol=1e-13)
    assert polynomial_envelope(torch.tensor([0.0, 1.0, 1.5], dtype=torch.float64), p).tolist() == [1.0, 0.0, 0.0]
    near = torch.tensor([1.0 - 1e-5], dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(polynomial_envelope(near, p).sum(), near)
    assert abs(float(slope)) < 1e-6  # f' ~ (1 - x)²: no kink at the cutoff


def test_float32_derivative_near_the_cutoff_keeps_its_digits():
    """x in (0.9, 1): the float32 derivative of the factored form is within 1e-5 (relative to
    its largest value) of the float64 one; the expanded form is not (the reason for it)."""
    x64 = torch.linspace(0.9, 0.9999, 500, dtype=torch.float64, requires_grad=True)
    x32 = x64.detach().float().requires_grad_()
    (reference,) = torch.autograd.grad(polynomial_envelope(x64, 6).sum(), x64)
    (factored,) = torch.autograd.grad(polynomial_envelope(x32, 6).sum(), x32)
    (plain,) = torch.autograd.grad(expanded(x32, 6).sum(), x32)
    scale = float(reference.abs().max())
    assert float((factored.double() - reference).abs().max()) < 1e-5 * scale
    assert float((plain.double() - reference).abs().max()) > float((factored.double() - reference).abs().max())


def test_cutoff_module_scripts():
    cutoff = torch.jit.script(PolynomialCutoff(5.0, 6))
    r = torch.tensor([0.0, 2.5, 4.99, 5.0, 6.0], dtype=torch.float64)
    torch.testing.assert_close(cutoff(r), expanded(r / 5.0, 6), rtol=0, atol=1e-14)


@pytest.mark.parametrize("hs", [[8, 64, 64, 64, 512], [8, 16, 4], [6, 1]])
def test_radial_mlp_is_e3nn_fully_connected_net(hs):
    """Same state-dict keys and shapes as e3nn's FullyConnectedNet (checkpoints and mace-torch
    weights load unchanged), same values and gradients (input and weights) from its weights,
    also scripted."""
    from e3nn import nn as e3nn_nn

    torch.manual_seed(0)
    reference = e3nn_nn.FullyConnectedNet(hs, torch.nn.functional.silu).double()
    ours = radial_mlp(hs[0], hs[1:-1], hs[-1]).double()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    ours.load_state_dict(reference.state_dict())
    assert ours.hs == reference.hs
    x = torch.randn(50, hs[0], dtype=torch.float64, requires_grad=True)
    for module in (ours, torch.jit.script(ours)):
        out, out_ref = module(x), reference(x)
        torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-12)
        probe = torch.randn_like(out)
        grads = torch.autograd.grad((out * probe).sum(), [x, *module.parameters()])
        grads_ref = torch.autograd.grad((out_ref * probe).sum(), [x, *reference.parameters()])
        for g, g_ref in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-11)
