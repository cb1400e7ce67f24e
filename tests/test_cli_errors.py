"""The `equimd` error policy over a table of bad invocations, one or more per subcommand.

Every row is an expected failure (bad file, option value, device, engine refusal): it must exit
with 2 and print exactly one line `equimd: error: ...` to stderr that names what is wrong, no
traceback, and leave no file or directory behind. Rows run in-process through
`equimd.cli.main` on tiny files made here (nothing trains or exports); a few run through the
real console script, where Python warnings and the interpreter's own output would show.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import write

from equimd.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).with_name("equimd")


def _write_config(path: Path, train: str, run_dir: str, **training: str) -> Path:
    extra = "".join(f"  {key}: {value}\n" for key, value in training.items())
    path.write_text(
        f"data:\n  train: {train}\nmodel:\n  model_type: nequip\n  r_max: 3.0\n  l_max: 1\n"
        f"  num_features: 4\n  num_layers: 1\ntraining:\n  epochs: 1\n{extra}"
        f"output:\n  run_dir: {run_dir}\n"
    )
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of small inputs, good and bad; every row's outputs go to a fresh folder."""
    import torch

    from equimd.potentials.models import build_model
    from equimd.potentials.models.serialization import save_model
    from tests.test_openmm import model_file
    from tests.test_train import write_emt_copper

    folder = tmp_path_factory.mktemp("cli_inputs")
    write_emt_copper(folder / "cu.xyz", num_frames=2)
    lines = (folder / "cu.xyz").read_text().splitlines()
    (folder / "truncated.xyz").write_text("\n".join(lines[:6]) + "\n")
    (folder / "notes.txt").write_text("hello world\nthis is not a model\n")
    copper = bulk("Cu", "fcc", a=3.61, cubic=True)
    write(folder / "unlabelled.xyz", [copper, copper])
    nan = copper.copy()
    nan.positions[1, 0] = np.nan
    write(folder / "nan.xyz", nan)
    flat = copper.copy()
    flat.cell[1] = 0.0
    write(folder / "zero_cell.xyz", flat)
    write(folder / "argon.xyz", Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.0]]))
    slab = copper.copy()
    slab.pbc = (True, True, False)
    write(folder / "slab.xyz", slab)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("nequip", species=[29], r_max=3.0, num_features=4, l_max=1,
                            num_layers=1, radial_mlp_hidden=[4], avg_num_neighbors=8.0)
    save_model(model.double(), folder / "checkpoint.pt")
    (folder / "truncated.pt").write_bytes((folder / "checkpoint.pt").read_bytes()[:300])
    os.symlink(model_file("float64", 0.2, num_layers=1), folder / "model.pt")
    _write_config(folder / "cuda.yaml", "cu.xyz", "run_cuda", device="cuda")
    _write_config(folder / "unlabelled.yaml", "unlabelled.xyz", "run_unlabelled", device="cpu")
    _write_config(folder / "missing_data.yaml", "absent.xyz", "run_missing")
    _write_config(folder / "bad_epochs.yaml", "cu.xyz", "run_epochs", epochs="-3")
    (folder / "typo.yaml").write_text("data:\n  trian: cu.xyz\n")
    unknown_model = (folder / "cuda.yaml").read_text().replace("nequip", "schnetzel")
    (folder / "unknown_model.yaml").write_text(unknown_model.replace("cuda", "cpu"))
    (folder / "broken.yaml").write_text("data: [unclosed\n")
    return folder


MD = ["md", "{in}/cu.xyz", "--model", "{in}/model.pt", "-o", "{out}/md", "--no-progress"]

# (row id, arguments ({in}: inputs folder, {out}: the row's output folder), text the line names)
ROWS = [
    ("no-command", [], "required"),
    ("unknown-command", ["frobnicate"], "invalid choice"),
    # train
    ("train-missing-config", ["train", "{in}/absent.yaml"], "absent.yaml"),
    ("train-text-config", ["train", "{in}/notes.txt"], "notes.txt"),
    ("train-broken-yaml", ["train", "{in}/broken.yaml"], "broken.yaml"),
    ("train-misspelled-key", ["train", "{in}/typo.yaml"], "trian"),
    ("train-cuda-without-gpu", ["train", "{in}/cuda.yaml"], "training.device"),
    ("train-no-energies", ["train", "{in}/unlabelled.yaml"], "unlabelled.xyz"),
    ("train-missing-data", ["train", "{in}/missing_data.yaml"], "absent.xyz"),
    ("train-unknown-model", ["train", "{in}/unknown_model.yaml"], "schnetzel"),
    ("train-negative-epochs", ["train", "{in}/bad_epochs.yaml"], "epochs"),
    ("train-zero-threads", ["train", "{in}/cuda.yaml", "--threads", "0"], "--threads"),
    # evaluate
    ("evaluate-missing-checkpoint", ["evaluate", "{in}/absent.pt", "{in}/cu.xyz", "-o", "{out}/e"],
     "absent.pt"),
    ("evaluate-text-checkpoint", ["evaluate", "{in}/notes.txt", "{in}/cu.xyz", "-o", "{out}/e"],
     "notes.txt"),
    ("evaluate-truncated-checkpoint",
     ["evaluate", "{in}/truncated.pt", "{in}/cu.xyz", "-o", "{out}/e"], "truncated.pt"),
    ("evaluate-missing-data", ["evaluate", "{in}/checkpoint.pt", "{in}/absent.xyz"], "absent.xyz"),
    ("evaluate-truncated-data",
     ["evaluate", "{in}/checkpoint.pt", "{in}/truncated.xyz", "-o", "{out}/e"], "line"),
    ("evaluate-cuda-without-gpu",
     ["evaluate", "{in}/checkpoint.pt", "{in}/cu.xyz", "--device", "cuda", "-o", "{out}/e"],
     "--device"),
    ("evaluate-deployed-cuda-without-gpu",
     ["evaluate", "{in}/model.pt", "{in}/cu.xyz", "--device", "cuda", "-o", "{out}/e"],
     "--device"),
    ("evaluate-unknown-element",
     ["evaluate", "{in}/checkpoint.pt", "{in}/argon.xyz", "-o", "{out}/e"], "Ar"),
    ("evaluate-zero-batch", ["evaluate", "{in}/checkpoint.pt", "{in}/cu.xyz", "--batch-size", "0"],
     "--batch-size"),
    ("evaluate-unknown-unit",
     ["evaluate", "{in}/checkpoint.pt", "{in}/cu.xyz", "--energy-unit", "furlong", "-o",
      "{out}/e"], "furlong"),
    ("evaluate-bad-threads", ["evaluate", "{in}/checkpoint.pt", "{in}/cu.xyz", "--threads", "x"],
     "--threads"),
    # data
    ("data-no-action", ["data"], "required"),
    ("data-convert-missing", ["data", "convert", "{in}/absent.xyz", "{out}/x.h5"], "absent.xyz"),
    ("data-convert-truncated", ["data", "convert", "{in}/truncated.xyz", "{out}/x.h5"],
     "truncated.xyz"),
    ("data-convert-text", ["data", "convert", "{in}/notes.txt", "{out}/x.h5"], "notes.txt"),
    ("data-demo-zero-frames", ["data", "demo", "{out}/demo.xyz", "--frames", "0"], "--frames"),
    # deploy
    ("deploy-missing-checkpoint", ["deploy", "{in}/absent.pt", "-o", "{out}/m.pt"], "absent.pt"),
    ("deploy-deployed-model", ["deploy", "{in}/model.pt", "-o", "{out}/m.pt"],
     "deployed model file"),
    ("deploy-text-file", ["deploy", "{in}/notes.txt", "-o", "{out}/m.pt"], "notes.txt"),
    ("deploy-truncated-checkpoint", ["deploy", "{in}/truncated.pt", "-o", "{out}/m.pt"],
     "truncated.pt"),
    ("deploy-bad-dtype", ["deploy", "{in}/checkpoint.pt", "-o", "{out}/m.pt", "--dtype",
                          "float16"], "--dtype"),
    ("deploy-no-output", ["deploy", "{in}/checkpoint.pt"], "-o"),
    ("deploy-unknown-backend", ["deploy", "{in}/checkpoint.pt", "-o", "{out}/m.pt",
                                "--tp-backend", "bogus"], "'bogus'"),
    # md
    ("md-negative-timestep", [*MD, "--timestep", "-1"], "--timestep"),
    ("md-zero-timestep", [*MD, "--timestep", "0"], "--timestep"),
    ("md-negative-steps", [*MD, "--steps", "-5"], "--steps"),
    ("md-negative-temperature", [*MD, "--temperature", "-300"], "--temperature"),
    ("md-cuda-platform", [*MD, "--platform", "CUDA"], "--platform CUDA"),
    ("md-unknown-platform", [*MD, "--platform", "Quantum"], "--platform Quantum"),
    ("md-dcd-with-ase", [*MD, "--engine", "ase", "--trajectory-format", "dcd"],
     "--trajectory-format dcd needs --engine openmm"),
    ("md-unknown-trajectory-format", [*MD, "--trajectory-format", "xtc"], "'xtc'"),
    ("md-nan-positions", ["md", "{in}/nan.xyz", "--model", "{in}/model.pt", "-o", "{out}/md"],
     "not finite"),
    ("md-zero-cell", ["md", "{in}/zero_cell.xyz", "--model", "{in}/model.pt", "-o", "{out}/md"],
     "cell vector 1 is zero"),
    ("md-truncated-structure",
     ["md", "{in}/truncated.xyz", "--model", "{in}/model.pt", "-o", "{out}/md"], "line"),
    ("md-missing-structure", ["md", "{in}/absent.xyz", "--model", "{in}/model.pt"], "absent.xyz"),
    ("md-text-structure", ["md", "{in}/notes.txt", "--model", "{in}/model.pt", "-o", "{out}/md"],
     "notes.txt"),
    ("md-missing-frame", [*MD, "--frame", "7"], "--frame 7"),
    ("md-checkpoint-as-model",
     ["md", "{in}/cu.xyz", "--model", "{in}/checkpoint.pt", "-o", "{out}/md"], "equimd deploy"),
    ("md-text-model", ["md", "{in}/cu.xyz", "--model", "{in}/notes.txt", "-o", "{out}/md"],
     "notes.txt"),
    ("md-missing-model", ["md", "{in}/cu.xyz", "--model", "{in}/absent.pt", "-o", "{out}/md"],
     "absent.pt"),
    ("md-unknown-engine", [*MD, "--engine", "gromacs"], "--engine"),
    ("md-ase-cuda-without-gpu", [*MD, "--engine", "ase", "--device", "cuda"], "--device"),
    ("md-openmm-slab", ["md", "{in}/slab.xyz", "--model", "{in}/model.pt", "-o", "{out}/md"],
     "--engine ase"),
    ("md-unknown-element",
     ["md", "{in}/argon.xyz", "--model", "{in}/model.pt", "--engine", "ase", "-o", "{out}/md"],
     "Ar"),
    ("md-restart-without-run", [*MD, "--restart"], "--restart"),
    ("md-zero-threads", [*MD, "--threads", "0"], "--threads"),
    # import
    ("import-no-source", ["import"], "required"),
    ("import-mace-missing", ["import", "mace", "{in}/absent.model", "-o", "{out}/c.pt"],
     "absent.model"),
    ("import-mace-text", ["import", "mace", "{in}/notes.txt", "-o", "{out}/c.pt"], "notes.txt"),
    ("import-mace-deployed", ["import", "mace", "{in}/model.pt", "-o", "{out}/c.pt"], "model.pt"),
    # info
    ("info-missing", ["info", "{in}/absent.pt"], "absent.pt"),
    ("info-text", ["info", "{in}/notes.txt"], "notes.txt"),
    ("info-truncated", ["info", "{in}/truncated.pt"], "truncated.pt"),
    # demo
    ("demo-negative-minutes", ["demo", "--out", "{out}/demo", "--minutes", "-1"], "--minutes"),
    ("demo-output-is-a-file", ["demo", "--out", "{in}/cu.xyz"], "cu.xyz"),
]


def _arguments(row: list[str], inputs: Path, output: Path) -> list[str]:
    return [part.replace("{in}", str(inputs)).replace("{out}", str(output)) for part in row]


def _assert_one_line(returncode: int, stdout: str, stderr: str, names: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stdout + stderr, stderr
    assert returncode == 2, (returncode, stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("equimd: error: "), lines[0]
    assert names in lines[0], lines[0]


def test_table_has_every_subcommand_and_forty_rows():
    commands = {row[1][0] for row in ROWS if row[1]}
    assert {"train", "evaluate", "data", "deploy", "md", "import", "info", "demo"} <= commands
    assert len(ROWS) >= 40


@pytest.mark.parametrize("arguments, names", [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_bad_invocation_prints_one_line_and_exits_2(arguments, names, inputs, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs (run dirs, md_out) land here
    output = tmp_path / "out"
    before = sorted(inputs.iterdir())
    code = main(_arguments(arguments, inputs, output))
    captured = capsys.readouterr()
    _assert_one_line(code, captured.out, captured.err, names)
    assert not output.exists(), sorted(output.rglob("*"))
    assert sorted(tmp_path.iterdir()) == [], "a failed command left files behind"
    assert sorted(inputs.iterdir()) == before


@pytest.mark.parametrize("row_id", ["md-negative-temperature", "evaluate-cuda-without-gpu",
                                    "deploy-deployed-model"])
def test_console_script_prints_one_line_and_exits_2(row_id, inputs, tmp_path):
    arguments = next(row[1] for row in ROWS if row[0] == row_id)
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), *_arguments(arguments, inputs, tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    _assert_one_line(result.returncode, result.stdout, result.stderr,
                     next(row[2] for row in ROWS if row[0] == row_id))
    assert "weights_only" not in result.stderr and "corrupt" not in result.stderr
    assert sorted(tmp_path.iterdir()) == []


def test_internal_error_is_one_line_and_debug_shows_the_traceback(inputs, tmp_path, capsys,
                                                                   monkeypatch):
    import equimd.info

    def broken(path):
        raise KeyError("a bug")

    monkeypatch.setattr(equimd.info, "describe", broken)
    assert main(["info", str(inputs / "cu.xyz")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("equimd: internal error: KeyError")
    assert "please report" in lines[0] and "--debug" in lines[0]
    with pytest.raises(KeyError, match="a bug"):
        main(["--debug", "info", str(inputs / "cu.xyz")])
