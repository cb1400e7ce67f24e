"""The README's commands work as written.

Default suite: every command line of the README's `bash` blocks is parsed by the real `equimd`
parser (an option that does not exist, such as a misspelled flag, fails here), every `make`
target exists, and every file of the repository the README names exists.

Slow (`make test-slow`): the "Using it" block runs, in order, through the installed console
script in a scratch directory holding a copy of `examples/` and the small files the commands
name (made here: EMT copper frames, a mace-torch `.model` and a nequip package from
tests/data). What is changed to make it run in minutes is listed in `SHORTENED`, with why; a
command that cannot run here is listed in `NOT_RUN`, with why.
"""

from __future__ import annotations

import gzip
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from equimd.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONSOLE_SCRIPT = Path(sys.executable).with_name("equimd")

# command (as in the README) → why it is not run by the slow test
NOT_RUN = {
    "make demo": "the end-to-end demo (10 min); CI does not run it, `equimd demo` is tested by "
                 "tests/test_cli_usability.py",
    "make test": "the test suite itself",
}
# text in a README command → what the slow test runs instead, and why
SHORTENED = {
    "--steps 100000": ("--steps 20", "100000 steps of MD take hours; 20 show the command works"),
    "--time-budget 2h": ("--time-budget 20s", "a 2-hour budget runs 2 hours; 20 s show the command works"),
}
# config keys the slow test sets in its copy of examples/ (training for hours otherwise)
SHORT_TRAINING = {"epochs: 100": "epochs: 1", "num_features: 32": "num_features: 4",
                  "num_layers: 4": "num_layers: 2"}


def bash_blocks(text: str) -> list[list[str]]:
    """The command lines of each ```bash block (continuations joined, comments removed)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        lines = [line.split(" #")[0].strip() for line in joined.splitlines()]
        commands.append([line for line in lines if line and not line.startswith("#")])
    return commands


COMMANDS = [command for block in bash_blocks(README.read_text()) for command in block]


def test_the_readme_has_the_two_setup_commands_and_the_usage_block():
    assert COMMANDS[:2] == ["make demo", "make test"]
    assert sum(command.startswith("equimd ") for command in COMMANDS) >= 10


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("equimd ")])
def test_every_readme_equimd_command_parses(command):
    """Each README command is accepted by the real parser (options, choices, positionals)."""
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as error:
        pytest.fail(f"README command rejected by `equimd` (exit {error.code}): {command}")


def test_every_make_target_and_repository_file_the_readme_names_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    for command in COMMANDS:
        if command.startswith("make "):
            assert command.split()[1] in targets, command
    named = set(re.findall(r"`((?:docs|examples|benchmarks|tests)/[\w./-]+)`", README.read_text()))
    named |= {word for command in COMMANDS for word in command.split()
              if word.startswith(("examples/", "docs/"))
              and not word.startswith(("examples/data/", "examples/runs/"))}  # made by commands
    assert named, "the README names no repository file"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []


def _scratch_directory(tmp_path: Path) -> Path:
    """A copy of examples/ (shortened training) and the files the README's commands name."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write

    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples",
                    ignore=shutil.ignore_patterns("data", "__pycache__"))
    for config in (work / "examples").glob("train_*.yaml"):
        text = config.read_text()
        for old, new in SHORT_TRAINING.items():
            text = text.replace(old, new)
        config.write_text(text)
    frames = []
    for index in range(6):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 1)
        atoms.rattle(0.05 + 0.02 * index, seed=index)
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
        frames.append(atoms)
    write(work / "train.xyz", frames)
    for atoms in frames[:2]:  # test.xyz with the default keys, as `evaluate` reads them
        atoms.info["energy"], atoms.arrays["forces"] = atoms.info["REF_energy"], atoms.arrays["REF_forces"]
    write(work / "test.xyz", frames[:2])
    write(work / "structure.xyz", frames[0])
    with gzip.open(ROOT / "tests" / "data" / "mace_pickle_mp_small.model.gz") as source:
        (work / "MY.model").write_bytes(source.read())
    shutil.copy(ROOT / "tests" / "data" / "nequip_default.nequip.zip", work / "MY.nequip.zip")
    return work


@pytest.mark.slow
def test_the_readme_usage_block_runs_in_order(tmp_path):
    work = _scratch_directory(tmp_path)
    usage = next(block for block in bash_blocks(README.read_text())
                 if any(c.startswith("equimd train") for c in block))
    for command in usage:
        if command in NOT_RUN:
            continue
        for old, (new, _why) in SHORTENED.items():
            command = command.replace(old, new)
        words = shlex.split(command)
        assert words[0] == "equimd", command
        if words[1] == "md":
            words += ["--no-progress"]
        result = subprocess.run([str(CONSOLE_SCRIPT), *words[1:]], cwd=work, capture_output=True,
                                text=True, timeout=1200)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr, command
