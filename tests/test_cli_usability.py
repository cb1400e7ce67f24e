"""First-use details of the command line and API (issue 19): a calculator that pickles, `info`
in real UTF-8 with a checkpoint's training state, `md --help` with defaults, `--threads` for one
command only, and example configs whose data the project generates (`equimd data demo`)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from equimd.cli import main
from tests.test_openmm import model_file, periodic_box

ROOT = Path(__file__).resolve().parents[1]


def test_calculator_pickles_and_reloads_the_model_from_its_path():
    from equimd.md_drivers.ase import EquimdCalculator

    calculator = EquimdCalculator(model_file("float64", 0.2, num_layers=1), dtype="float32")
    atoms = periodic_box()
    atoms.calc = calculator
    energy = atoms.get_potential_energy()

    copy = pickle.loads(pickle.dumps(calculator))
    assert copy.model.path == calculator.model.path
    assert copy.model.dtype == torch.float32  # the dtype asked for, not the file's float64
    fresh = periodic_box()
    fresh.calc = copy
    assert fresh.get_potential_energy() == pytest.approx(energy, abs=1e-6)
    np.testing.assert_allclose(fresh.get_forces(), atoms.get_forces(), atol=1e-5)


def test_info_prints_utf8_and_a_checkpoints_epoch_and_validation_metrics(tmp_path, capsys):
    from equimd.potentials.models import build_model
    from equimd.potentials.models.serialization import save_model
    from equimd.potentials.train.checkpoint import TrainProgress

    assert main(["info", str(model_file("float64", 0.2, num_layers=1))]) == 0
    out = capsys.readouterr().out
    assert "Å" in out and "\\u00c5" not in out

    model = build_model("nequip", species=[29], r_max=3.0, num_features=4, l_max=1,
                        num_layers=1, radial_mlp_hidden=[4], avg_num_neighbors=8.0)
    progress = TrainProgress(epoch=7, best_epoch=5, best_loss=0.0123, elapsed=42.0)
    save_model(model, tmp_path / "best.pt", progress=progress.to_dict(),
               best_metrics={"energy_mae": 1.5, "energy_rmse": 2.0, "forces_mae": 30.0,
                             "forces_rmse": 40.0})
    assert main(["info", str(tmp_path / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert "epoch:           7 completed (42 s of training)" in out
    assert "best epoch:      5" in out and "0.0123" in out
    assert "validation metrics of the best epoch" in out
    assert "meV/atom" in out and "meV/Å" in out


def test_md_help_shows_every_default(capsys):
    assert main(["md", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in ("(default: 1000)", "(default: openmm)", "(default: 300.0)", "(default: 1.0)",
                    "(default: md_out)", "(default: 100)", "(default: 0.5)"):
        assert default in out, default


def test_threads_apply_to_one_command_only(monkeypatch, tmp_path):
    import equimd.potentials.train.evaluate as evaluate_module

    seen = []
    monkeypatch.setattr(evaluate_module, "evaluate",
                        lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    wanted = before + 1
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"")
    assert main(["evaluate", str(checkpoint), "data.xyz", "--threads", str(wanted)]) == 0
    assert seen == [wanted]
    assert torch.get_num_threads() == before


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """What `equimd data demo examples/data/cu_demo.xyz` writes (one frame per run here)."""
    import contextlib
    import io

    path = tmp_path_factory.mktemp("demo") / "cu_demo.xyz"
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        assert main(["data", "demo", str(path), "--frames", "1"]) == 0
    assert "not ab initio" in said.getvalue()  # the demo data says what it is
    return path


EXAMPLE_CONFIGS = sorted(p.name for p in (ROOT / "examples").glob("train_*.yaml"))


@pytest.mark.parametrize("config_name", EXAMPLE_CONFIGS)
def test_example_config_loads_and_its_data_comes_from_data_demo(config_name, demo_data, tmp_path):
    """Every example config (one per model) trains on the file `equimd data demo
    examples/data/cu_demo.xyz` writes, names a real data set in a comment, and loads: its
    model keys are that model's hyperparameters."""
    from equimd.potentials.data.io import read_configurations
    from equimd.potentials.models import MODELS
    from equimd.potentials.train.config import load_config

    examples = tmp_path / "examples"
    (examples / "data").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / config_name, examples / config_name)
    shutil.copy(demo_data, examples / "data" / "cu_demo.xyz")
    text = (ROOT / "examples" / config_name).read_text()
    command = next(line for line in text.splitlines() if "equimd data demo" in line)
    assert "equimd data demo examples/data/cu_demo.xyz" in command

    config = load_config(examples / config_name)
    assert config.model.model_type in MODELS
    train_path = Path(config.data.train)
    assert train_path == examples / "data" / "cu_demo.xyz"
    frames = read_configurations(train_path)
    assert len(frames) == 9 and all(f.energy is not None and f.forces is not None
                                    for f in frames)
    assert "# train: /path/to/" in text
