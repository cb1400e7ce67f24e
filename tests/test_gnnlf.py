"""GNN-LF against a direct, dense reference of the paper's equations.

No PyPI package ships GNN-LF (the reference code, github.com/GraphPKU/GNN-LF, is a research
repository without a package), so the reference is written here from the equations of
`equimd.potentials.models.gnnlf`'s docstring with dense [N, N] tensors and torch.nn.functional
(no equimd block: its own Bessel basis, envelope, frames and sums), and compared in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from ase import Atoms

from equimd.potentials.models import build_model
from equimd.potentials.nn.dtype import default_dtype
from tests.model_zoo import R_MAX, SPECIES
from tests.reference_checks import assert_matches_atomic_reference


def random_molecule(seed: int, symbols: str = "CCOHHHO") -> Atoms:
    rng = np.random.default_rng(seed)
    return Atoms(symbols, positions=rng.uniform(0.0, 2.8, size=(len(symbols), 3)))


def dense_geometry(positions: torch.Tensor, r_max: float, num_basis: int, p: int):
    """diff [i, j] = x_j − x_i, unit vectors, lengths, Bessel basis [N, N, K] and envelope [N, N]
    (zero on the diagonal and beyond r_max)."""
    n = positions.shape[0]
    eye = torch.eye(n, dtype=positions.dtype)
    diff = positions.unsqueeze(0) - positions.unsqueeze(1)
    lengths = torch.sqrt((diff**2).sum(-1) + eye)
    mask = (lengths < r_max).to(positions.dtype) * (1 - eye)
    unit = diff / lengths.unsqueeze(-1)
    k = torch.arange(1, num_basis + 1, dtype=positions.dtype)
    bessel = (
        math.sqrt(2 / r_max)
        * torch.sin(k * math.pi * lengths.unsqueeze(-1) / r_max)
        / lengths.unsqueeze(-1)
    )
    x = lengths / r_max
    envelope = (
        1
        - (p + 1) * (p + 2) / 2 * x**p
        + p * (p + 2) * x ** (p + 1)
        - p * (p + 1) / 2 * x ** (p + 2)
    ) * mask
    return unit, bessel, envelope


def gnnlf_reference(model, positions: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
    """Per-atom e_i of GNN-LF (before E0/scale/shift, which are the identity here)."""
    w = dict(model.named_parameters())
    hp = model.hyperparameters()
    avg = hp["avg_num_neighbors"]
    unit, bessel, envelope = dense_geometry(
        positions, hp["r_max"], hp["ef_dim"], hp["polynomial_p"]
    )

    def linear(x, name, bias=True):
        return x @ w[f"{name}.weight"].T + (w[f"{name}.bias"] if bias else 0)

    def phi(x, name):  # Linear → LayerNorm (no affine) → SiLU
        h = linear(x, f"{name}.0")
        return F.silu(F.layer_norm(h, h.shape[-1:]))

    rho = F.silu(linear(bessel, "ef_proj.0")) * envelope.unsqueeze(-1)  # [N, N, F]
    s = w["embedding.weight"][species]
    neighbour = w["neighbour_embedding.weight"][species]
    neighbour = F.layer_norm(neighbour, neighbour.shape[-1:])
    s = s + torch.einsum("ijf,jf->if", rho, neighbour) / avg
    frame_weights = phi(s, "filter.frame_transform").unsqueeze(0) * rho  # [i, j, F]
    frames = torch.einsum("ijf,ijc->icf", frame_weights, unit) / avg  # [N, 3, F]
    coordinate = torch.einsum("icf,ijc->ijf", frames, unit)
    q = frames @ w["filter.q_proj.weight"].T
    k = frames @ w["filter.k_proj.weight"].T
    frame_frame = torch.einsum("jcf,icf->ijf", q, k)  # (W_q v_j) · (W_k v_i)
    projections = torch.cat([coordinate, frame_frame], dim=-1) * envelope.unsqueeze(-1)
    mask = rho * linear(F.silu(linear(projections, "filter.dir_proj.0")), "filter.dir_proj.2")
    for layer in range(hp["num_mplayer"]):
        s = s + torch.einsum("ijf,jf->if", mask, phi(s, f"interactions.{layer}")) / avg
    return linear(s, "output_module").squeeze(-1)


def test_gnnlf_matches_dense_reference_of_the_equations():
    torch.manual_seed(3)
    with default_dtype(torch.float64):  # constants (Bessel frequencies) exact in float64
        model = build_model(
            "gnnlf",
            species=SPECIES,
            r_max=R_MAX,
            hid_dim=6,
            num_mplayer=2,
            ef_dim=5,
            avg_num_neighbors=3.5,
        )
    assert_matches_atomic_reference(model, gnnlf_reference, [random_molecule(seed) for seed in range(3)])
