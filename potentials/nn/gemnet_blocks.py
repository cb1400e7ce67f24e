"""Layers of GemNet (Gasteiger, Becker, Günnemann, NeurIPS 2021), named as in fairchem's
`fairchem.core.models.gemnet.layers`: dense layers with He-orthogonal weights and a scaled
SiLU, residual layers averaged with 1/√2, the radial bases of a distance, the edge
embedding from two atom embeddings, and the atom update (also the output block's trunk).

Every sum of messages is multiplied by a `scale_factor` buffer (fairchem's ScaleFactor,
fitted on data by its scale-fitting script; 1 = no scaling).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from equimd.potentials.nn.orthogonal_init import he_orthogonal
from equimd.potentials.nn.scatter import scatter_sum
from equimd.potentials.nn.spherical_basis import PolynomialEnvelope


class ScaledSiLU(nn.Module):
    """SiLU(x) / 0.6: unit second moment for standard-normal inputs (GemNet's 'swish')."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.silu(x) * (1.0 / 0.6)


class Dense(nn.Module):
    """x W^T (no bias by default) followed by ScaledSiLU if `activation`; He-orthogonal W."""

    def __init__(self, in_features: int, out_features: int, activation: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        he_orthogonal(self.linear.weight)
        self.activation = ScaledSiLU() if activation else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.linear(x))


class ResidualLayer(nn.Module):
    """(x + Dense(Dense(x))) / √2: [*, units] → [*, units]."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.dense_mlp = nn.Sequential(Dense(units, units), Dense(units, units))

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.dense_mlp(x)) * (1.0 / math.sqrt(2.0))


class ScaleFactor(nn.Module):
    """x · s with a fitted constant s (a buffer; 1 until fitted)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale_factor", torch.tensor(1.0, dtype=torch.get_default_dtype()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale_factor


class GaussianSmearing(nn.Module):
    """exp(-(x - μ_k)² / (2 Δ²)), μ_k evenly spaced on [start, stop], Δ their spacing."""

    def __init__(self, start: float, stop: float, num_gaussians: int) -> None:
        super().__init__()
        offset = torch.linspace(start, stop, num_gaussians, dtype=torch.get_default_dtype())
        self.register_buffer("offset", offset)
        self.coeff = -0.5 / ((stop - start) / (num_gaussians - 1)) ** 2

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(self.coeff * (x.unsqueeze(-1) - self.offset) ** 2)


class SphericalBesselRadial(nn.Module):
    """sqrt(2 / c³) sin(f_n x) / x, x = d / c, f_n = nπ trainable (GemNet's 'spherical_bessel')."""

    def __init__(self, num_radial: int, cutoff: float) -> None:
        super().__init__()
        self.norm_const = math.sqrt(2.0 / cutoff**3)
        self.frequencies = nn.Parameter(
            math.pi * torch.arange(1, num_radial + 1, dtype=torch.get_default_dtype())
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.unsqueeze(-1)
        return self.norm_const / x * torch.sin(self.frequencies * x)


class RadialBasis(nn.Module):
    """u(d/c) · rbf(d/c): distances [E] Å → [E, num_radial]; u the polynomial envelope
    (`PolynomialEnvelope`), rbf
    'gaussian' (num_radial Gaussians on [0, 1]) or 'spherical_bessel'."""

    def __init__(
        self, num_radial: int, cutoff: float, rbf: str = "gaussian", envelope_exponent: int = 5
    ) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.envelope = PolynomialEnvelope(envelope_exponent)
        if rbf == "gaussian":
            self.rbf = GaussianSmearing(0.0, 1.0, num_radial)
        elif rbf == "spherical_bessel":
            self.rbf = SphericalBesselRadial(num_radial, cutoff)
        else:
            raise ValueError(f"rbf must be 'gaussian' or 'spherical_bessel', got {rbf!r}")

    def forward(self, distances: Tensor) -> Tensor:
        scaled = distances / self.cutoff  # [E]
        return self.envelope(scaled).unsqueeze(-1) * self.rbf(scaled)  # [E, num_radial]


class EdgeEmbedding(nn.Module):
    """m_st = Dense([h_s ‖ h_t ‖ x_st]): atoms [N, A], edge features [E, F] → [E, out]."""

    def __init__(self, atom_features: int, edge_features: int, out_features: int) -> None:
        super().__init__()
        self.dense = Dense(2 * atom_features + edge_features, out_features)

    def forward(self, h: Tensor, edge_features: Tensor, sender: Tensor, receiver: Tensor) -> Tensor:
        return self.dense(torch.cat([h[sender], h[receiver], edge_features], dim=-1))


class AtomUpdateBlock(nn.Module):
    """h_t = ResidualLayers(Dense(s · Σ_s m_st ⊙ W_rbf rbf_st)): [E, edge] → [N, atom]."""

    def __init__(
        self, emb_size_atom: int, emb_size_edge: int, emb_size_rbf: int, num_hidden: int
    ) -> None:
        super().__init__()
        self.dense_rbf = Dense(emb_size_rbf, emb_size_edge, activation=False)
        self.scale_sum = ScaleFactor()
        self.layers = nn.ModuleList(
            [Dense(emb_size_edge, emb_size_atom)]
            + [ResidualLayer(emb_size_atom) for _ in range(num_hidden)]
        )

    def forward(self, m: Tensor, rbf: Tensor, receiver: Tensor, num_nodes: int) -> Tensor:
        x = m * self.dense_rbf(rbf)  # [E, edge]
        x = self.scale_sum(scatter_sum(x, receiver, num_nodes, keep_source=False))  # [N, edge]
        for layer in self.layers:
            x = layer(x)
        return x  # [N, atom]
