"""benchmarks/bench_accuracy.py without training: the plan covers every registered model, a
cell's config is the model's example recipe with only data, budget, device and output
replaced, and 3BPA's higher-temperature test holds no frame of the 300 K file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
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
    assert {("matformer", f"zuo_{e}") for e in bench_accuracy.ZUO_ELEMENTS} <= set(cells)
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
    args = argparse.Namespace(cpu_minutes=2.0, threads=1, results=results, force=False, collect=True,
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
    args = argparse.Namespace(cpu_minutes=2.0, threads=1, results=results)
    bench_accuracy.write_results(args, [cell("nequip", "3bpa", 50.0), cell("segnn", "3bpa", 60.0)])
    written = json.loads(results.read_text())
    assert [(r["model"], r["dataset"], r.get("cpu_budget_s"), r["tests"]["test_01"]["forces_mae"])
            for r in written] == [("clofnet", "aspirin", 120.0, 318.5), ("nequip", "3bpa", 120.0, 50.0),
                                  ("segnn", "3bpa", 120.0, 60.0), ("nequip", "3bpa", 600.0, 7.0)]
