"""MACE model variants, hyperparameter errors, the example config and a training smoke run.

The physics checks (equivariance, forces, stress, batching, float32) run for MACE through
tests/test_physics.py (factory "mace" in tests/model_zoo.py); parity with mace-torch is in
tests/test_mace_parity.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.nn.convolution import apply_convolution_backend
from equimd.potentials.nn.mace_blocks import LinearReadout, NonLinearReadout
from tests.model_zoo import R_MAX, SPECIES, STRUCTURES, graph_of

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(
    species=SPECIES,
    r_max=R_MAX,
    max_ell=2,
    hidden_irreps="4x0e+4x1o",
    MLP_irreps="4x0e",
    radial_MLP=[8],
    avg_num_neighbors=6.0,
)


def _small(tp_backend: str | None = None, **changes) -> torch.nn.Module:
    """The small MACE with `changes`, its convolutions on `tp_backend` (default: the model's)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = build_model("mace", **{**SMALL, **changes})
        return model if tp_backend is None else apply_convolution_backend(model, tp_backend)
    finally:
        torch.set_default_dtype(previous)


VARIANTS = {
    "one_interaction": dict(num_interactions=1),
    "three_layers_keep_last_irreps": dict(num_interactions=3, keep_last_layer_irreps=True),
    "cutoff_on_weights": dict(apply_cutoff=False),
    "correlation_per_layer": dict(correlation=[2, 1]),
    "pseudoscalars": dict(hidden_irreps="4x0e+4x0o+4x1o", correlation=2),
    "tanh_gate_e3nn_backend": dict(gate="tanh", tp_backend="e3nn"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_are_invariant_and_conservative(variant: str) -> None:
    forcefield = ForceField(_small(**VARIANTS[variant]))
    atoms = STRUCTURES["periodic_mixed_species"]()
    reference = forcefield(graph_of(atoms))
    assert torch.isfinite(reference["energy"]).all()
    rotation = -Rotation.random(random_state=3).as_matrix()  # improper: checks parity too
    rotated = atoms.copy()
    rotated.set_positions(atoms.get_positions() @ rotation.T)
    rotated.set_cell(atoms.get_cell().array @ rotation.T)
    out = forcefield(graph_of(rotated))
    np.testing.assert_allclose(out["energy"].item(), reference["energy"].item(), rtol=1e-10)
    np.testing.assert_allclose(
        out["forces"].detach().numpy(),
        reference["forces"].detach().numpy() @ rotation.T,
        atol=1e-10,
    )
    # one finite-difference force component
    delta = 1e-5
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        positions = moved.get_positions()
        positions[2, 1] += sign * delta
        moved.set_positions(positions)
        energies.append(forcefield(graph_of(moved), compute_forces=False)["energy"].item())
    numerical = -(energies[0] - energies[1]) / (2 * delta)
    assert numerical == pytest.approx(reference["forces"][2, 1].item(), rel=1e-5, abs=1e-7)


def test_layer_structure_follows_mace() -> None:
    """First layer: hidden irreps and a linear readout; the last: scalars and the MLP readout
    (a single layer: scalars and a linear readout, as mace-torch)."""
    model = _small(num_interactions=3)
    assert [str(p.irreps_out) for p in model.products] == ["4x0e+4x1o", "4x0e+4x1o", "4x0e"]
    assert [type(r) for r in model.readouts] == [LinearReadout, LinearReadout, NonLinearReadout]
    single = _small(num_interactions=1)
    assert str(single.products[0].irreps_out) == "4x0e"
    assert isinstance(single.readouts[0], LinearReadout)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (dict(hidden_irreps="4x1o+4x0e"), "hidden_irreps"),
        (dict(hidden_irreps="4x0e+2x1o"), "multiplicity"),
        (dict(correlation=[3]), "correlation"),
        (dict(correlation=0), "correlation"),
        (dict(interaction="RealAgnosticAttResidualInteractionBlock"), "interaction="),
        (dict(radial_type="fourier"), "radial_type="),
        (dict(distance_transform="Sigmoid"), "distance_transform="),
        (dict(gate="relu"), "gate"),
        (dict(tp_backend="nope"), "backend"),
    ],
)
def test_invalid_hyperparameters_are_named(changes: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        _small(**changes)


def test_example_config_is_valid() -> None:
    from equimd.potentials.train.config import load_config

    config = load_config(REPO / "examples" / "train_mace.yaml")
    assert config.model.model_type == "mace"
    defaults = build_model("mace", species=[1], **config.model.hyperparameters).hyperparameters()
    for key, value in config.model.hyperparameters.items():
        assert defaults[key] == value, key


def test_training_smoke_run_reloads(tmp_path: Path) -> None:
    """The trainer builds, trains and checkpoints a MACE (2 epochs on EMT copper)."""
    from equimd.potentials.models.serialization import load_model
    from equimd.potentials.train.config import config_from_dict
    from equimd.potentials.train.trainer import train
    from tests.test_train import write_emt_copper

    data = write_emt_copper(tmp_path / "cu.xyz", num_frames=6)
    raw = {
        "data": {"train": str(data), "valid_fraction": 0.34},
        "model": {
            "model_type": "mace",
            "r_max": 3.5,
            "max_ell": 1,
            "hidden_irreps": "4x0e+4x1o",
            "correlation": 2,
            "MLP_irreps": "4x0e",
            "radial_MLP": [8],
            "num_bessel": 4,
        },
        "training": {"epochs": 2, "batch_size": 2, "device": "cpu", "seed": 0, "dtype": "float64"},
        "output": {"run_dir": str(tmp_path / "run")},
    }
    result = train(config_from_dict(raw), progress=False)
    model = load_model(tmp_path / "run" / "best.pt")
    assert model.model_type == "mace"
    assert model.hyperparameters()["avg_num_neighbors"] > 1.0
    assert result.stop_reason == "completed"


@pytest.mark.parametrize("variant", ["cutoff_on_weights", "tanh_gate_e3nn_backend"])
def test_variants_script_like_eager(variant: str) -> None:
    """The deploy path's scripting works for every code path of the model."""
    import e3nn.util.jit

    eager = ForceField(_small(**VARIANTS[variant]))
    scripted = torch.jit.script(ForceField(e3nn.util.jit.compile(_small(**VARIANTS[variant]))))
    graph = graph_of(STRUCTURES["triclinic_cu"]())
    expected, got = eager(graph, True, True, False), scripted(graph, True, True, False)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-12, atol=1e-12, msg=key)
