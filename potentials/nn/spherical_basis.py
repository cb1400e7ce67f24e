"""Radial and angular bases of directional message passing (DimeNet, DimeNet++, GemNet).

Klicpera, Groß, Günnemann, "Directional message passing for molecular graphs", ICLR 2020
(DimeNet), eqs. 7-8 and Appendix; the same bases serve DimeNet++ and GemNet.

    x = d / c                                  d: distance (Å), c: cutoff (Å)
    u(x) = 1/x + a x^(p-1) + b x^p + c' x^(p+1)   for x < 1, else 0        (DimeNet envelope)
        p = exponent + 1, a = -(p+1)(p+2)/2, b = p(p+2), c' = -p(p+1)/2
        (evaluated as (1-x)³ Σ_{k<p} (k+1)(k+2)/2 x^k / x: no cancellation at the cutoff)
    e_RBF,n(d) = u(x) · sin(f_n x),        f_n = n π (trainable)                          (eq. 7)
    a_SBF,ln(d, θ) = u(x) · N_ln j_l(z_ln x) · Y_l0(θ)                                   (eq. 6)
        z_ln: the n-th positive root of the spherical Bessel function j_l,
        N_ln = (½ j_{l+1}(z_ln)²)^(-1/2),  Y_l0(θ) = sqrt((2l+1)/4π) P_l(cos θ).

The spherical Bessel functions are evaluated by upward recurrence
j_{l+1}(x) = (2l+1)/x j_l(x) - j_{l-1}(x) (the closed forms DimeNet uses, in another order);
its cancellation costs relative accuracy where x ≪ l, where j_l itself is tiny.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from equimd.potentials.nn.radial import polynomial_envelope


def spherical_bessel(x: Tensor, num_orders: int) -> Tensor:
    """j_l(x) for l = 0..num_orders-1: x [...] → [..., num_orders] (x > 0)."""
    sin, cos = torch.sin(x), torch.cos(x)
    orders = [sin / x]
    if num_orders > 1:
        orders.append(sin / (x * x) - cos / x)
    for order in range(1, num_orders - 1):
        orders.append((2.0 * order + 1.0) / x * orders[order] - orders[order - 1])
    return torch.stack(orders, dim=-1)


def _spherical_bessel_float(x: float, order: int) -> float:
    """j_order(x) in double precision (construction time)."""
    previous, current = math.sin(x) / x, math.sin(x) / x**2 - math.cos(x) / x
    if order == 0:
        return previous
    for n in range(1, order):
        previous, current = current, (2 * n + 1) / x * current - previous
    return current


def _bisect_root(order: int, lower: float, upper: float) -> float:
    f_lower = _spherical_bessel_float(lower, order)
    for _ in range(200):
        middle = 0.5 * (lower + upper)
        f_middle = _spherical_bessel_float(middle, order)
        if (f_middle < 0) == (f_lower < 0):
            lower, f_lower = middle, f_middle
        else:
            upper = middle
        if upper - lower < 1e-15 * upper:
            break
    return 0.5 * (lower + upper)


def spherical_bessel_roots(num_orders: int, num_roots: int) -> list[list[float]]:
    """z[l][n]: the first `num_roots` positive roots of j_l, l < num_orders.

    The roots of j_l interlace those of j_(l-1) (as in DimeNet's reference), so each is
    bracketed by two consecutive roots of the previous order; j_0's are nπ.
    """
    count = num_roots + num_orders - 1
    brackets = [math.pi * (n + 1) for n in range(count)]
    roots = [brackets[:num_roots]]
    for order in range(1, num_orders):
        count -= 1
        brackets = [_bisect_root(order, brackets[n], brackets[n + 1]) for n in range(count)]
        roots.append(brackets[:num_roots])
    return roots


def legendre_harmonics(cos_theta: Tensor, num_orders: int) -> Tensor:
    """Y_l0(θ) = sqrt((2l+1)/4π) P_l(cos θ), l < num_orders: [T] → [T, num_orders]."""
    legendre = [torch.ones_like(cos_theta)]
    if num_orders > 1:
        legendre.append(cos_theta)
    for order in range(1, num_orders - 1):
        legendre.append(
            ((2.0 * order + 1.0) * cos_theta * legendre[order] - order * legendre[order - 1])
            / (order + 1.0)
        )
    harmonics = [
        math.sqrt((2 * order + 1) / (4 * math.pi)) * legendre[order] for order in range(num_orders)
    ]
    return torch.stack(harmonics, dim=-1)


class PolynomialEnvelope(nn.Module):
    """u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, else 0
    (GemNet's envelope, DimeNet's times x): `equimd.potentials.nn.radial.polynomial_envelope`
    of x = d/c, evaluated in its factored form (no float32 cancellation near the cutoff)."""

    def __init__(self, exponent: int = 5) -> None:
        super().__init__()
        self.exponent = int(exponent)

    def forward(self, x: Tensor) -> Tensor:
        return polynomial_envelope(x, self.exponent)


class DimeNetEnvelope(nn.Module):
    """u(x) = 1/x + a x^(p-1) + b x^p + c x^(p+1) for x = d/c < 1, else 0; p = exponent + 1,
    i.e. `PolynomialEnvelope(p)(x) / x` (evaluated so). It falls to zero at the cutoff with
    p-1 continuous derivatives.
    """

    def __init__(self, exponent: int = 5) -> None:
        super().__init__()
        self.polynomial = PolynomialEnvelope(exponent + 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.polynomial(x) / x


class EnvelopedBesselBasis(nn.Module):
    """e_RBF,n(d) = u(d/c) sin(f_n d/c), f_n = nπ trainable: distances [E] Å → [E, num_radial]."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.envelope = DimeNetEnvelope(envelope_exponent)
        self.freq = nn.Parameter(
            math.pi * torch.arange(1, num_radial + 1, dtype=torch.get_default_dtype())
        )

    def forward(self, distances: Tensor) -> Tensor:
        x = (distances / self.cutoff).unsqueeze(-1)  # [E, 1]
        return self.envelope(x) * torch.sin(self.freq * x)  # [E, num_radial]


class SphericalBasis(nn.Module):
    """a_SBF,ln(d_kj, θ_kji) = u(d/c) N_ln j_l(z_ln d/c) Y_l0(θ), flattened l-major.

    forward(distances [E] Å, cos_theta [T], edge_kj [T]) → [T, num_spherical · num_radial]:
    the radial part is evaluated once per edge and gathered for the triplets.
    """

    def __init__(
        self, num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int = 5
    ) -> None:
        super().__init__()
        self.num_spherical = num_spherical
        self.num_radial = num_radial
        self.cutoff = float(cutoff)
        self.envelope = DimeNetEnvelope(envelope_exponent)
        roots = spherical_bessel_roots(num_spherical, num_radial)
        normalizer = [
            [1.0 / math.sqrt(0.5 * _spherical_bessel_float(z, order + 1) ** 2) for z in row]
            for order, row in enumerate(roots)
        ]
        dtype = torch.get_default_dtype()
        self.register_buffer("roots", torch.tensor(roots, dtype=dtype))  # [L, K]
        self.register_buffer("normalizer", torch.tensor(normalizer, dtype=dtype))  # [L, K]

    def radial(self, distances: Tensor) -> Tensor:
        """u(x) N_ln j_l(z_ln x): [E] → [E, L, K]."""
        x = (distances / self.cutoff).view(-1, 1, 1)  # [E, 1, 1]
        bessel = spherical_bessel(self.roots * x, self.num_spherical)  # [E, L, K, L]
        own_order = torch.diagonal(bessel, dim1=1, dim2=3).transpose(1, 2)  # [E, L, K]
        return self.envelope(x) * self.normalizer * own_order

    def forward(self, distances: Tensor, cos_theta: Tensor, edge_kj: Tensor) -> Tensor:
        radial = self.radial(distances)[edge_kj]  # [T, L, K]
        angular = legendre_harmonics(cos_theta, self.num_spherical)  # [T, L]
        return (radial * angular.unsqueeze(-1)).reshape(-1, self.num_spherical * self.num_radial)
