"""Radial features of an edge: Bessel basis × polynomial cutoff envelope, and the radial MLP."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from e3nn import math as e3nn_math
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


class _RadialLayer(nn.Module):
    """x ↦ act(x @ (W · scale)): one layer of `RadialMLP` (W as e3nn stores it, [h_in, h_out])."""

    def __init__(self, h_in: int, h_out: int, scale: float, act: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(h_in, h_out))
        self.scale = float(scale)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = torch.mm(x, self.weight * self.scale)  # [E, h_out]
        return torch.nn.functional.silu(x) if self.act else x


class RadialMLP(nn.Sequential):
    """e3nn's `FullyConnectedNet(hs, silu)` (NequIP, MACE), the same function and parameters
    (`layer0.weight`, ... as e3nn names them), computed with fewer passes over [E, h] tensors.

    e3nn: h_{k+1} = c · silu(h_k @ W_k / √fan_in_k) between layers (c normalises SiLU to unit
    second moment, e3nn's `normalize2mom`), the output h_L @ W_L / √fan_in_L, no biases. Here c is
    folded into the next layer's weights, W_{k+1} · c / √fan_in_{k+1}, a [h, h'] product, instead
    of multiplying every [E, h] activation by c (and by e3nn's var_out^½ = 1) in the forward and
    backward passes: 4 fewer element-wise passes per hidden layer.
    """

    def __init__(self, hs: list[int]) -> None:
        super().__init__()
        self.hs = list(hs)
        cst = e3nn_math.normalize2mom(torch.nn.functional.silu).cst
        self.activation_cst = float(cst)  # c: e3nn's SiLU normalisation
        last = len(self.hs) - 2
        self.depth = last + 1  # number of layers
        for k, (h_in, h_out) in enumerate(zip(self.hs, self.hs[1:], strict=False)):
            scale = (cst if k > 0 else 1.0) / math.sqrt(h_in)
            setattr(self, f"layer{k}", _RadialLayer(h_in, h_out, scale, act=k < last))

    @torch.jit.export
    def last_layer(self, x: Tensor, factor: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """(hidden [E, h], weight [h, width]) with forward(x) · factor = hidden @ weight: the
        last hidden activations times `factor` [E, 1] if given (e.g. a cutoff envelope: the
        same numbers, the last layer being linear, for a smaller product) and the last layer's
        scaled weight matrix. For `EdgeConvolution.aggregate_radial`, which forms the [E, width]
        product per edge chunk and per group instead of at once."""
        weight = x.new_zeros(0)
        for k, layer in enumerate(self):
            if k + 1 < self.depth:
                x = layer(x)  # [E, h]
            else:
                weight = layer.weight * layer.scale  # [h, width]
        if factor is not None:
            x = x * factor  # [E, h]
        return x, weight


def radial_mlp(num_basis: int, hidden: list[int], num_weights: int) -> nn.Module:
    """num_basis → hidden... → num_weights: x @ W / sqrt(fan_in), SiLU normalised to unit
    second moment between layers, no biases (NequIP/MACE; e3nn's FullyConnectedNet)."""
    return RadialMLP([num_basis, *hidden, num_weights])
