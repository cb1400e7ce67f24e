"""The frame models (ComENet, ClofNet, GNN-LF) at the degenerate geometries MD visits.

Collinear neighbours, two equidistant nearest neighbours, an atom with a single neighbour, a
linear molecule (CO2) and a single atom: energies, forces and the training gradients of a force
loss are finite. Along scans through each degeneracy (bending through 180°, two neighbours
swapping order, a neighbour crossing the cutoff) energies and forces are continuous: refining
the scan step by 4 shrinks the largest change between neighbouring points (a jump would not
shrink; `test_continuity_check_detects_a_jump` shows the check catches one).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from tests.model_zoo import R_MAX, SPECIES, contract_model, graph_of

FRAME_MODELS = ["comenet", "clofnet", "gnnlf"]


def _comenet_paper_width() -> torch.nn.Module:
    """ComENet with its default reference width (0.5 Å) and frame ε (0.1): the swap scan resolves it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = build_model(
            "comenet",
            species=SPECIES,
            r_max=R_MAX,
            hidden_channels=8,
            middle_channels=4,
            num_radial=3,
            num_spherical=3,
            num_layers=2,
            num_output_layers=1,
        )
    return model.double()


MODELS = {name: (lambda name=name: contract_model(name)) for name in FRAME_MODELS}
MODELS["comenet_default_width"] = _comenet_paper_width


def degenerate_structures() -> dict[str, Atoms]:
    return {
        "collinear": Atoms("HCO", positions=[[-1.1, 0, 0], [0, 0, 0], [1.3, 0, 0]]),
        "equidistant_nearest": Atoms(
            "CHHO", positions=[[0, 0, 0], [1.1, 0, 0], [-0.37, 1.03, 0.1], [0.4, -0.5, 1.45]]
        ),
        "single_neighbour": Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.13]]),
        "co2": Atoms("OCO", positions=[[-1.16, 0, 0], [0, 0, 0], [1.16, 0, 0]]),
        "single_atom": Atoms("Cu", positions=[[0.3, -0.2, 0.1]]),
        "single_neighbour_at_cutoff": Atoms("CO", positions=[[0, 0, 0], [0, 0, R_MAX - 1e-4]]),
    }


def _energy_and_forces(model: torch.nn.Module, atoms: Atoms) -> tuple[float, np.ndarray]:
    out = ForceField(model)(graph_of(atoms))
    return float(out["energy"].detach().sum()), out["forces"].detach().numpy()


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("structure", list(degenerate_structures()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_degenerate_geometry_gives_finite_energy_forces_and_training_gradients(
    model_name, structure, dtype
):
    model = MODELS[model_name]().to(dtype)
    out = ForceField(model)(graph_of(degenerate_structures()[structure], dtype), training=True)
    assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["forces"]).all()
    loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
    parameters = [p for p in model.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    for parameter, gradient in zip(parameters, gradients, strict=True):
        assert gradient is None or torch.isfinite(gradient).all(), parameter.shape


def _bend_through_linear(angle: float, formula: str = "HCO") -> Atoms:
    """Three atoms, the first bent by `angle` (rad) out of the line through the other two."""
    return Atoms(
        formula,
        positions=[
            [-1.1 * np.cos(angle), 1.1 * np.sin(angle), 0.05 * angle],
            [0, 0, 0],
            [1.3, 0, 0],
        ],
    )


def _co2_bend(angle: float) -> Atoms:
    return Atoms(
        "OCO", positions=[[-1.16 * np.cos(angle), 1.16 * np.sin(angle), 0], [0, 0, 0], [1.16, 0, 0]]
    )


def _neighbour_swap(t: float) -> Atoms:
    """C with two H whose distances cross at t = 0 (nearest and second nearest swap), O off-plane."""
    return Atoms(
        "CHHO", positions=[[0, 0, 0], [1.1 + t, 0, 0], [-0.37, 1.04 - t, 0.1], [0.4, -0.5, 1.45]]
    )


def _crossing_cutoff(t: float) -> Atoms:
    """A CO pair and an H that enters C's cutoff sphere (R_MAX) at t = 0."""
    return Atoms(
        "COH", positions=[[0, 0, 0], [1.13, 0.2, 0], [-np.sqrt((R_MAX - t) ** 2 - 0.09), 0.3, 0.0]]
    )


SCANS = {
    "bend_through_collinear": (_bend_through_linear, 0.0, 0.015),
    "co2_bend_through_linear": (_co2_bend, 0.0, 0.015),
    "nearest_neighbours_swap": (_neighbour_swap, 0.0, 0.015),
    "neighbour_crosses_cutoff": (_crossing_cutoff, 0.0, 0.015),
}


def max_step_change(function, centre: float, half_width: float, points: int) -> tuple[float, float]:
    """Largest |Δ energy| and |Δ forces| between neighbouring points of a scan of `function`
    (t ↦ (energy, forces)) on [centre − half_width, centre + half_width]."""
    values = [function(t) for t in np.linspace(centre - half_width, centre + half_width, points)]
    energies = np.array([v[0] for v in values])
    forces = np.stack([v[1] for v in values])
    assert np.isfinite(energies).all() and np.isfinite(forces).all()
    return float(np.abs(np.diff(energies)).max()), float(np.abs(np.diff(forces, axis=0)).max())


def assert_continuous(function, centre: float, half_width: float) -> None:
    """Refining the step 4× must shrink the largest step change of energy and forces (≈ 4× for
    a Lipschitz function; a jump stays the same size). Zero-change scans pass trivially."""
    coarse = max_step_change(function, centre, half_width, 9)
    fine = max_step_change(function, centre, half_width, 33)
    for name, c, f in zip(("energy", "forces"), coarse, fine, strict=True):
        assert f <= 0.5 * c + 1e-12, f"{name}: step change {c:.3g} → {f:.3g} when refining 4×"


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("scan", list(SCANS))
def test_energy_and_forces_are_continuous_through_the_degeneracy(model_name, scan):
    model = MODELS[model_name]()
    build, centre, half_width = SCANS[scan]
    assert_continuous(lambda t: _energy_and_forces(model, build(t)), centre, half_width)


def test_continuity_check_detects_a_jump():
    """The check above fails for the paper's hard nearest-neighbour rule: the z component of
    the H2 direction in the frame z ∥ (vector to the nearest neighbour) jumps at the swap."""

    def hard_nearest_projection(t: float) -> tuple[float, np.ndarray]:
        positions = _neighbour_swap(t).positions
        vectors = positions[1:3] - positions[0]
        nearest = vectors[np.argmin(np.linalg.norm(vectors, axis=1))]
        value = float(vectors[1] @ nearest / np.linalg.norm(nearest) / np.linalg.norm(vectors[1]))
        return value, np.array([value])

    with pytest.raises(AssertionError):
        assert_continuous(hard_nearest_projection, 0.0, 0.015)
