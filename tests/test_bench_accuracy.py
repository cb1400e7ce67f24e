"""benchmarks/bench_accuracy.py without training: the plan covers every registered model, a
cell's config is the model's example recipe with only data, budget, device and output
replaced, and 3BPA's higher-temperature test holds no frame of the 300 K file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from equimd.potentials.models import MODELS
from equimd.potentials.train.config import config_from_dict

PACKAGE_MODELS = sorted(name for name, cls in MODELS.items() if not cls.__module__.startswith("tests."))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_accuracy  # noqa: E402


def test_the_default_plan_trains_every_registered_model_on_the_three_molecule_datasets():
    cells = bench_accuracy.plan(["all"], ["default"])
    for model in PACKAGE_MODELS:
        assert bench_accuracy.example_config(model).exists(), f"{model} has no examples/train_{model}.yaml"
        for name in ("aspirin", "ethanol", "3bpa"):
            assert (model, name) in cells
    assert {("matformer_mlearn", f"zuo_{e}") for e in bench_accuracy.ZUO_ELEMENTS} <= set(cells)
    assert bench_accuracy.example_config("matformer_mlearn").exists()
    assert len(cells) == len(set(cells))


@pytest.mark.parametrize("model", PACKAGE_MODELS)
def test_a_cell_is_the_example_recipe_with_only_data_budget_and_output_replaced(model, tmp_path):
    import yaml

    example = yaml.safe_load(bench_accuracy.example_config(model).read_text())
    data = bench_accuracy.zuo("Cu", tmp_path)
    raw = bench_accuracy.cell_config(model, data, 120.0, tmp_path / "run")
    assert raw["model"] == example["model"]
    changed = {k for k in raw["training"] if raw["training"][k] != example["training"].get(k)}
    assert changed <= {"epochs", "max_cpu_time", "max_wall_time", "device", "batch_size"}
    assert raw["training"]["batch_size"] == 2  # the crystals' one override
    assert raw["training"]["max_cpu_time"] == 120.0 and raw["data"] == data.data
    config = config_from_dict(raw)  # valid as a training config
    assert config.training.max_cpu_time == 120.0 and config.model.model_type == model


def _frame(energy: float, x: float) -> Atoms:
    atoms = Atoms("H2", positions=[[0, 0, 0], [x, 0, 0]])
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((2, 3)))
    return atoms


def test_held_out_frames_drop_exactly_those_shared_with_the_training_file(tmp_path):
    import ase.io

    ase.io.write(tmp_path / "train.xyz", [_frame(-1.0, 0.7), _frame(-2.0, 0.8)])
    ase.io.write(tmp_path / "mixed.xyz", [_frame(-2.0, 0.8), _frame(-3.0, 0.9), _frame(-1.5, 1.0)])
    dropped = bench_accuracy.write_frames_not_in(tmp_path / "mixed.xyz", tmp_path / "train.xyz", tmp_path / "out.xyz")
    kept = ase.io.read(tmp_path / "out.xyz", ":")
    assert dropped == 1
    assert [a.get_potential_energy() for a in kept] == [-3.0, -1.5]


def test_the_table_has_a_column_per_test_set_and_says_which_cells_failed():
    result = {"model": "nequip", "dataset": "3bpa", "molecule": True, "tests": {
        "300K": {"forces_mae": 51.25, "energy_total_mae": 20.0, "energy_mae": 0.74},
        "mixedT": {"forces_mae": 120.0, "energy_total_mae": 80.0, "energy_mae": 2.96}}}
    crystal = {"model": "matformer", "dataset": "zuo_Cu", "molecule": False,
               "tests": {"test": {"forces_mae": 30.0, "energy_total_mae": 999.0, "energy_mae": 4.5}}}
    failed = {"model": "mace", "dataset": "3bpa", "error": "out of memory"}
    table = bench_accuracy.markdown_table([result, crystal, failed]).splitlines()
    assert table[0] == "| model | 3bpa 300K | 3bpa mixedT | zuo_Cu test |"
    assert table[2] == "| nequip | 51.2 / 20.0 | 120.0 / 80.0 |  |"
    assert table[3] == "| matformer |  |  | 30.0 / 4.5 |"  # crystals: meV/atom
    assert table[4] == "| mace | failed | failed |  |"


def test_a_fresh_clone_resumes_the_table_from_the_committed_results_file(tmp_path):
    """Cells the results file holds for the same budget and threads count as done; a cell of
    another budget does not."""
    import argparse
    import json

    done = {"model": "nequip", "dataset": "3bpa", "cpu_budget_s": 120.0, "threads": 1, "molecule": True,
            "tests": {"300K": {"forces_mae": 50.0, "energy_total_mae": 9.0, "energy_mae": 0.3}}}
    other_budget = dict(done, model="mace", cpu_budget_s=600.0)
    results = tmp_path / "accuracy.json"
    results.write_text(json.dumps([done, other_budget]))
    args = argparse.Namespace(cpu_minutes=2.0, threads=1, nproc=1, recipe="example", dtype=None,
                              results=results, force=False, collect=True,
                              models=["nequip", "mace"], datasets=["3bpa"], out=tmp_path / "runs",
                              test_stride=5, jobs=1)
    (tmp_path / "runs" / "3bpa").mkdir(parents=True)
    (tmp_path / "runs" / "3bpa" / "mixedT_heldout.xyz").write_text("")  # no shared data needed
    gathered = bench_accuracy.run_table(args)
    assert [(r["model"], r["dataset"]) for r in gathered] == [("nequip", "3bpa")]


def test_writing_the_results_keeps_the_cells_of_the_file_that_were_not_run(tmp_path):
    """A run of some models or datasets replaces only its own cells in the results file: the
    file's other cells (other models, datasets or budgets) stay (a fresh clone has no runs/
    folders to gather them from)."""
    import argparse
    import json

    def cell(model, dataset, forces, budget=120.0):
        return {"model": model, "dataset": dataset, "cpu_budget_s": budget, "threads": 1,
                "molecule": True, "tests": {"test_01": {"forces_mae": forces}}}

    results = tmp_path / "accuracy.json"
    results.write_text(json.dumps([
        cell("clofnet", "aspirin", 318.5), cell("nequip", "3bpa", 1.0),
        {"model": "segnn", "dataset": "3bpa", "error": "killed"}, cell("nequip", "3bpa", 7.0, 600.0),
    ]))
    args = argparse.Namespace(cpu_minutes=2.0, threads=1, nproc=1, recipe="example", dtype=None,
                              results=results)
    bench_accuracy.write_results(args, [cell("nequip", "3bpa", 50.0), cell("segnn", "3bpa", 60.0)])
    written = json.loads(results.read_text())
    assert [(r["model"], r["dataset"], r.get("cpu_budget_s"), r["tests"]["test_01"]["forces_mae"])
            for r in written] == [("clofnet", "aspirin", 120.0, 318.5), ("nequip", "3bpa", 120.0, 50.0),
                                  ("segnn", "3bpa", 120.0, 60.0), ("nequip", "3bpa", 600.0, 7.0)]


# ----------------------------------------------------------------------------- the peers' cells

import peer_cells  # noqa: E402
from peers import budget_loop  # noqa: E402


def test_a_budget_recipe_changes_only_the_schedule_the_late_energy_stage_and_the_requested_dtype(tmp_path):
    import yaml

    example = yaml.safe_load(bench_accuracy.example_config("nequip").read_text())
    data = bench_accuracy.rmd17("ethanol", tmp_path, 10)
    fixed = {"epochs", "max_cpu_time", "max_wall_time", "device"}
    raw = bench_accuracy.cell_config("nequip", data, 600.0, tmp_path / "run", "cosine", "float32")
    changed = {k for k in raw["training"] if raw["training"][k] != example["training"].get(k)}
    assert {"schedule", "dtype"} <= changed <= fixed | {"schedule", "dtype"}
    assert raw["training"]["schedule"] == "cosine" and raw["training"]["dtype"] == "float32"
    assert config_from_dict(raw).training.schedule == "cosine"
    # "time-budget": what `equimd train --time-budget` plans (schedule.plan_to_budget)
    raw = bench_accuracy.cell_config("nequip", data, 600.0, tmp_path / "run", "time-budget")
    changed = {k for k in raw["training"] if raw["training"][k] != example["training"].get(k)}
    assert changed - fixed == {"schedule", "late_energy_weight", "late_stage_start"}
    assert raw["training"]["late_energy_weight"] == 10 * example["training"]["forces_weight"]
    assert config_from_dict(raw).training.max_cpu_time == 600.0


def test_each_peer_model_has_the_size_of_equimds_example_config_of_that_model():
    """The equal-budget table compares models of the same size: the peers' hyperparameters
    are those of examples/train_mace.yaml and examples/train_nequip.yaml."""
    import yaml

    mace = yaml.safe_load(bench_accuracy.example_config("mace").read_text())["model"]
    for key, value in peer_cells.PEERS["mace-torch"]["kwargs"].items():
        assert mace[key] == value, key
    nequip = yaml.safe_load(bench_accuracy.example_config("nequip").read_text())["model"]
    peer = peer_cells.PEERS["nequip-0.19"]["kwargs"]
    assert (peer["l_max"], peer["num_features"], peer["num_layers"], peer["num_bessels"], peer["polynomial_cutoff_p"],
            peer["parity"]) == (nequip["l_max"], nequip["num_features"], nequip["num_layers"],
                                nequip["num_bessel"], nequip["polynomial_p"], nequip["parity"])
    assert [peer["radial_mlp_width"]] * peer["radial_mlp_depth"] == nequip["radial_mlp_hidden"]
    for name, spec in peer_cells.PEERS.items():
        assert (bench_accuracy.ROOT / "benchmarks" / "peers" / spec["worker"]).exists(), name
        assert spec["training"]["batch_size"] == 5  # as equimd's examples


def test_a_peers_test_metrics_are_those_equimd_evaluate_computes_for_the_same_predictions(tmp_path):
    """The peers' predictions are scored with equimd's metric definitions: for predictions of
    an equimd model, `peer_cells.test_metrics` equals the metrics of `evaluate.predict`."""
    import ase.io
    import torch

    from equimd.potentials.data.io import DatasetKeys, read_configurations
    from equimd.potentials.forcefield import ForceField
    from equimd.potentials.models import build_model
    from equimd.potentials.train.evaluate import predict

    rng = np.random.default_rng(0)
    frames = []
    for n in (3, 5, 4):
        atoms = Atoms(numbers=rng.choice([1, 8], n), positions=rng.uniform(0, 3, (n, 3)))
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(n, 3)))
        frames.append(atoms)
    ase.io.write(tmp_path / "test.xyz", frames)
    configs = read_configurations(tmp_path / "test.xyz", DatasetKeys(), ":")
    torch.manual_seed(0)
    model = build_model("toy_pair", species=[1, 8], r_max=3.0, num_bessel=4).double()
    predictions, metrics = predict(ForceField(model), configs, 3.0, torch.float64, batch_size=2)
    np.savez(tmp_path / "p.npz", energy=[p["energy"] for p in predictions],
             forces=np.concatenate([p["forces"] for p in predictions]), n_atoms=[3, 5, 4])
    scored = peer_cells.test_metrics(configs, tmp_path / "p.npz")
    for name in ("energy_mae", "energy_rmse", "energy_total_mae", "energy_total_rmse", "forces_mae", "forces_rmse"):
        assert scored[name] == pytest.approx(metrics[name], rel=1e-12), name
    assert scored["forces_mae"] > 0 and scored["energy_total_mae"] > scored["energy_mae"]


def _burn(seconds: float) -> None:
    import time

    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_the_peers_budget_loop_stops_on_cpu_time_and_keeps_the_best_validated_weights():
    """Stops when one more step would pass the budget, validates every epoch, keeps the lowest
    validation loss, and from stage two on only stage-two losses compete."""
    losses = iter([5.0, 3.0, 4.0, 9.0, 8.0, 8.5, 7.0, 6.0, 6.5, 5.5, 6.1, 6.2, 5.9, 6.3, 6.4])
    calls = {"stage_two": 0, "validated": 0}

    def validate():
        calls["validated"] += 1
        return next(losses)

    def stage_two():
        calls["stage_two"] += 1

    result = budget_loop.train_for_budget(
        lambda: range(4), lambda batch: _burn(0.01), validate, lambda: calls["validated"], 0.5,
        stage_two=stage_two, stage_two_fraction=0.5, log=lambda line: None,
    )  # the snapshot records which validation it followed
    assert result.stop_reason == "max_cpu_time"
    assert 0.5 - 0.03 < result.cpu_s < 0.5 + 0.03  # within a step (0.01 s) of the budget
    assert calls["stage_two"] == 1 and calls["validated"] == len(result.history) >= 2
    first = next(i for i, h in enumerate(result.history) if h["stage_two"])
    stage_two_losses = [h["loss"] for h in result.history[first:]]
    assert result.best_loss == min(stage_two_losses)  # earlier, lower losses do not compete
    assert result.best_state == first + stage_two_losses.index(result.best_loss) + 1


def test_the_budget_loop_goes_into_an_epoch_that_will_not_complete_and_validates_where_it_stops():
    """Epochs of 0.2 CPU s against 0.5 s: the third epoch is started (it will not complete),
    stopped when one more step would pass the budget, and its weights validated (as equimd's
    trainer does, potentials/train/clock.py)."""
    validated = []

    def validate():
        validated.append(len(validated) + 1)
        return 10.0 - len(validated)  # every validation better than the last

    result = budget_loop.train_for_budget(lambda: range(10), lambda b: _burn(0.02), validate,
                                          lambda: validated[-1], 0.5, log=lambda line: None)
    assert result.epochs == 2 and result.stop_reason == "max_cpu_time"
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.best_epoch == 3 and result.best_state == 3
    assert 0.5 - 0.05 < result.cpu_s < 0.5 + 0.03
    assert 24 <= result.steps <= 25  # 2 epochs and 4-5 steps of the third


def test_the_budget_loop_validates_the_weights_it_has_when_no_epoch_completed():
    result = budget_loop.train_for_budget(lambda: range(10_000), lambda b: _burn(0.01), lambda: 1.5,
                                          lambda: "weights", 0.1, log=lambda line: None)
    assert result.epochs == 0 and result.stop_reason == "max_cpu_time"
    assert result.best_state == "weights" and result.best_loss == 1.5


def test_with_peer_cells_the_table_ends_with_the_ratio_of_the_best_equimd_cell_to_the_best_peer():
    def cell(model, forces, energy):
        return {"model": model, "dataset": "ethanol", "molecule": True,
                "tests": {"test_01": {"forces_mae": forces, "energy_total_mae": energy, "energy_mae": energy / 9}}}

    table = bench_accuracy.markdown_table([cell("nequip", 20.0, 4.0), cell("mace", 19.0, 5.0),
                                           cell("nequip-0.19", 30.0, 10.0), cell("mace-torch", 40.0, 8.0)])
    assert table.splitlines()[-1] == "| best equimd / best peer | F 0.63 / E 0.50 |"
    assert "best peer" not in bench_accuracy.markdown_table([cell("nequip", 20.0, 4.0)])


def test_a_cell_trained_before_the_energy_reference_refit_is_refitted_and_tested_again(tmp_path):
    """`bench_accuracy --refit-energy-reference` on an old cell (trained without the refit):
    best_refit.pt gets the trainer's E0 refit on the cell's training frames, the tests are
    scored again and the earlier scores kept; forces do not change, the energy error does."""
    import json

    from equimd.potentials.train.trainer import train
    from tests.test_train import tiny_config, write_emt_copper

    frames = write_emt_copper(tmp_path / "cu.xyz")
    folder = tmp_path / "cells" / "cu" / "nequip"
    config = tiny_config(frames, folder / "run", epochs=2, energy_weight=0.01, refit_energy_reference=False)
    raw = config.to_dict()
    del raw["training"]["refit_energy_reference"]  # as written by the trainer of that day
    train(config, progress=False)
    data = bench_accuracy.Dataset("cu", raw["data"], [bench_accuracy.TestSet("all", frames)], molecule=False)
    before = bench_accuracy.score_tests(folder / "run" / "best.pt", data, folder)
    bench_accuracy.write_json(folder / "result.json", {"model": "nequip", "dataset": "cu", "config": raw,
                                                       "tests": before})
    result = bench_accuracy.refit_cell(folder, data, "abc1234")
    assert result["tests_before_refit"] == before
    assert result["energy_reference_refit"]["after_the_run"]
    assert json.loads((folder / "result.json").read_text())["tests"] == before  # the caller writes
    after = result["tests"]["all"]
    assert after["forces_mae"] == pytest.approx(before["all"]["forces_mae"], rel=1e-12)
    assert after["energy_mae"] < 0.5 * before["all"]["energy_mae"]
    from equimd.potentials.models.serialization import read_checkpoint

    old, new = read_checkpoint(folder / "run" / "best.pt"), read_checkpoint(folder / "run" / "best_refit.pt")
    shift = torch.tensor(result["energy_reference_refit"]["e0_shift_eV"], dtype=torch.float64)
    for key in ("state_dict", "raw_state_dict"):  # the EMA and the raw weights, each shifted once
        e0 = next(name for name in old[key] if name.endswith("scale_shift.e0"))
        assert torch.allclose(new[key][e0].double(), old[key][e0].double() + shift, atol=1e-6)
        assert all(torch.equal(new[key][n], old[key][n]) for n in old[key] if n != e0)


def test_a_data_parallel_cell_runs_under_torchrun_and_counts_as_another_budget():
    """`--nproc 2`: an equimd cell's command starts torchrun with two ranks of this script's
    `--cell`; a peer's cell stays one process; results of another process count are not reused."""
    import argparse

    args = argparse.Namespace(cpu_minutes=60.0, threads=1, nproc=2, recipe="time-budget", dtype="float32",
                              test_stride=10, out=Path("runs/x"))
    command = bench_accuracy.cell_command(args, "nequip", "ethanol")
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[command.index("--cell") + 1:command.index("--cell") + 3] == ["nequip", "ethanol"]
    assert "--nproc" not in command[command.index("--cell"):]  # the ranks read WORLD_SIZE
    peer = bench_accuracy.cell_command(args, "nequip-0.19", "ethanol")
    assert "torch.distributed.run" not in peer and "--nproc" not in peer
    one = {"model": "nequip", "cpu_budget_s": 3600.0, "threads": 1, "recipe": "time-budget+float32"}
    assert not bench_accuracy.same_budget(one, args)
    assert bench_accuracy.same_budget(dict(one, nproc=2), args)
    with pytest.raises(SystemExit):
        bench_accuracy.main(["--models", "nequip-0.19", "--nproc", "2"])


@pytest.mark.slow
def test_a_data_parallel_cell_trains_in_two_processes_and_rank_0_writes_the_result(tmp_path):
    """End to end on EMT copper posing as the Zuo Cu files: two ranks train, one result with
    the process count, scored on the test file."""
    import json
    import os
    import shutil
    import subprocess

    from tests.test_train import write_emt_copper

    data = tmp_path / "data" / "zuo2020_mlearn"
    data.mkdir(parents=True)
    write_emt_copper(data / "Cu_train.xyz", num_frames=20)
    shutil.copy(write_emt_copper(tmp_path / "test.xyz", num_frames=4, seed=1), data / "Cu_test.xyz")
    results = tmp_path / "results.json"
    script = Path(bench_accuracy.__file__)
    run = subprocess.run(
        [sys.executable, str(script), "--models", "nequip", "--datasets", "zuo_Cu", "--nproc", "2",
         "--cpu-minutes", "0.1", "--jobs", "1", "--data", str(tmp_path / "data"),
         "--out", str(tmp_path / "runs"), "--results", str(results)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    log = (tmp_path / "runs" / "zuo_Cu" / "nequip" / "log.txt").read_text()
    assert run.returncode == 0, run.stdout + run.stderr + log
    (cell,) = json.loads(results.read_text())
    assert cell["nproc"] == 2 and cell["threads"] == 1 and "error" not in cell
    assert cell["stop_reason"] == "max_cpu_time" and np.isfinite(cell["tests"]["test"]["forces_mae"])
    assert "x 2 processes" in run.stdout
