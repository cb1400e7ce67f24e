"""SCN (potentials/models/scn.py): parity with fairchem-core 1.10's SCN, and its own blocks.

The fixture tests/data/scn_fairchem.pt is written by benchmarks/peers/make_scn_fixtures.py in
the fairchem peer environment (fairchem's weights, edges, energies, and forces as central
differences of fairchem's energy, all float64). Our model takes the same weights with
`nonlinearity="grid"` and `cutoff_envelope=False` (fairchem's choices). The shared physics,
contract and export tests run the registered test configuration (gate, mmax 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from equimd.potentials.data.graph import AtomicGraph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.models.scn import tap_rotations
from equimd.potentials.nn.dtype import default_dtype
from equimd.potentials.nn.spherical_grid import coefficient_orders

FIXTURE = Path(__file__).parent / "data" / "scn_fairchem.pt"
SPECIES = [1, 6, 8, 29]
CONFIGS = ["lmax3_mmax0_grid", "lmax4_mmax1_taps", "lmax2_mmax1_linear"]
# fairchem state-dict entries indexed by atomic number (ours: by species index)
ELEMENT_TABLES = ("sphere_embedding.weight", "source_embedding.weight", "target_embedding.weight")
HYPERPARAMETERS = (
    "num_interactions", "lmax", "mmax", "num_resolutions", "sphere_channels",
    "sphere_channels_reduce", "hidden_channels", "num_taps", "use_grid", "num_bands",
    "num_sphere_samples", "num_basis_functions", "distance_function", "basis_width_scalar",
    "distance_resolution",
)  # fmt: skip


def load_fixture() -> dict:
    return torch.load(FIXTURE, weights_only=False)


def our_name(key: str) -> str:
    """fairchem's parameter name → ours."""
    key = key.replace(".message_blocks.0.", ".message_block.")
    for layer in ("fc1_sphere", "fc2_sphere", "fc3_sphere"):
        key = key.replace(f".{layer}.", f".node_update.{layer}.")
    return key


def equimd_from_fairchem(kwargs: dict, state: dict) -> torch.nn.Module:
    """Our SCN with fairchem's hyperparameters and weights (float64)."""
    hyperparameters = {key: kwargs[key] for key in HYPERPARAMETERS if key in kwargs}
    with default_dtype(torch.float64):
        model = build_model(
            "scn", species=SPECIES, r_max=kwargs["cutoff"], nonlinearity="grid",
            cutoff_envelope=False, **hyperparameters,
        )  # fmt: skip
    ours = model.state_dict()
    mapped = {}
    for key, value in state.items():
        if key.endswith("distance_expansion.offset"):  # Gaussian centres: derived by ours
            continue
        if key.endswith(ELEMENT_TABLES):
            value = value[SPECIES]
        name = our_name(key)
        assert name in ours, f"fairchem parameter {key} has no counterpart"
        mapped[name] = value
    missing = [name for name, _ in model.named_parameters() if name not in mapped]
    assert not missing, f"parameters not set from fairchem: {missing}"
    mapped.update({k: v for k, v in ours.items() if k not in mapped})
    model.load_state_dict(mapped)
    return model


def graph_of(record: dict) -> AtomicGraph:
    n = len(record["numbers"])
    return AtomicGraph(
        positions=torch.tensor(record["positions"]),
        numbers=torch.tensor(record["numbers"], dtype=torch.long),
        edge_index=torch.tensor(np.stack([record["sender"], record["receiver"]]), dtype=torch.long),
        edge_shift=torch.tensor(record["shift"]),
        cell=torch.tensor(record["cell"]).unsqueeze(0),
        pbc=torch.tensor(record["pbc"]).unsqueeze(0),
        batch=torch.zeros(n, dtype=torch.long),
        ptr=torch.tensor([0, n]),
    )


@pytest.mark.parametrize("config", CONFIGS)
def test_energies_and_forces_match_fairchem(config):
    fixture = load_fixture()["configs"][config]
    model = equimd_from_fairchem(fixture["kwargs"], fixture["state_dict"])
    forcefield = ForceField(model)
    for record in fixture["structures"]:
        out = forcefield(graph_of(record), compute_forces=True)
        assert abs(float(record["energy"])) > 1e-2  # the comparison below is not a trivial one
        np.testing.assert_allclose(out["energy"].item(), record["energy"], rtol=0, atol=1e-6)
        # reference forces: central differences of fairchem's energy (error ~1e-9 eV/Å)
        np.testing.assert_allclose(out["forces"].detach().numpy(), record["forces"], atol=1e-6)


def test_readout_points_match_fairchem_sphere_samples():
    """fairchem's SCN computes its readout harmonics in forward (CalcSpherePoints); ours are a
    buffer: the same values as the eSCN fixture's stored `sphharm_weights` (same function)."""
    escn = torch.load(Path(__file__).parent / "data" / "escn_fairchem.pt", weights_only=False)
    stored = escn["configs"]["lmax3_mmax2"]["state_dict"]["sphharm_weights.0"]  # 32 points, L 3
    with default_dtype(torch.float64):
        model = build_model(
            "scn", species=SPECIES, r_max=4.0, num_interactions=1, lmax=3, mmax=0,
            sphere_channels=2, sphere_channels_reduce=2, hidden_channels=2,
            num_basis_functions=2, distance_resolution=1.0, nonlinearity="grid",
            num_sphere_samples=32,
        )  # fmt: skip
    np.testing.assert_allclose(model.readout_harmonics.numpy(), stored.numpy(), atol=1e-12)


def test_tap_combination_is_the_inverse_turn_of_fairchem_mapping():
    """fairchem writes the tap average as cos/sin of θ on the m = ±1 pairs
    (`SphericalHarmonicsHelper.InitYRotMapping`); ours is (1/4) Σ_θ T_θᵀ: the same numbers."""
    lmax = 3
    taps = tap_rotations(lmax, 1, -1)  # [4, K, K]
    orders = coefficient_orders(lmax, 1)
    angles = [0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi]
    for tap, angle in enumerate(angles):
        cos, sin = math.cos(angle), math.sin(angle)
        expected = torch.zeros(len(orders), len(orders), dtype=torch.float64)
        for k, (_, m) in enumerate(orders):
            if m == 0:
                expected[k, k] = 1.0
            elif m == -1:  # fairchem: out_{-1} += cos x_{-1} + sin x_{+1}
                expected[k, k], expected[k, k + 2] = cos, sin
            else:  # out_{+1} += cos x_{+1} − sin x_{-1}
                expected[k, k], expected[k, k - 2] = cos, -sin
        torch.testing.assert_close(taps[tap].T, expected, rtol=0, atol=1e-12)


def test_node_update_bias_is_the_constant_function():
    """gate: a layer's bias b enters as the constant function b on the sphere, exactly as the
    grid update adds b at every grid point (coefficient √(4π) b at l = 0)."""
    from equimd.potentials.models.scn import NodeUpdate

    with default_dtype(torch.float64):
        torch.manual_seed(0)
        gate = NodeUpdate(3, 2, "gate")
        grid = NodeUpdate(3, 2, "grid")
    layer = gate.fc1_sphere
    x = torch.randn(5, 9, 6, dtype=torch.float64)
    linear_on_values = grid.grid.from_grid(layer(grid.grid.to_grid(x)))
    linear_on_coefficients = NodeUpdate._on_coefficients(x, layer.weight, layer.bias)
    torch.testing.assert_close(linear_on_coefficients, linear_on_values)


def _model(nonlinearity: str, mmax: int, **extra) -> torch.nn.Module:
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        model = build_model(
            "scn", species=SPECIES, r_max=4.0, num_interactions=2, lmax=3, mmax=mmax,
            sphere_channels=4, sphere_channels_reduce=3, hidden_channels=6,
            num_basis_functions=5, distance_resolution=0.5, nonlinearity=nonlinearity,
            num_sphere_samples=32, **extra,
        )  # fmt: skip
        for parameter in model.parameters():  # weights of order 1: every path contributes
            torch.nn.init.normal_(parameter, 0.0, 0.5)
    return model


def _rotated(record: dict, rotation: np.ndarray) -> dict:
    rotated = dict(record)
    rotated["positions"] = record["positions"] @ rotation.T
    rotated["cell"] = record["cell"] @ rotation.T
    return rotated


@pytest.mark.parametrize(
    "nonlinearity, mmax, exact", [("gate", 0, True), ("grid", 0, False), ("grid", 1, False)]
)
def test_rotation_invariance_is_exact_only_for_the_gate(nonlinearity, mmax, exact):
    """gate (mmax 0): invariant to rounding; grid: up to aliasing (mmax 0) and, with mmax 1,
    the message MLP's relaxed equivariance (four taps: quarter turns about the edge only)."""
    record = load_fixture()["configs"]["lmax3_mmax0_grid"]["structures"][0]
    model = _model(nonlinearity, mmax)
    reference = float(model(graph_of(record)).sum().detach())
    rotation = Rotation.random(random_state=3).as_matrix()
    rotated = float(model(graph_of(_rotated(record, rotation))).sum().detach())
    relative = abs(rotated - reference) / abs(reference)
    if exact:
        assert relative < 1e-12
    else:
        assert 1e-12 < relative < 0.1, relative


def test_gate_requires_mmax_zero():
    with pytest.raises(ValueError, match="needs mmax 0"):
        build_model("scn", species=SPECIES, r_max=4.0, lmax=2, mmax=1, nonlinearity="gate")


@pytest.mark.parametrize("option", [dict(num_resolutions=2), dict(num_bands=2)])
def test_unsupported_fairchem_options_are_refused(option):
    with pytest.raises(ValueError, match="only 1 is implemented"):
        build_model("scn", species=SPECIES, r_max=4.0, lmax=2, **option)


def test_energy_is_continuous_at_the_cutoff_with_the_envelope():
    """With `cutoff_envelope` (default) a pair crossing r_max changes the energy smoothly."""
    model = _model("gate", 0)
    energies = []
    for distance in (4.0 - 1e-6, 4.0 + 1e-6):
        positions = torch.tensor([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]], dtype=torch.float64)
        graph = AtomicGraph(
            positions=positions, numbers=torch.tensor([1, 8]),
            edge_index=torch.tensor([[0, 1], [1, 0]]) if distance < 4.0 else torch.zeros(
                2, 0, dtype=torch.long),
            edge_shift=torch.zeros(2 if distance < 4.0 else 0, 3, dtype=torch.float64),
            cell=torch.zeros(1, 3, 3, dtype=torch.float64),
            pbc=torch.zeros(1, 3, dtype=torch.bool), batch=torch.zeros(2, dtype=torch.long),
            ptr=torch.tensor([0, 2]),
        )  # fmt: skip
        energies.append(float(model(graph).sum().detach()))
    assert abs(energies[0] - energies[1]) < 1e-9


def test_grid_model_with_taps_scripts_like_eager():
    """The fairchem-parity configuration (grid, mmax 1, four taps) exports with TorchScript
    too (the shared export tests cover the registered gate configuration)."""
    fixture = load_fixture()["configs"]["lmax4_mmax1_taps"]
    model = equimd_from_fairchem(fixture["kwargs"], fixture["state_dict"])
    scripted = torch.jit.script(model)
    for record in fixture["structures"]:
        graph = graph_of(record)
        torch.testing.assert_close(scripted(graph), model(graph), rtol=0, atol=1e-12)
