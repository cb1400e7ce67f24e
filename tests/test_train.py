"""Training loop: loss goes down, checkpoints are atomic, resume is bit-exact, kills are survivable."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from equimd.potentials.models.serialization import load_model, read_checkpoint
from equimd.potentials.train.checkpoint import save_checkpoint
from equimd.potentials.train.config import ConfigError, TrainConfig, config_from_dict
from equimd.potentials.train.trainer import TrainingInterrupted, train

REPO = Path(__file__).resolve().parents[1]


def write_emt_copper(path: Path, num_frames: int = 12, seed: int = 0) -> Path:
    """Rattled, slightly strained 8-atom fcc Cu cells labelled by ASE's EMT (energy, forces,
    stress): a tiny periodic data set that trains in seconds."""
    import ase.io
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for index in range(num_frames):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
        atoms.set_cell(atoms.cell.array * (1.0 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.rattle(0.1, seed=seed * 1000 + index)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_stress()
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


def tiny_config(data: Path, run_dir: Path, **training) -> TrainConfig:
    """A NequIP small enough that an epoch over `write_emt_copper` takes a fraction of a second."""
    raw = {
        "data": {"train": str(data), "valid_fraction": 0.25},
        "model": {
            "model_type": "nequip", "num_features": 4, "l_max": 1, "num_layers": 2,
            "r_max": 3.5, "radial_mlp_hidden": [16], "num_bessel": 4,
        },
        "training": {
            "epochs": 4, "batch_size": 3, "lr": 0.03, "device": "cpu", "seed": 1,
            "dtype": "float64", "stress_weight": 10.0, **training,
        },
        "output": {"run_dir": str(run_dir)},
    }
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def copper(tmp_path_factory) -> Path:
    return write_emt_copper(tmp_path_factory.mktemp("data") / "cu_emt.xyz")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def without_e0(state_dict: dict) -> dict:
    """A state dict without the per-species E0s (refitted in best.pt when a run ends)."""
    return {key: value for key, value in state_dict.items() if not key.endswith("scale_shift.e0")}


def assert_same_tensors(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def test_training_reduces_validation_loss_and_writes_files(copper, tmp_path, capsys):
    result = train(tiny_config(copper, tmp_path / "run", epochs=10), progress=False)
    rows = read_rows(result.metrics_csv)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    valid_loss = [float(r["valid_loss"]) for r in rows]
    assert min(valid_loss) < 0.1 * valid_loss[0] and valid_loss[-1] < 0.3 * valid_loss[0]
    assert float(rows[-1]["valid_forces_mae"]) < 0.5 * float(rows[0]["valid_forces_mae"])
    assert result.stop_reason == "completed" and result.epochs_completed == 10
    for path in (result.best_checkpoint, result.last_checkpoint, result.run_dir / "config.yaml"):
        assert path.is_file()
    # learning curves redrawn every epoch beside metrics.csv
    assert (result.run_dir / "learning_curves.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    model = load_model(result.best_checkpoint)  # a training checkpoint is a model checkpoint
    assert model.species == [29]
    record = read_checkpoint(result.best_checkpoint)
    assert record["progress"]["epoch"] == result.best_epoch
    assert result.final_metrics["forces_mae"] == pytest.approx(
        float(rows[result.best_epoch - 1]["valid_forces_mae"]), rel=1e-6
    )
    out = capsys.readouterr().out
    assert "meV/Å" in out and "best checkpoint" not in out  # the result is printed by the CLI
    assert "statistics: E0s (eV): Cu" in out


def test_resume_reproduces_uninterrupted_weights_bit_exactly(copper, tmp_path):
    reference = train(tiny_config(copper, tmp_path / "straight", epochs=4), progress=False)
    train(tiny_config(copper, tmp_path / "split", epochs=2), progress=False)
    resumed = train(tiny_config(copper, tmp_path / "split", epochs=4), resume=True, progress=False)
    assert resumed.epochs_completed == 4
    expected, actual = read_checkpoint(reference.last_checkpoint), read_checkpoint(resumed.last_checkpoint)
    assert_same_tensors(expected["raw_state_dict"], actual["raw_state_dict"])
    assert_same_tensors(expected["state_dict"], actual["state_dict"])  # EMA weights
    assert expected["scheduler"] == actual["scheduler"]
    for key in ("train_loss", "valid_loss", "valid_forces_mae"):
        assert [r[key] for r in read_rows(reference.metrics_csv)] == [
            r[key] for r in read_rows(resumed.metrics_csv)
        ]


def test_resume_from_the_middle_of_an_epoch_is_bit_exact(copper, tmp_path):
    reference = train(tiny_config(copper, tmp_path / "straight", epochs=3), progress=False)
    # a wall-time limit hit mid-epoch stops after the current step and saves a mid-epoch state
    stopped = train(tiny_config(copper, tmp_path / "split", epochs=3, max_wall_time=1e-6), progress=False)
    assert stopped.stop_reason == "max_wall_time"
    progress = read_checkpoint(stopped.last_checkpoint)["progress"]
    assert (progress["epoch"], progress["step_in_epoch"]) == (0, 1)
    # stopped inside the first epoch: best.pt holds validated weights and the table has numbers
    assert stopped.final_metrics["forces_mae"] > 0 and math.isfinite(stopped.final_metrics["forces_mae"])
    assert "forces" in str(stopped) and "nan" not in str(stopped).lower()
    # the same weights; best.pt's E0s are refitted to the training energies (energy_reference)
    assert_same_tensors(without_e0(read_checkpoint(stopped.best_checkpoint)["raw_state_dict"]),
                        without_e0(read_checkpoint(stopped.last_checkpoint)["raw_state_dict"]))
    resumed = train(tiny_config(copper, tmp_path / "split", epochs=3), resume=True, progress=False)
    assert_same_tensors(
        read_checkpoint(reference.last_checkpoint)["raw_state_dict"],
        read_checkpoint(resumed.last_checkpoint)["raw_state_dict"],
    )


def test_checkpoint_write_is_atomic(copper, tmp_path, monkeypatch):
    result = train(tiny_config(copper, tmp_path / "run", epochs=1), progress=False)
    before = result.last_checkpoint.read_bytes()

    def crash_mid_write(obj, handle, *args, **kwargs):
        handle.write(b"partial checkpoint bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"anything": 1}, result.last_checkpoint)
    assert result.last_checkpoint.read_bytes() == before
    assert sorted(p.name for p in result.run_dir.iterdir() if p.name.startswith(".")) == []


def test_hdf5_training_data_reads_like_extxyz(copper, tmp_path):
    from equimd.potentials.data.io import convert
    from equimd.potentials.train.data import read_split

    convert(copper, tmp_path / "cu.h5")
    from_xyz = read_split(tiny_config(copper, tmp_path).data, seed=0)
    from_h5 = read_split(tiny_config(tmp_path / "cu.h5", tmp_path).data, seed=0)
    for a, b in zip(from_xyz.train + from_xyz.valid, from_h5.train + from_h5.valid, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.stress, b.stress)
        assert a.energy == b.energy


def test_fresh_run_refuses_to_overwrite_an_existing_run(copper, tmp_path):
    train(tiny_config(copper, tmp_path / "run", epochs=2), progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config(copper, tmp_path / "run", epochs=1), progress=False)
    again = tiny_config(copper, tmp_path / "run", epochs=1)
    again.output.overwrite = True
    result = train(again, progress=False)
    assert read_checkpoint(result.best_checkpoint)["progress"]["epoch"] == 1
    assert len(read_rows(result.metrics_csv)) == 1


def test_split_is_seeded_disjoint_and_respects_frame_selection(copper):
    from equimd.potentials.train.data import read_split

    data = tiny_config(copper, Path("unused")).data
    first, second = read_split(data, seed=3), read_split(data, seed=3)
    assert first.valid_indices == second.valid_indices
    assert read_split(data, seed=4).valid_indices != first.valid_indices
    assert sorted(first.train_indices + first.valid_indices) == list(range(12))
    assert len(first.valid) == 3  # 25 % of 12
    data.max_frames, data.train_index = 4, "2:"
    limited = read_split(data, seed=0)
    assert len(limited.train) + len(limited.valid) == 4
    assert all(int(c.source.rsplit(" ", 1)[1]) in range(2, 6) for c in limited.train + limited.valid)


def test_resume_rejects_a_changed_model(copper, tmp_path):
    train(tiny_config(copper, tmp_path / "run", epochs=1), progress=False)
    changed = tiny_config(copper, tmp_path / "run", epochs=2)
    changed.model.hyperparameters["num_features"] = 6
    with pytest.raises(ConfigError, match="model.num_features"):
        train(changed, resume=True, progress=False)


def test_early_stopping_stops_when_validation_stalls(copper, tmp_path, monkeypatch):
    from equimd.potentials.train import trainer

    constant = {"energy_rmse": 10.0, "forces_rmse": 100.0}
    monkeypatch.setattr(trainer, "validate", lambda forcefield, batches: dict(constant))
    result = train(
        tiny_config(copper, tmp_path / "run", epochs=20, early_stopping_patience=2), progress=False
    )
    assert result.stop_reason == "early_stopping"
    assert (result.epochs_completed, result.best_epoch) == (3, 1)


# --- killing a training process --------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    from tests.test_train import tiny_config
    from pathlib import Path
    from equimd.potentials.train.trainer import train
    config = tiny_config(Path(sys.argv[1]), Path(sys.argv[2]), epochs=int(sys.argv[3]))
    train(config, resume=len(sys.argv) > 4, progress=False)
    """
)


@contextlib.contextmanager
def same_threads_as_child():
    """Run in-process training with the child's thread count (OMP_NUM_THREADS=1): float sums
    depend on the number of threads, and bit-exact comparisons need the same arithmetic."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _start_training(data: Path, run_dir: Path, epochs: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data), str(run_dir), str(epochs)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_epochs(process: subprocess.Popen, csv_path: Path, epochs: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training exited early:\n{process.stdout.read()}")
        if csv_path.exists() and len(read_rows(csv_path)) >= epochs:
            return
        time.sleep(0.1)
    process.kill()
    raise AssertionError("training did not reach the expected epoch in time")


def test_sigkill_then_resume_continues_from_last_checkpoint(copper, tmp_path):
    run_dir = tmp_path / "run"
    process = _start_training(copper, run_dir, epochs=1000)
    _wait_for_epochs(process, run_dir / "metrics.csv", epochs=2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    checkpoint_epoch = read_checkpoint(run_dir / "last.pt")["progress"]["epoch"]
    assert checkpoint_epoch >= 2
    target = checkpoint_epoch + 2
    result = train(tiny_config(copper, run_dir, epochs=target), resume=True, progress=False)
    assert result.epochs_completed == target
    epochs = [int(r["epoch"]) for r in read_rows(result.metrics_csv)]
    assert epochs == list(range(1, target + 1))  # no gaps, no duplicates


def test_sigterm_saves_state_and_resume_matches_uninterrupted_run(copper, tmp_path):
    run_dir = tmp_path / "run"
    process = _start_training(copper, run_dir, epochs=1000)
    _wait_for_epochs(process, run_dir / "metrics.csv", epochs=2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "state saved to" in output and "--resume" in output
    progress = read_checkpoint(run_dir / "last.pt")["progress"]
    target = progress["epoch"] + 2
    with same_threads_as_child():
        resumed = train(tiny_config(copper, run_dir, epochs=target), resume=True, progress=False)
        reference = train(tiny_config(copper, tmp_path / "straight", epochs=target), progress=False)
    assert_same_tensors(
        read_checkpoint(reference.last_checkpoint)["raw_state_dict"],
        read_checkpoint(resumed.last_checkpoint)["raw_state_dict"],
    )


def test_keyboard_interrupt_in_process_saves_last_checkpoint(copper, tmp_path, monkeypatch):
    from equimd.potentials.train import trainer

    calls = {"n": 0}
    original = trainer._Run.train_step

    def interrupt_on_fifth_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # handled: finish this step, save, stop
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer._Run, "train_step", interrupt_on_fifth_step)
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(copper, tmp_path / "run", epochs=10), progress=False)
    progress = read_checkpoint(tmp_path / "run" / "last.pt")["progress"]
    assert (progress["epoch"], progress["step_in_epoch"]) == (1, 2)  # 3 steps per epoch


def test_max_cpu_time_stops_after_the_step_that_spends_it(copper, tmp_path):
    """A CPU-time budget (an equal compute budget on a busy machine) stops the run like the
    wall-clock limit: after the current step, resumable, with a validated best.pt."""
    stopped = train(tiny_config(copper, tmp_path / "cpu", epochs=3, max_cpu_time=1e-6), progress=False)
    assert stopped.stop_reason == "max_cpu_time"
    progress = read_checkpoint(stopped.last_checkpoint)["progress"]
    assert (progress["epoch"], progress["step_in_epoch"]) == (0, 1)
    assert math.isfinite(stopped.final_metrics["forces_mae"])
    # a budget far beyond the run's needs changes nothing: all epochs complete
    completed = train(tiny_config(copper, tmp_path / "ample", epochs=2, max_cpu_time=1e6), progress=False)
    assert (completed.stop_reason, completed.epochs_completed) == ("completed", 2)


def test_progress_bar_says_when_max_wall_time_ends_the_run(monkeypatch):
    """The whole-run ETA would promise epochs the time limit cuts off: the bar says when the
    limit stops the run (and says nothing when the run ends first)."""
    import equimd.potentials.train.report as report

    clock = {"now": 100.0}
    monkeypatch.setattr(report.time, "monotonic", lambda: clock["now"])
    limited = report.ProgressBar(total_steps=1000, done_steps=0, enabled=False, time_limit_s=60.0)
    clock["now"] += 10.0  # 10 s per step: 999 steps left would take 2.8 h, 50 s are left
    limited.step(1, 10, 1.0)
    assert limited.time_limit_note() == ", time limit in 0:50"
    roomy = report.ProgressBar(total_steps=5, done_steps=0, enabled=False, time_limit_s=3600.0)
    clock["now"] += 10.0
    roomy.step(1, 1, 1.0)
    assert roomy.time_limit_note() == ""
    assert report.ProgressBar(10, 0, enabled=False).time_limit_note() == ""


@pytest.mark.parametrize("model_type", ["nequip", "mace"])
def test_a_model_can_start_from_the_constant_energy(model_type):
    """`start_from_constant_energy`: energies E0 + shift exactly, zero forces, and the
    readout still gets a gradient (training moves away from the constant)."""
    from equimd.potentials.data.configuration import Configuration
    from equimd.potentials.data.graph import collate, configuration_to_graph
    from equimd.potentials.forcefield import ForceField
    from tests.model_zoo import contract_model, molecule_atoms

    model = contract_model(model_type)
    assert model.start_from_constant_energy() is True
    graph = collate([configuration_to_graph(Configuration.from_atoms(molecule_atoms()), 4.0)])
    out = ForceField(model)(graph, compute_forces=True, training=True)
    species = model.species_index(graph.numbers)
    expected = (model.scale_shift.e0[species] + model.scale_shift.shift).sum()
    torch.testing.assert_close(out["energy"].sum(), expected.to(out["energy"].dtype))
    assert float(out["forces"].abs().max()) == 0.0
    (out["energy"].sum() ** 2 + out["forces"].sum()).backward()
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.parameters())


@pytest.mark.parametrize("zero_readout", [True, False])
def test_fresh_training_starts_from_zero_readout(copper, tmp_path, zero_readout):
    """One Adam step from a zeroed readout moves its weights by at most about lr; a random
    readout is of order one (the trainer calls the hook only with training.zero_readout)."""
    stopped = train(tiny_config(copper, tmp_path / "run", epochs=1, max_wall_time=1e-6, ema_decay=None,
                                zero_readout=zero_readout), progress=False)
    weights = read_checkpoint(stopped.last_checkpoint)["raw_state_dict"]
    readout = max(float(v.abs().max()) for k, v in weights.items()
                  if k == "readout.weight")
    assert (readout <= 1.01 * 0.03) == zero_readout, readout
