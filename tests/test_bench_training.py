"""benchmarks/bench_training.py on a tiny configuration (no peers, no shared data, seconds):
the timed step is the trainer's, the phase-timed step is the same step, and a missing data
folder is a printed skip, not an error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_training  # noqa: E402

TINY_NEQUIP = dict(l_max=1, num_features=4, num_layers=1, radial_mlp_hidden=[8])


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """Six water molecules with made-up energies (eV) and forces (eV/Å)."""
    rng = np.random.default_rng(0)
    structures = []
    for _ in range(6):
        atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        atoms.positions += rng.normal(scale=0.05, size=(3, 3))
        atoms.info["REF_energy"] = float(-2070.0 + rng.normal())
        atoms.arrays["REF_forces"] = rng.normal(size=(3, 3))
        structures.append(atoms)
    path = tmp_path / "frames.xyz"
    write(path, structures, format="extxyz")
    return path


def tiny_job(frames: Path) -> dict:
    return {
        "model": "nequip", "frames": str(frames), "batch_size": 2, "dtype": "float64",
        "threads": torch.get_num_threads(), "hyperparameters": dict(TINY_NEQUIP, r_max=3.0),
        "e0s": {"H": -13.6, "O": -2041.0},
    }  # fmt: skip


def test_the_timed_step_reports_frames_per_second_and_every_phase(frames):
    timing = argparse.Namespace(repeats=2, warmup=1, quiet_load=100.0, max_wait=0.0)
    result = bench_training.run_equimd(dict(tiny_job(frames), breakdown=True), timing)
    assert result["frames_per_s"] == pytest.approx(2 / result["median_s"])
    assert result["atoms"] == 3 and result["parameters"] > 0
    assert list(result["breakdown"]) == list(bench_training.PHASES)
    assert all(seconds >= 0.0 for seconds in result["breakdown"].values())


def test_the_phase_timed_step_is_the_trainers_step(frames):
    timed, phased = (
        bench_training.EquimdTraining(tiny_job(frames)),
        bench_training.EquimdTraining(tiny_job(frames)),
    )
    for _ in range(3):
        timed.step()
        phased.phase_step()
    for a, b in zip(timed.run.model.parameters(), phased.run.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        timed.run.ema.averaged.parameters(), phased.run.ema.averaged.parameters(), strict=True
    ):
        assert torch.equal(a, b)


def test_equimd_nequip_is_built_in_nequip_0_19_form():
    hyperparameters = bench_training.equimd_hyperparameters("nequip", ["H", "C", "O"])
    assert (
        hyperparameters["last_layer_scalars_only"]
        and not hyperparameters["first_layer_self_connection"]
    )
    assert hyperparameters["num_features"] == 32
    assert hyperparameters["radial_mlp_hidden"] == [64, 64]
    assert bench_training.equimd_hyperparameters("mace", [])["hidden_irreps"] == "128x0e"


def test_missing_data_is_skipped_with_a_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EQUIMD_DATA", str(tmp_path))  # restored after the test
    report = bench_training.main(
        ["--data", str(tmp_path / "absent"), "--json", str(tmp_path / "r.json")]
    )
    assert "not found" in report["skipped"]
    assert "skipped:" in capsys.readouterr().out
    assert not (tmp_path / "r.json").exists()
