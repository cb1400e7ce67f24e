"""MACE's radial options: basis functions, distance transforms and the ZBL pair repulsion.

Edge lengths r [E, 1] Å → radial features [E, num_basis] and envelope [E, 1]:

    features = basis(T(r)) (· envelope(r) when apply_cutoff),  envelope = f_cut(r / r_max)

with basis Bessel (eq. 7 of the MACE paper), Gaussian or Chebyshev, and T an optional
element-dependent distance transform (Agnesi, from ACEpotentials.jl, JCP 2023; or a tanh "soft"
clamp). The constants (covalent radii, transform and ZBL coefficients) are buffers, so an
imported model keeps the values of the file it came from. Names and conventions follow mace-torch 0.3.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from equimd.potentials.nn.radial import BesselBasis, PolynomialCutoff

RADIAL_TYPES = ("bessel", "gaussian", "chebyshev")
DISTANCE_TRANSFORMS = (None, "Agnesi", "Soft")


def _covalent_radii() -> Tensor:
    from ase.data import covalent_radii

    return torch.tensor(covalent_radii, dtype=torch.get_default_dtype())


class GaussianBasis(nn.Module):
    """g_k(r) = exp(-(r - μ_k)² / (2 σ²)), μ_k evenly spaced on [0, r_max], σ = r_max/(n-1)."""

    def __init__(self, r_max: float, num_basis: int = 8) -> None:
        super().__init__()
        centers = torch.linspace(0.0, r_max, num_basis, dtype=torch.get_default_dtype())
        self.register_buffer("gaussian_weights", centers)
        self.coeff = -0.5 / (r_max / (num_basis - 1)) ** 2

    def forward(self, r: Tensor) -> Tensor:  # [E, 1] → [E, num_basis]
        return torch.exp(self.coeff * torch.pow(r - self.gaussian_weights, 2))


class ChebyshevBasis(nn.Module):
    """T_n(r), n = 1..num_basis: Chebyshev polynomials of the first kind of the edge length in Å
    (mace's `ChebychevBasis`; the length is not scaled by r_max, so T_n grows like (2r)^n/2).

    Evaluated with the three-term recursion T_{n+1} = 2r T_n - T_{n-1} (T_0 = 1, T_1 = r), which
    autograd differentiates: forces include dT_n/dr. mace-torch evaluates the same values with
    `torch.special.chebyshev_polynomial_t` (the same recursion for |r| >= 1 and for n <= 6,
    cos(n arccos r) for n > 6 and |r| < 1: equal to rounding), which has no derivative, so
    mace's forces and stress leave that term out (they are not -dE/dr).
    """

    def __init__(self, r_max: float, num_basis: int = 8) -> None:
        super().__init__()
        self.num_basis = int(num_basis)

    def forward(self, r: Tensor) -> Tensor:  # [E, 1] → [E, num_basis]
        previous = torch.ones_like(r)
        current = r
        values = [current]
        for _ in range(self.num_basis - 1):
            previous, current = current, 2 * r * current - previous
            values.append(current)
        return torch.cat(values, dim=-1)


class AgnesiTransform(nn.Module):
    """T(r) = 1 / (1 + a (r/r₀)^q / (1 + (r/r₀)^(q-p))), r₀ = (R_cov(z_i) + R_cov(z_j)) / 2."""

    def __init__(self, q: float = 0.9183, p: float = 4.5791, a: float = 1.0805) -> None:
        super().__init__()
        dtype = torch.get_default_dtype()
        self.register_buffer("q", torch.tensor(q, dtype=dtype))
        self.register_buffer("p", torch.tensor(p, dtype=dtype))
        self.register_buffer("a", torch.tensor(a, dtype=dtype))
        self.register_buffer("covalent_radii", _covalent_radii())

    def forward(self, r: Tensor, z_sender: Tensor, z_receiver: Tensor) -> Tensor:
        r_0 = 0.5 * (self.covalent_radii[z_sender] + self.covalent_radii[z_receiver])
        x = r / r_0.unsqueeze(-1)
        return (
            1 + (self.a * torch.pow(x, self.q) / (1 + torch.pow(x, self.q - self.p)))
        ).reciprocal()


class SoftTransform(nn.Module):
    """T(r) = p₀ + (r - p₀) · ½(1 + tanh(α (r - m))): ≈ p₀ below p₀ = ¾ r₀, ≈ r above p₁ = 4/3 r₀;
    r₀ = R_cov(z_i) + R_cov(z_j), m = (p₀ + p₁)/2, α = alpha / (p₁ - p₀)."""

    def __init__(self, alpha: float = 4.0) -> None:
        super().__init__()
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.get_default_dtype()))
        self.register_buffer("covalent_radii", _covalent_radii())

    def forward(self, r: Tensor, z_sender: Tensor, z_receiver: Tensor) -> Tensor:
        r_0 = (self.covalent_radii[z_sender] + self.covalent_radii[z_receiver]).unsqueeze(-1)
        p_0 = (3 / 4) * r_0
        p_1 = (4 / 3) * r_0
        middle = 0.5 * (p_0 + p_1)
        alpha = self.alpha / (p_1 - p_0)
        switch = 0.5 * (1.0 + torch.tanh(alpha * (r - middle)))
        return p_0 + (r - p_0) * switch


class MaceRadialEmbedding(nn.Module):
    """Edge lengths [E, 1] Å → (radial features [E, num_basis], envelope [E, 1]).

    radial_type: "bessel" | "gaussian" | "chebyshev"; distance_transform: None | "Agnesi" |
    "Soft" (applied to the basis argument only; the envelope sees the true length). With
    apply_cutoff the envelope is multiplied into the features (mace's default); otherwise it is
    returned for the interaction to multiply into the convolution weights.
    """

    def __init__(
        self,
        r_max: float,
        num_basis: int = 8,
        polynomial_p: int = 5,
        radial_type: str = "bessel",
        distance_transform: Optional[str] = None,
        apply_cutoff: bool = True,
    ) -> None:
        super().__init__()
        if radial_type not in RADIAL_TYPES:
            raise ValueError(f"radial_type={radial_type!r}; available: {list(RADIAL_TYPES)}")
        if distance_transform not in DISTANCE_TRANSFORMS:
            raise ValueError(
                f"distance_transform={distance_transform!r}; available: {list(DISTANCE_TRANSFORMS)}"
            )
        bases = {"bessel": BesselBasis, "gaussian": GaussianBasis, "chebyshev": ChebyshevBasis}
        self.bessel_fn = bases[radial_type](r_max, num_basis)
        self.cutoff_fn = PolynomialCutoff(r_max, polynomial_p)
        self.distance_transform: Optional[nn.Module] = None
        if distance_transform == "Agnesi":
            self.distance_transform = AgnesiTransform()
        elif distance_transform == "Soft":
            self.distance_transform = SoftTransform()
        self.apply_cutoff = bool(apply_cutoff)
        self.out_dim = num_basis

    def forward(
        self, lengths: Tensor, z_sender: Tensor, z_receiver: Tensor
    ) -> tuple[Tensor, Tensor]:
        envelope = self.cutoff_fn(lengths)  # [E, 1]
        argument = lengths
        transform = self.distance_transform
        if transform is not None:
            argument = transform(lengths, z_sender, z_receiver)
        radial = self.bessel_fn(argument)  # [E, num_basis]
        if self.apply_cutoff:
            radial = radial * envelope
        return radial, envelope


class ZBLRepulsion(nn.Module):
    """Ziegler-Biersack-Littmark screened nuclear repulsion per atom (eV), mace's `ZBLBasis`:

    V_ij = 14.3996 Z_i Z_j / r · Σ_k c_k exp(-d_k r / a_ij),  a_ij = 0.4543 · 0.529 / (Z_i^0.3 +
    Z_j^0.3) Å, times a polynomial envelope (order p) vanishing at R_cov(z_i) + R_cov(z_j);
    E_i = ½ Σ_j V_ij over the edges received by i.
    """

    def __init__(self, p: int = 6) -> None:
        super().__init__()
        dtype = torch.get_default_dtype()
        self.register_buffer("c", torch.tensor([0.1818, 0.5099, 0.2802, 0.02817], dtype=dtype))
        self.register_buffer("p", torch.tensor(p, dtype=torch.int32))
        self.register_buffer("covalent_radii", _covalent_radii())
        self.register_buffer("a_exp", torch.tensor(0.300, dtype=dtype))
        self.register_buffer("a_prefactor", torch.tensor(0.4543, dtype=dtype))

    def forward(
        self,
        lengths: Tensor,
        z_sender: Tensor,
        z_receiver: Tensor,
        receiver: Tensor,
        num_atoms: int,
    ) -> Tensor:  # lengths [E, 1] Å → [N] eV
        z_u = z_sender.unsqueeze(-1)
        z_v = z_receiver.unsqueeze(-1)
        a = self.a_prefactor * 0.529 / (torch.pow(z_u, self.a_exp) + torch.pow(z_v, self.a_exp))
        r_over_a = lengths / a
        phi = (
            self.c[0] * torch.exp(-3.2 * r_over_a)
            + self.c[1] * torch.exp(-0.9423 * r_over_a)
            + self.c[2] * torch.exp(-0.4028 * r_over_a)
            + self.c[3] * torch.exp(-0.2016 * r_over_a)
        )
        v_edges = (14.3996 * z_u * z_v) / lengths * phi
        r_max = self.covalent_radii[z_u] + self.covalent_radii[z_v]
        p = self.p.to(lengths.dtype)
        x = lengths / r_max
        envelope = (
            1.0
            - ((p + 1.0) * (p + 2.0) / 2.0) * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1)
            - (p * (p + 1.0) / 2) * torch.pow(x, p + 2)
        ) * (lengths < r_max)
        v_edges = 0.5 * v_edges * envelope
        energy = torch.zeros(num_atoms, 1, dtype=lengths.dtype, device=lengths.device)
        return energy.index_add(0, receiver, v_edges).squeeze(-1)
