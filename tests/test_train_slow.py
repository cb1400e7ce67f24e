"""Training on real ab initio data learns: force errors far below those of a zero-force model.

Each test trains a small NequIP on CPU for a fixed number of epochs (deterministic for the
fixed seed; about 1–2.5 min each on one idle core; a 15-minute guard stops a stuck run) and
compares validation errors with the trivial model that predicts zero forces (MAE = mean |F|)
and zero stress. Marked slow: run with `pytest -m slow`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from equimd.potentials.data.io import DatasetKeys, read_configurations
from equimd.potentials.train.config import config_from_dict
from equimd.potentials.train.trainer import train

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
RMD17_ETHANOL = DATA / "rmd17" / "rmd17_ethanol_train_01.npz"
ZUO = DATA / "zuo2020_mlearn"

pytestmark = pytest.mark.slow

SMALL_NEQUIP = {"model_type": "nequip", "l_max": 1, "num_layers": 2, "r_max": 4.0,
                "radial_mlp_hidden": [32]}


def zero_model_errors(path: Path, keys: DatasetKeys, index: str = ":") -> dict[str, float]:
    """MAE of predicting zero forces / zero stress (meV/Å, meV/Å³) on the labelled frames."""
    configs = read_configurations(path, keys, index)
    forces = np.concatenate([c.forces.ravel() for c in configs if c.forces is not None])
    stresses = [c.stress.ravel() for c in configs if c.stress is not None]
    return {
        "forces_mae": 1000 * float(np.abs(forces).mean()),
        "stress_mae": 1000 * float(np.abs(np.concatenate(stresses)).mean()) if stresses else np.nan,
    }


def run(tmp_path: Path, data: dict, model: dict, epochs: int, **training) -> dict[str, float]:
    config = config_from_dict(
        {
            "data": data,
            "model": {**SMALL_NEQUIP, **model},
            "training": {
                "epochs": epochs, "batch_size": 5, "lr": 0.01, "dtype": "float32", "device": "cpu",
                "seed": 0, "scheduler_patience": 5, "max_wall_time": 900.0, **training,
            },
            "output": {"run_dir": str(tmp_path / "run")},
        }
    )
    result = train(config, progress=False)
    assert result.stop_reason == "completed", "ran out of the 15-minute guard"
    return result.final_metrics


@pytest.mark.skipif(not RMD17_ETHANOL.exists(), reason="rMD17 data not available")
def test_ethanol_force_error_is_ten_times_below_zero_model(tmp_path):
    # 300 training frames (the first of rMD17 ethanol train_01), 50 validation frames (the last)
    data = {"train": str(RMD17_ETHANOL), "train_index": ":300", "valid": str(RMD17_ETHANOL),
            "valid_index": "950:", "energy_unit": "kcal/mol"}
    baseline = zero_model_errors(RMD17_ETHANOL, DatasetKeys(energy_unit="kcal/mol"), "950:")
    metrics = run(tmp_path, data, {"num_features": 16}, epochs=60)
    assert metrics["forces_mae"] < baseline["forces_mae"] / 10, (metrics, baseline)


@pytest.mark.skipif(not (ZUO / "Cu_train.xyz").exists(), reason="Zuo et al. data not available")
def test_periodic_copper_force_error_is_ten_times_below_zero_model(tmp_path):
    # Cu_train (262 periodic frames, energy + forces) → validated on Cu_test (31 frames with
    # stress): the stress, never trained on, must come out better than zero from the energy alone
    data = {"train": str(ZUO / "Cu_train.xyz"), "valid": str(ZUO / "Cu_test.xyz")}
    baseline = zero_model_errors(ZUO / "Cu_test.xyz", DatasetKeys())
    metrics = run(tmp_path, data, {"num_features": 8}, epochs=15, batch_size=4)
    assert metrics["forces_mae"] < baseline["forces_mae"] / 10, (metrics, baseline)
    assert metrics["stress_mae"] < baseline["stress_mae"], (metrics, baseline)


@pytest.mark.skipif(not (ZUO / "Si_train.xyz").exists(), reason="Zuo et al. data not available")
def test_periodic_silicon_learns_stress(tmp_path):
    # Si_train has stress labels: fit them (weight large enough to matter next to forces)
    data = {"train": str(ZUO / "Si_train.xyz"), "valid": str(ZUO / "Si_test.xyz")}
    baseline = zero_model_errors(ZUO / "Si_test.xyz", DatasetKeys())
    metrics = run(
        tmp_path, data, {"num_features": 8}, epochs=15, batch_size=4, stress_weight=3000.0
    )
    assert metrics["forces_mae"] < 0.3 * baseline["forces_mae"], (metrics, baseline)
    assert metrics["stress_mae"] < 0.8 * baseline["stress_mae"], (metrics, baseline)
