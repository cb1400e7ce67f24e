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


class PolynomialCutoff(nn.Module):
    """Smooth envelope f(x), x = r / r_max (Klicpera et al., DimeNet eq. 8):

    f = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, else 0.
    Goes to zero at r_max with p - 1 continuous derivatives.
    """

    def __init__(self, r_max: float, p: int = 6) -> None:
        super().__init__()
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: Tensor) -> Tensor:
        p = float(self.p)
        x = r / self.r_max
        envelope = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - p * (p + 1.0) / 2.0 * torch.pow(x, p + 2.0)
        )
        return envelope * (x < 1.0).to(r.dtype)


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
