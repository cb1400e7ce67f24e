"""benchmarks/bench_md_throughput.py's equimd side on a tiny system (no peers, no shared data,
seconds): both MD engines run and are timed, throughput and ratios are computed from the step
time, and a peer without its venv is a printed skip, not an error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from ase.build import bulk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_md_throughput as md  # noqa: E402

TINY_NEQUIP = dict(r_max=3.0, l_max=1, num_features=4, num_layers=1, radial_mlp_hidden=[8])
SETTINGS = argparse.Namespace(steps=2, repeats=2, platform="CPU", quiet_load=100.0, max_wait=0.0)


@pytest.fixture(scope="module")
def copper():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=0)
    return atoms


@pytest.fixture(scope="module")
def model_file(copper, tmp_path_factory) -> Path:
    model = md.equimd_model("nequip", copper, **TINY_NEQUIP)
    return md.export_equimd(model, tmp_path_factory.mktemp("md"), "float32")


@pytest.mark.parametrize("engine", sorted(md.ENGINES))
def test_each_engine_times_blocks_of_md_steps(model_file, copper, engine):
    if engine.startswith("torch"):
        pytest.importorskip("openmm")
    result = md.throughput(md.equimd_md(model_file, copper, engine, SETTINGS))
    assert result["engine"] == md.ENGINES[engine] and result["atoms"] == len(copper)
    assert result["steps"] == 2 and result["median_s"] > 0.0
    assert result["ms_per_step"] == pytest.approx(1e3 * result["median_s"] / 2)
    assert result["ns_per_day"] == pytest.approx(86400e-6 / (result["median_s"] / 2))
    assert 0.0 < result["max_displacement_A"] < 1.0  # the crystal stayed a crystal
    assert {"load_before", "load_during"} <= set(result)


def test_ratio_is_peer_step_time_over_equimd_step_time():
    group = [
        {"implementation": "equimd", "ms_per_step": 10.0},
        {"implementation": "equimd", "ms_per_step": 20.0},
        {"implementation": "mace", "ms_per_step": 40.0},
    ]
    md.add_ratios(group)
    assert [row.get("ratio") for row in group] == [4.0, 2.0, None]
    skipped = [
        {"implementation": "equimd", "ms_per_step": 10.0},
        {"implementation": "mace", "error": "x"},
    ]
    md.add_ratios(skipped)
    assert "ratio" not in skipped[0]


def test_a_peer_without_its_venv_is_skipped_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(md.bench, "peer_python", lambda name: tmp_path / name / "bin" / "python")
    args = argparse.Namespace(no_peers=False)
    result = md.run_peer("nequip", "water", "float32", args, None)
    assert "setup_peers.sh nequip" in result["error"]
    assert "skipped" in md.format_row(result)
    assert md.make_mace_file("water", args) == (None, f"no {tmp_path / 'mace'}")


def test_both_sides_get_the_same_nequip_size():
    kwargs, hyperparameters = (
        md.MODELS["nequip"]["kwargs"],
        md.bench_training.equimd_hyperparameters("nequip", ["H", "O"]),
    )
    assert (kwargs["l_max"], kwargs["num_features"], kwargs["num_layers"]) == (2, 32, 4)
    assert hyperparameters["num_features"] == kwargs["num_features"]
    assert hyperparameters["num_layers"] == kwargs["num_layers"]
    assert hyperparameters["r_max"] == md.MODELS["nequip"]["r_max"] == 5.0
