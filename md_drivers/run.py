"""`equimd md`: long molecular-dynamics runs with a deployed model, in OpenMM or ASE.

    equimd md STRUCTURE --model model.pt [--engine openmm|ase] [--ensemble nve|nvt|npt]
              [--timestep FS] [--temperature K] [--pressure BAR] [--steps N] [--seed S]
              [-o DIR] [--restart]

Files in the output directory:

    trajectory.extxyz                    frames every --traj-every steps (step 0 included):
                                         positions Å, cell, energy; ase.io.read reads it
                                         (trajectory.dcd with --trajectory-format dcd, OpenMM)
    thermo.csv                           step, time_ps, T_K, Epot_eV, Ekin_eV, Etot_eV,
                                         volume_A3, ns_per_day every --thermo-every steps
    checkpoint.json                      every --checkpoint-every steps, at the end, and on
                                         SIGINT/SIGTERM; written atomically (temp, fsync,
                                         rename). Holds the engine state, the step and the
                                         byte offsets of the trajectory and the CSV.
    topology.pdb                         (DCD only) the starting structure, to read the DCD
    thermo.png                           energies, temperature, volume against time (at the
                                         end of the run; `equimd plot DIR` redraws it)

`--restart` truncates trajectory and CSV back to the checkpoint's offsets and continues with
the same settings, so a run killed at any moment (even SIGKILL) and restarted has the frames
of an uninterrupted run (bit-identical on OpenMM's Reference platform and in ASE on CPU).

Every `--check-every` steps positions are checked: a non-finite coordinate or two atoms closer
than `--min-distance` Å stops the run with `MDInstabilityError` naming step and atoms, after
the last good state is written as the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from equimd.checks import check_species, symbol
from equimd.deploy.load import read_metadata
from equimd.errors import EquimdError
from equimd.files import OutputWriteError, atomic_write_json, reporting_write_errors
from equimd.md_drivers.engines import MDEngine, create_engine
from equimd.md_drivers.reporters import ThermoCSV
from equimd.md_drivers.settings import (
    MDSettings,
    add_md_arguments,
    changed_on_restart,
    settings_from_args,
    validate_settings,
)
from equimd.md_drivers.structure_io import read_structure
from equimd.plots import plot_quietly, plot_thermo
from equimd.units import NS_PER_PS, SECONDS_PER_DAY

if TYPE_CHECKING:
    pass

__all__ = ["MDInstabilityError", "MDRun", "MDSettings", "add_md_arguments", "check_positions",
           "main", "read_structure", "run_md"]

CHECKPOINT_FORMAT = "equimd-md-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.json"


class MDInstabilityError(EquimdError, RuntimeError):
    """Non-finite positions or two atoms closer than the threshold (names step and atoms)."""


def run_md(args: argparse.Namespace) -> int:
    """Entry point of `equimd md`; returns the exit code (0 done, 130/143 interrupted)."""
    settings = settings_from_args(args)
    return MDRun(settings, restart=args.restart, overwrite=args.overwrite).run()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m equimd.md_drivers.run ...` (the same as `equimd md ...`)."""
    parser = argparse.ArgumentParser(prog="equimd md", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_md_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_md(args)
    except (EquimdError, OutputWriteError, ValueError, OSError) as error:
        print(f"equimd md: error: {error}", file=sys.stderr)
        return 2


def check_positions(positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray,
                    pbc: np.ndarray, min_distance: float, step: int) -> str | None:
    """None if the positions are sane, else a message naming step, atoms and elements.

    positions [N, 3] Å (unwrapped is fine), cell [3, 3] Å, min_distance Å (0 disables).
    """
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    def name(i: int) -> str:
        return f"{i} ({symbol(int(numbers[i]))})"

    bad = np.nonzero(~np.isfinite(positions).all(axis=1))[0]
    if len(bad):
        names = ", ".join(name(int(i)) for i in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        return f"step {step}: non-finite positions of atoms {names}{more}"
    if min_distance <= 0 or len(positions) < 2:
        return None
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    first, second, distances = neighbor_list("ijd", atoms, min_distance)
    if len(first) == 0:
        return None
    k = int(np.argmin(distances))
    return (f"step {step}: atoms {name(int(first[k]))} and {name(int(second[k]))} are "
            f"{distances[k]:.3f} Å apart (--min-distance {min_distance} Å)")


# ---------------------------------------------------------------------------------------------
# the run loop


class MDRun:
    """One MD run in `settings.output`: fresh start or `restart` from its checkpoint."""

    def __init__(self, settings: MDSettings, restart: bool = False,
                 overwrite: bool = False) -> None:
        self.settings = settings
        self.restart = restart
        self.overwrite = overwrite
        self.directory = Path(settings.output)
        self.checkpoint_path = self.directory / CHECKPOINT_NAME
        self.thermo_path = self.directory / "thermo.csv"
        self._signal: int | None = None
        self._checkpoint_step: int | None = None  # step of the last checkpoint written

    # -- checkpoints ---------------------------------------------------------------------------

    def _read_checkpoint(self) -> dict[str, Any]:
        if not self.checkpoint_path.is_file():
            raise FileNotFoundError(f"{self.checkpoint_path}: no checkpoint to restart from; "
                                    "start the run without --restart")
        record = json.loads(self.checkpoint_path.read_text())
        if record.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.checkpoint_path}: not an equimd MD checkpoint")
        changed = changed_on_restart(record["settings"], self.settings)
        if changed:
            raise ValueError(f"{self.checkpoint_path}: --restart with settings different from "
                             "the checkpoint's (they would change the trajectory): "
                             + "; ".join(changed))
        return record

    def _write_checkpoint(self, snapshot: dict[str, Any]) -> None:
        record = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "settings": asdict(self.settings),
            **snapshot,
        }
        atomic_write_json(self.checkpoint_path, record, "MD checkpoint")
        self._checkpoint_step = int(snapshot["step"])

    def _take_snapshot(self, engine: MDEngine, step: int, trajectory,
                       thermo: ThermoCSV) -> dict[str, Any]:
        """Engine state + step + file offsets (flushed), as one consistent record."""
        return {
            "step": step,
            "time_ps": step * self.settings.timestep_ps,
            "trajectory": {"path": trajectory.path.name, "offset": trajectory.offset(),
                           "frames": getattr(trajectory, "frames", None)},
            "thermo": {"path": self.thermo_path.name, "offset": thermo.offset()},
            "engine": engine.snapshot(),
        }

    def _commit(self, snapshot: dict[str, Any], trajectory, thermo: ThermoCSV) -> None:
        """fsync the output files (their data up to the snapshot's offsets is then durable),
        then write the checkpoint atomically."""
        trajectory.sync()
        thermo.sync()
        self._write_checkpoint(snapshot)

    # -- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return previous

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> int:
        settings = self.settings
        atoms = read_structure(settings.structure, settings.frame, engine=settings.engine)
        validate_settings(settings, atoms)
        # the model's species before any output or engine: a foreign element stops the run now
        check_species(atoms.numbers, read_metadata(settings.model)["species"]["numbers"],
                      f"{settings.structure}, frame {settings.frame}")
        record = self._read_checkpoint() if self.restart else None
        if record is None and not self.overwrite and self.checkpoint_path.exists():
            raise ValueError(f"{self.directory} holds a previous run ({self.checkpoint_path}); "
                             "continue it with --restart or start afresh with --overwrite")
        engine = create_engine(settings, atoms)  # before mkdir: a refusal leaves no folder
        self.directory.mkdir(parents=True, exist_ok=True)
        if record is None:
            # a fresh run: a stale checkpoint of an earlier run must not survive a crash of
            # this one before its first checkpoint
            self.checkpoint_path.unlink(missing_ok=True)
        trajectory_path = self.directory / engine.trajectory_name
        if record is None:
            step = 0
            trajectory = engine.open_trajectory(trajectory_path, None, 0)
            thermo = ThermoCSV(self.thermo_path)
            with reporting_write_errors("topology", self.directory / "topology.pdb"):
                engine.write_topology(self.directory / "topology.pdb")
        else:
            step = self._checkpoint_step = int(record["step"])
            engine.restore(record["engine"])
            trajectory = engine.open_trajectory(trajectory_path, record["trajectory"]["offset"],
                                                record["trajectory"].get("frames") or 0)
            thermo = ThermoCSV(self.thermo_path, record["thermo"]["offset"])
        print(f"equimd md: {engine.describe()}; {len(atoms)} atoms, {settings.ensemble.upper()}, "
              f"{settings.timestep_fs} fs, steps {step} → {settings.steps}", file=sys.stderr)
        for label, path in (("trajectory", trajectory_path), ("thermo", self.thermo_path),
                            ("checkpoint", self.checkpoint_path)):
            print(f"  {label:<11} {path}", file=sys.stderr)

        previous_handlers = self._install_signal_handlers()
        progress = _progress_bar(settings, step)
        failed = True
        try:
            code = self._loop(engine, step, record, trajectory, thermo, progress)
            failed = False
            return code
        except OutputWriteError as error:
            raise error.with_note(self._write_failure_note()) from error.__cause__
        finally:
            progress.close()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            engine.close()
            _close_outputs((trajectory, thermo), keep_first_error=failed)
            if not failed:
                plot_quietly(plot_thermo, self.thermo_path, "the MD thermodynamics")

    def _write_failure_note(self) -> str:
        """What is left after a failed write and how to go on."""
        if self._checkpoint_step is None:
            return "the run stopped before its first checkpoint"
        return (f"the run stopped; {self.checkpoint_path} (step {self._checkpoint_step}) is "
                "intact: free space and continue with --restart")

    def _loop(self, engine: MDEngine, step: int, resumed: dict[str, Any] | None, trajectory,
              thermo: ThermoCSV, progress) -> int:
        """Advance in chunks between events; at each step s reached: check positions, write
        frame / CSV row, checkpoint. A restart's first step skips these: the checkpoint was
        taken after them."""
        settings = self.settings
        check_every = settings.check_every or settings.thermo_every
        intervals = (settings.traj_every, settings.thermo_every, settings.checkpoint_every,
                     check_every)
        last_good = resumed
        skip_outputs = resumed is not None
        wall_mark, step_mark = time.perf_counter(), step
        while True:
            done = step >= settings.steps
            if not skip_outputs:
                checked = step % check_every == 0 or done
                if checked:
                    self._check(engine, step, last_good, trajectory, thermo)
                if step % settings.traj_every == 0:
                    engine.write_frame(trajectory, step)
                if step % settings.thermo_every == 0:
                    now = time.perf_counter()
                    speed = math.nan  # ns/day since the previous row of this process
                    if step > step_mark:
                        simulated_ns = (step - step_mark) * settings.timestep_ps * NS_PER_PS
                        speed = simulated_ns * SECONDS_PER_DAY / (now - wall_mark)
                    row = {"step": step, "time_ps": step * settings.timestep_ps,
                           **engine.thermo(), "ns_per_day": speed}
                    row["Etot_eV"] = row["Epot_eV"] + row["Ekin_eV"]
                    thermo.write(row)
                    progress.set_postfix(T=f"{row['T_K']:.0f} K", refresh=False)
                    wall_mark, step_mark = now, step
                snapshot = None
                if checked:
                    snapshot = last_good = self._take_snapshot(engine, step, trajectory, thermo)
                if step % settings.checkpoint_every == 0 or done or self._signal is not None:
                    snapshot = snapshot or self._take_snapshot(engine, step, trajectory, thermo)
                    self._commit(snapshot, trajectory, thermo)
            skip_outputs = False
            if done:
                progress.close()
                print(f"equimd md: finished {settings.steps} steps; files in {self.directory}",
                      file=sys.stderr)
                return 0
            if self._signal is not None:
                progress.close()
                name = signal.Signals(self._signal).name
                print(f"equimd md: {name} at step {step}: checkpoint written to "
                      f"{self.checkpoint_path}; continue with --restart", file=sys.stderr)
                return 128 + int(self._signal)
            chunk = min(every - step % every for every in intervals)
            chunk = min(chunk, settings.steps - step)
            try:
                engine.advance(chunk)
            except Exception as error:
                # an engine may raise on NaN coordinates (OpenMM does): report it our way
                self._check(engine, step + chunk, last_good, trajectory, thermo,
                            cause=f" (the engine raised {type(error).__name__}: {error})")
                raise
            step += chunk
            progress.update(chunk)

    def _check(self, engine: MDEngine, step: int, last_good: dict[str, Any] | None, trajectory,
               thermo: ThermoCSV, cause: str = "") -> None:
        problem = check_positions(engine.positions(), engine.numbers, engine.cell(),
                                  engine.pbc(), self.settings.min_distance_A, step)
        if problem is None:
            return
        if last_good is not None:
            self._commit(last_good, trajectory, thermo)
            where = (f"the last good state (step {last_good['step']}) is checkpointed in "
                     f"{self.checkpoint_path}")
        else:
            where = "there is no earlier good state to checkpoint"
        raise MDInstabilityError(f"{problem}{cause}; {where}")


def _close_outputs(outputs, keep_first_error: bool) -> None:
    """Close every output file. A failed close is raised after all are closed, unless the run
    already failed (`keep_first_error`): then the run's own error is the one reported."""
    failure = None
    for output in outputs:
        try:
            output.close()
        except OutputWriteError as error:
            failure = failure or error
    if failure is not None and not keep_first_error:
        raise failure


def _progress_bar(settings: MDSettings, start: int):
    from tqdm import tqdm

    return tqdm(total=settings.steps, initial=start, unit="step", dynamic_ncols=True,
                disable=not settings.progress, file=sys.stderr, desc="md")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
