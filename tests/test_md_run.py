"""`equimd md` (equimd.md_drivers.run): outputs, checkpoints, exact restarts, instability stops.

The model is a small random NequIP (tests/test_openmm.py), so atoms may come close: runs use
`--min-distance 0` unless the check itself is tested. Only the SIGKILL test needs
subprocesses; the rest run in-process through `equimd.md_drivers.run.main`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

import equimd.md_drivers.run as run_module
from equimd.md_drivers.reporters import THERMO_COLUMNS, read_dcd, read_thermo
from equimd.md_drivers.run import check_positions, main
from tests.test_openmm import model_file, periodic_box

ROOT = Path(__file__).resolve().parents[1]


class SimulatedCrash(Exception):
    """Raised inside a run to stop it the hard way (no checkpoint, files merely closed)."""


@pytest.fixture(scope="module")
def box_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("structure") / "box.extxyz"
    write(path, periodic_box())
    return path


def md_args(structure: Path, output: Path, *extra: str, engine: str = "openmm",
            steps: int = 200) -> list[str]:
    model = model_file("float64", 0.2, num_layers=1)  # one layer: cheap steps
    return [
        str(structure), "--model", str(model), "--engine", engine, "--steps", str(steps),
        "--ensemble", "nvt", "--temperature", "300", "--timestep", "1.0",
        "--traj-every", "10", "--thermo-every", "10", "--checkpoint-every", "50",
        "--platform", "Reference", "--device", "cpu", "--min-distance", "0", "--seed", "7",
        "--no-progress", "-o", str(output), *extra,
    ]


def trajectory_frames(directory: Path, engine: str) -> tuple[list[int], np.ndarray]:
    """(steps of the frames, positions [F, N, 3] Å) of a run's trajectory."""
    if (directory / "trajectory.dcd").exists():  # --trajectory-format dcd (OpenMM)
        dcd = read_dcd(directory / "trajectory.dcd")
        steps = [dcd["first_step"] + k * dcd["interval"] for k in range(dcd["frames"])]
        return steps, dcd["positions"]
    frames = read(directory / "trajectory.extxyz", ":")
    return [frame.info["step"] for frame in frames], np.array([f.positions for f in frames])


def engine_state(checkpoint: dict) -> dict:
    """The dynamical state in an MD checkpoint: OpenMM's XML state (positions, velocities, box,
    time, parameters at 17 digits) or ASE's positions/momenta/cell/RNG (floats by repr)."""
    state = dict(checkpoint["engine"])
    state.pop("checkpoint", None)  # OpenMM's binary blob also holds platform-internal data
    return state


def assert_same_run(directory: Path, reference: Path, engine: str, last_step: int) -> None:
    """Same frames (steps and bitwise positions) and the same CSV rows (but ns/day), and the
    same final state to the last bit: positions and velocities of the last checkpoint at full
    precision (frames are float32 in DCD and rows have 10 digits; a 1-ulp difference in the
    forces after a restart would show up there only by chance)."""
    final_ref = json.loads((reference / "checkpoint.json").read_text())
    final_new = json.loads((directory / "checkpoint.json").read_text())
    assert final_new["step"] == final_ref["step"] == last_step
    assert engine_state(final_new) == engine_state(final_ref), "final state"
    steps_ref, frames_ref = trajectory_frames(reference, engine)
    steps_new, frames_new = trajectory_frames(directory, engine)
    assert steps_new == steps_ref == list(range(0, last_step + 1, 10))
    np.testing.assert_array_equal(frames_new, frames_ref)
    rows_ref = read_thermo(reference / "thermo.csv")
    rows_new = read_thermo(directory / "thermo.csv")
    for key in ("step", "time_ps", "T_K", "Epot_eV", "Etot_eV", "volume_A3"):
        assert [r[key] for r in rows_new] == [r[key] for r in rows_ref], key


def stop_at(monkeypatch, step: int, action) -> None:
    """Call `action()` when the run checks positions at `step` (a hook inside the loop)."""
    real_check = run_module.check_positions

    def check(positions, numbers, cell, pbc, min_distance, at_step):
        if at_step == step:
            action()
        return real_check(positions, numbers, cell, pbc, min_distance, at_step)

    monkeypatch.setattr(run_module, "check_positions", check)


@pytest.fixture(scope="module")
def reference_runs(box_file, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted 200-step runs, one per engine."""
    runs = {}
    for engine in ("openmm", "ase"):
        output = tmp_path_factory.mktemp(f"reference_{engine}")
        assert main(md_args(box_file, output, engine=engine)) == 0
        runs[engine] = output
    return runs


def test_openmm_run_killed_with_sigkill_and_restarted_equals_uninterrupted_run(
        box_file, reference_runs, tmp_path):
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "equimd.md_drivers.run", *md_args(box_file, killed)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    thermo = killed / "thermo.csv"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # SIGKILL as soon as a row at step >= 80 is out
            if process.poll() is not None:
                pytest.fail(f"the run ended before it was killed: {process.stderr.read()[-2000:]}")
            rows = read_thermo(thermo) if thermo.exists() else []
            if rows and rows[-1].get("step") and int(rows[-1]["step"]) >= 80:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert json.loads((killed / "checkpoint.json").read_text())["step"] in (50, 100, 150)
    assert main(md_args(box_file, killed, "--restart")) == 0
    assert_same_run(killed, reference_runs["openmm"], "openmm", 200)  # Reference: bitwise


@pytest.mark.parametrize("engine", ["openmm", "ase"])
def test_crash_after_a_checkpoint_then_restart_equals_uninterrupted_run(
        box_file, reference_runs, tmp_path, monkeypatch, engine):
    """Frames and rows written after the last checkpoint (steps 110, 120) are discarded."""
    output = tmp_path / "crashed"

    def crash():
        raise SimulatedCrash

    stop_at(monkeypatch, 120, crash)
    with pytest.raises(SimulatedCrash):
        main(md_args(box_file, output, engine=engine))
    assert json.loads((output / "checkpoint.json").read_text())["step"] == 100
    assert trajectory_frames(output, engine)[0][-1] == 110  # beyond the checkpoint
    monkeypatch.undo()
    assert main(md_args(box_file, output, "--restart", engine=engine)) == 0
    assert_same_run(output, reference_runs[engine], engine, 200)


def test_sigterm_writes_a_final_checkpoint_and_restart_completes(
        box_file, reference_runs, tmp_path, monkeypatch):
    output = tmp_path / "terminated"
    handler_before = signal.getsignal(signal.SIGTERM)
    stop_at(monkeypatch, 70, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert main(md_args(box_file, output)) == 128 + signal.SIGTERM
    checkpoint = json.loads((output / "checkpoint.json").read_text())
    assert checkpoint["step"] == 70  # not the step-50 checkpoint: written on SIGTERM
    assert signal.getsignal(signal.SIGTERM) == handler_before  # handlers restored
    monkeypatch.undo()
    assert main(md_args(box_file, output, "--restart")) == 0
    assert_same_run(output, reference_runs["openmm"], "openmm", 200)


def test_thermo_csv_columns_and_npt_changes_the_volume(box_file, tmp_path):
    output = tmp_path / "npt"
    assert main(md_args(box_file, output, "--ensemble", "npt", "--barostat-every", "5",
                        "--pressure", "5000", "--trajectory-format", "dcd", steps=100)) == 0
    rows = read_thermo(output / "thermo.csv")
    assert tuple(rows[0]) == THERMO_COLUMNS
    assert [int(r["step"]) for r in rows] == list(range(0, 101, 10))
    assert float(rows[-1]["time_ps"]) == pytest.approx(0.1)
    assert len({r["volume_A3"] for r in rows}) > 1
    for row in rows:
        assert float(row["Etot_eV"]) == pytest.approx(float(row["Epot_eV"]) + float(row["Ekin_eV"]))
    assert rows[0]["ns_per_day"] == "" and float(rows[-1]["ns_per_day"]) > 0
    dcd = read_dcd(output / "trajectory.dcd")
    assert dcd["cells"] is not None and dcd["frames"] == 11
    assert (output / "topology.pdb").exists()


def test_openmm_default_trajectory_is_extxyz_that_ase_reads(box_file, tmp_path):
    """The default trajectory of the OpenMM engine is extxyz (ase.io.read reads it back, with
    cell and energy); DCD is an option. No topology.pdb: nothing needs it."""
    output = tmp_path / "openmm_extxyz"
    assert main(md_args(box_file, output, "--ensemble", "npt", "--barostat-every", "5",
                        "--pressure", "5000", steps=20)) == 0
    frames = read(output / "trajectory.extxyz", ":")
    rows = read_thermo(output / "thermo.csv")
    assert [f.info["step"] for f in frames] == [0, 10, 20]
    assert [f.get_potential_energy() for f in frames] == pytest.approx(
        [float(r["Epot_eV"]) for r in rows], rel=1e-8)
    assert [f.get_volume() for f in frames] == pytest.approx(
        [float(r["volume_A3"]) for r in rows], rel=1e-8)
    assert frames[0].get_chemical_symbols() == read(box_file).get_chemical_symbols()
    assert not (output / "topology.pdb").exists() and not (output / "trajectory.dcd").exists()
    assert (output / "thermo.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_ase_npt_runs_and_writes_extxyz_with_energies(box_file, tmp_path):
    output = tmp_path / "ase_npt"
    assert main(md_args(box_file, output, "--ensemble", "npt", engine="ase", steps=20)) == 0
    frames = read(output / "trajectory.extxyz", ":")
    assert [f.info["step"] for f in frames] == [0, 10, 20]
    assert frames[-1].get_potential_energy() == pytest.approx(
        float(read_thermo(output / "thermo.csv")[-1]["Epot_eV"]), rel=1e-8)


def test_restart_refuses_changed_physics_and_existing_runs_need_a_flag(box_file, tmp_path,
                                                                       capsys):
    output = tmp_path / "run"
    assert main(md_args(box_file, output, steps=20)) == 0
    assert main(md_args(box_file, output, steps=20)) == 2
    assert "--restart" in capsys.readouterr().err
    changed = md_args(box_file, output, "--restart", steps=40)
    changed[changed.index("--timestep") + 1] = "0.5"
    assert main(changed) == 2
    assert "timestep_fs: 1.0 → 0.5" in capsys.readouterr().err
    # a longer run continues the finished one
    assert main(md_args(box_file, output, "--restart", steps=40)) == 0
    assert [int(r["step"]) for r in read_thermo(output / "thermo.csv")] == list(range(0, 41, 10))


def test_check_positions_names_step_atoms_and_elements():
    numbers = np.array([6, 1, 8])
    positions = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [2.0, 0.0, 0.0]])
    message = check_positions(positions, numbers, np.zeros((3, 3)), np.zeros(3, bool), 0.5, 42)
    assert message.startswith("step 42: atoms 0 (C) and 1 (H) are 0.300 Å apart")
    positions[2, 1] = np.nan
    message = check_positions(positions, numbers, np.zeros((3, 3)), np.zeros(3, bool), 0.5, 7)
    assert message == "step 7: non-finite positions of atoms 2 (O)"
    # periodic images count: atoms 0.2 Å apart across the boundary
    cell = np.eye(3) * 5.0
    positions = np.array([[0.1, 1.0, 1.0], [4.9, 1.0, 1.0], [2.5, 2.5, 2.5]])
    message = check_positions(positions, numbers, cell, np.ones(3, bool), 0.5, 0)
    assert "0.200 Å apart" in message
    assert check_positions(positions, numbers, cell, np.zeros(3, bool), 0.5, 0) is None


def test_instability_stops_with_the_last_good_checkpoint(box_file, tmp_path, monkeypatch,
                                                          capsys):
    real_check = run_module.check_positions

    def close_contact_after_step_60(positions, numbers, cell, pbc, min_distance, step):
        if step > 60:
            return f"step {step}: atoms 0 (H) and 1 (H) are 0.100 Å apart (--min-distance 0.5 Å)"
        return real_check(positions, numbers, cell, pbc, min_distance, step)

    monkeypatch.setattr(run_module, "check_positions", close_contact_after_step_60)
    output = tmp_path / "unstable"
    assert main(md_args(box_file, output, steps=100)) == 2
    error = capsys.readouterr().err
    assert "step 70: atoms 0 (H) and 1 (H)" in error and "last good state (step 60)" in error
    assert json.loads((output / "checkpoint.json").read_text())["step"] == 60
    # restarting from it truncates the outputs back to step 60 and goes on
    monkeypatch.undo()
    assert main(md_args(box_file, output, "--restart", steps=80)) == 0
    assert trajectory_frames(output, "openmm")[0] == list(range(0, 81, 10))


def test_a_checkpoint_from_before_trajectory_formats_restarts_with_its_dcd():
    """Checkpoints written before --trajectory-format existed ran OpenMM with a DCD (and ASE
    with extxyz): restarting them asks for that format, not the new default."""
    from equimd.md_drivers.settings import MDSettings, changed_on_restart

    saved = {key: value for key, value in vars(MDSettings("s.xyz", "m.pt")).items()
             if key != "trajectory_format"}  # an old checkpoint's settings (engine: openmm)
    dcd = MDSettings("s.xyz", "m.pt", trajectory_format="dcd")
    assert changed_on_restart(saved, dcd) == []
    assert changed_on_restart(saved, MDSettings("s.xyz", "m.pt")) == [
        "trajectory_format: 'dcd' → 'extxyz'"]
    assert changed_on_restart(dict(saved, engine="ase"), MDSettings("s.xyz", "m.pt", engine="ase")) == []


@pytest.mark.parametrize("transform", ["rotated", "left_handed_unreduced"])
def test_openmm_engine_takes_any_periodic_cell(transform, tmp_path, capsys):
    """OpenMM wants its box in reduced form (a along x, lower-triangular, |b_x| ≤ a_x/2, ...);
    `equimd md` rotates and lattice-reduces any other cell (a rotated or left-handed one, with
    non-reduced vectors), says so, and the physics is unchanged: the first Epot is the ASE
    calculator's energy of the structure as given."""
    from scipy.spatial.transform import Rotation

    from equimd.md_drivers.ase import EquimdCalculator

    atoms = periodic_box()
    if transform == "rotated":
        rotation = Rotation.random(random_state=4).as_matrix()
        atoms.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
        atoms.positions = atoms.positions @ rotation.T
    else:  # same lattice: c → -c (left-handed), b → b + 2a (not reduced)
        cell = atoms.cell.array.copy()
        cell[2] *= -1.0
        cell[1] += 2.0 * cell[0]
        atoms.set_cell(cell, scale_atoms=False)
    structure = tmp_path / "cell.extxyz"
    write(structure, atoms)
    output = tmp_path / "md"
    assert main(md_args(structure, output, steps=10)) == 0
    assert "rotated to OpenMM's reduced box form" in capsys.readouterr().err
    reference = atoms.copy()
    reference.calc = EquimdCalculator(model_file("float64", 0.2, num_layers=1))
    first = read_thermo(output / "thermo.csv")[0]
    assert float(first["Epot_eV"]) == pytest.approx(reference.get_potential_energy(), abs=1e-8)
    assert float(first["volume_A3"]) == pytest.approx(atoms.get_volume(), rel=1e-10)
