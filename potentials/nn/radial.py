"""Radial features of an edge: Bessel basis × polynomial cutoff envelope, and the radial MLP."""

from __future__ import annotations

import math

import torch
from e3nn import nn as e3nn_nn
from torch import Tensor, nn


class BesselBasis(nn.Module):
    """b_n(r) = sqrt(2 / r_max) · sin(n π r / r_max) / r,  n = 1..num_basis.

    r: [E, 1] Å → [E, num_basis]. Frequencies n π / r_max are a parameter if `trainable`
    (NequIP's default) and a buffer otherwise (MACE).
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        frequencies = math.pi / r_max * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.bessel_weights = nn.Parameter(frequencies)
        else:
            self.register_buffer("bessel_weights", frequencies)
        self.register_buffer("prefactor", torch.tensor(math.sqrt(2.0 / r_max)))
        self.r_max = float(r_max)
        self.num_basis = num_basis

    def forward(self, r: Tensor) -> Tensor:
        return self.prefactor * torch.sin(self.bessel_weights * r) / r


def polynomial_envelope(x: Tensor, p: int) -> Tensor:
    """f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, else 0.

    Evaluated in the factored form (1 - x)³ Σ_{k<p} (k+1)(k+2)/2 x^k (Horner), which has no
    cancellation near x = 1: the expanded form sums terms of size ~p³ to ~0 there and loses
    about three digits of its derivative in float32 (seen in float32 forces).
    """
    series = torch.full_like(x, (p * (p + 1)) / 2.0)
    for k in range(p - 2, -1, -1):
        series = series * x + ((k + 1) * (k + 2)) / 2.0
    one_minus = 1.0 - x
    return one_minus * one_minus * one_minus * series * (x < 1.0).to(x.dtype)


class PolynomialCutoff(nn.Module):
    """Smooth envelope f(r / r_max) of `polynomial_envelope` (Klicpera et al., DimeNet eq. 8):
    goes to zero at r_max with p - 1 continuous derivatives."""

    def __init__(self, r_max: float, p: int = 6) -> None:
        super().__init__()
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: Tensor) -> Tensor:
        return polynomial_envelope(r / self.r_max, self.p)


class RadialEmbedding(nn.Module):
    """Edge lengths [E, 1] Å → Bessel(r) · envelope(r), [E, num_bessel]."""

    def __init__(
        self, r_max: float, num_bessel: int = 8, polynomial_p: int = 6, trainable: bool = False
    ) -> None:
        super().__init__()
        self.bessel_fn = BesselBasis(r_max, num_bessel, trainable=trainable)
        self.cutoff_fn = PolynomialCutoff(r_max, polynomial_p)
        self.out_dim = num_bessel

    def forward(self, edge_lengths: Tensor) -> Tensor:
        return self.bessel_fn(edge_lengths) * self.cutoff_fn(edge_lengths)


def radial_mlp(num_basis: int, hidden: list[int], num_weights: int) -> nn.Module:
    """e3nn FullyConnectedNet num_basis → hidden... → num_weights: x @ W / sqrt(fan_in),
    SiLU normalised to unit second moment between layers, no biases (NequIP/MACE)."""
    return e3nn_nn.FullyConnectedNet([num_basis, *hidden, num_weights], torch.nn.functional.silu)
