"""ClofNet against a direct, dense reference of the equations.

ClofNet's reference code (github.com/mouthful/ClofNet) is not a PyPI package, so the reference
is written here from the equations in `equimd.potentials.models.clofnet`'s docstring with dense
[N, N] tensors and torch.nn.functional: its own Bessel basis, envelope, soft normalisation,
edge frames and sums (tests/test_gnnlf.py's dense geometry, no equimd block), in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from equimd.potentials.models import build_model
from equimd.potentials.nn.dtype import default_dtype
from tests.model_zoo import R_MAX, SPECIES
from tests.reference_checks import assert_matches_atomic_reference
from tests.test_gnnlf import dense_geometry, random_molecule


def _soft_unit(v: torch.Tensor, eps: float) -> torch.Tensor:
    return v / torch.sqrt((v**2).sum(-1, keepdim=True) + eps**2)


def clofnet_reference(model, positions: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
    """Per-atom e_i of ClofNet (E0/scale/shift are the identity here)."""
    w = dict(model.named_parameters())
    hp = model.hyperparameters()
    avg, eps = hp["avg_num_neighbors"], hp["frame_eps"]
    unit, bessel, envelope = dense_geometry(
        positions, hp["r_max"], hp["num_radial"], hp["polynomial_p"]
    )
    diff = positions.unsqueeze(0) - positions.unsqueeze(1)  # [i, j] = x_j − x_i
    radial = bessel * envelope.unsqueeze(-1)

    def mlp(x, name):
        h = F.silu(x @ w[f"{name}.0.weight"].T + w[f"{name}.0.bias"])
        return h @ w[f"{name}.2.weight"].T + w[f"{name}.2.bias"]

    n = positions.shape[0]
    h = w["embedding.weight"][species]
    c = torch.einsum("ij,ijc->ic", envelope, diff) / avg  # c_i⁰
    for layer in range(hp["n_layers"]):
        a = unit  # [i, j, 3]
        b = _soft_unit(torch.cross(a, _soft_unit(c, eps).unsqueeze(1).expand(n, n, 3), dim=-1), eps)
        cc = torch.cross(a, b, dim=-1)
        frame = torch.stack([a, b, cc], dim=2)  # [i, j, axis, 3]
        sigma_i = torch.einsum("ijkc,ic->ijk", frame, c)
        sigma_j = torch.einsum("ijkc,jc->ijk", frame, c)
        edge_input = torch.cat(
            [
                h.unsqueeze(1).expand(n, n, -1),
                h.unsqueeze(0).expand(n, n, -1),
                radial,
                sigma_i,
                sigma_j,
            ],
            dim=-1,
        )
        m = mlp(edge_input, f"layers.{layer}.edge_mlp") * envelope.unsqueeze(-1)  # [i, j, F]
        if layer + 1 < hp["n_layers"]:
            coefficients = mlp(m, f"layers.{layer}.coord_mlp") * envelope.unsqueeze(-1)  # [i, j, 3]
            c = c + torch.einsum("ijk,ijkc->ic", coefficients, frame) / avg
        h = h + mlp(torch.cat([h, m.sum(1) / avg], dim=-1), f"layers.{layer}.node_mlp")
    return mlp(h, "readout").squeeze(-1)


def test_clofnet_matches_dense_reference_of_the_equations():
    torch.manual_seed(4)
    with default_dtype(torch.float64):
        model = build_model(
            "clofnet",
            species=SPECIES,
            r_max=R_MAX,
            hidden_nf=6,
            n_layers=3,
            num_radial=5,
            frame_eps=0.1,
            avg_num_neighbors=3.5,
        )
    assert_matches_atomic_reference(model, clofnet_reference, [random_molecule(seed) for seed in range(3)])
