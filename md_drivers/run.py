"""`equimd md`: long molecular-dynamics runs with a deployed model, in OpenMM or ASE.

    equimd md STRUCTURE --model model.pt [--engine openmm|ase] [--ensemble nve|nvt|npt]
              [--timestep FS] [--temperature K] [--pressure BAR] [--steps N] [--seed S]
              [-o DIR] [--restart]

Files in the output directory:

    trajectory.dcd / trajectory.extxyz   frames every --traj-every steps (step 0 included)
    thermo.csv                           step, time_ps, T_K, Epot_eV, Ekin_eV, Etot_eV,
                                         volume_A3, ns_per_day every --thermo-every steps
    checkpoint.json                      every --checkpoint-every steps, at the end, and on
                                         SIGINT/SIGTERM; written atomically (temp, fsync,
                                         rename). Holds the engine state, the step and the
                                         byte offsets of the trajectory and the CSV.
    topology.pdb                         (OpenMM) the starting structure, to read the DCD

`--restart` truncates trajectory and CSV back to the checkpoint's offsets and continues with
the same settings, so a run killed at any moment (even SIGKILL) and restarted has the frames
of an uninterrupted run (bit-identical on OpenMM's Reference platform and in ASE on CPU).

Every `--check-every` steps positions are checked: a non-finite coordinate or two atoms closer
than `--min-distance` Å stops the run with `MDInstabilityError` naming step and atoms, after
the last good state is written as the checkpoint.
"""

from __future__ import annotations

import argparse
import base64
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from equimd.checks import symbol
from equimd.errors import EquimdError
from equimd.files import OutputWriteError, atomic_write_json, reporting_write_errors
from equimd.md_drivers.reporters import DCDTrajectory, ExtxyzTrajectory, ThermoCSV

CHECKPOINT_FORMAT = "equimd-md-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.json"
# Settings that must not change on --restart (they change the trajectory).
_FIXED_ON_RESTART = (
    "engine", "ensemble", "timestep_fs", "temperature_K", "pressure_bar", "friction_per_ps",
    "barostat_every", "traj_every", "thermo_every", "seed", "force_path", "model", "structure",
    "frame",
)


class MDInstabilityError(EquimdError, RuntimeError):
    """Non-finite positions or two atoms closer than the threshold (names step and atoms)."""


@dataclass
class MDSettings:
    """Everything that defines a run (stored in the checkpoint)."""

    structure: str
    model: str
    engine: str = "openmm"
    ensemble: str = "nvt"
    timestep_fs: float = 1.0
    temperature_K: float = 300.0
    pressure_bar: float = 1.0
    friction_per_ps: float = 1.0
    barostat_every: int = 25
    steps: int = 1000
    seed: int = 0
    frame: int = -1
    traj_every: int = 100
    thermo_every: int = 100
    checkpoint_every: int = 1000
    check_every: int = 0  # 0: same as thermo_every
    min_distance_A: float = 0.5
    platform: str | None = None
    device: str | None = None
    force_path: str = "torch"
    output: str = "md_out"
    progress: bool = True

    @property
    def timestep_ps(self) -> float:
        return self.timestep_fs * 1e-3


# ---------------------------------------------------------------------------------------------
# command-line interface


def add_md_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `equimd md` (see the module docstring)."""
    parser.add_argument("structure", help="starting structure (extxyz, PDB, anything ase.io reads)")
    parser.add_argument("--model", required=True, help="deployed model file (equimd deploy)")
    parser.add_argument("--engine", choices=("openmm", "ase"), default="openmm")
    parser.add_argument("--ensemble", choices=("nve", "nvt", "npt"), default="nvt",
                        help="nve: velocity Verlet; nvt: Langevin; npt: Langevin + barostat "
                        "(OpenMM MonteCarloBarostat, ASE Berendsen)")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="K: thermostat target and initial velocities (default 300)")
    parser.add_argument("--pressure", type=float, default=1.0, help="bar, NPT (default 1)")
    parser.add_argument("--friction", type=float, default=1.0,
                        help="Langevin friction, 1/ps (default 1)")
    parser.add_argument("--barostat-every", type=int, default=25,
                        help="steps between OpenMM Monte Carlo volume moves (default 25)")
    parser.add_argument("--steps", type=int, default=1000, help="total steps of the run")
    parser.add_argument("--seed", type=int, default=0, help="velocities and thermostat noise")
    parser.add_argument("--frame", type=int, default=-1,
                        help="frame of STRUCTURE to start from (default: last)")
    parser.add_argument("-o", "--output", default="md_out",
                        help="output directory (default md_out)")
    parser.add_argument("--traj-every", type=int, default=100, help="steps between frames")
    parser.add_argument("--thermo-every", type=int, default=100, help="steps between CSV rows")
    parser.add_argument("--checkpoint-every", type=int, default=1000,
                        help="steps between checkpoints")
    parser.add_argument("--check-every", type=int, default=0,
                        help="steps between NaN/close-contact checks (default: --thermo-every)")
    parser.add_argument("--min-distance", type=float, default=0.5,
                        help="stop if two atoms come closer than this, Å (default 0.5)")
    parser.add_argument("--platform", default=None,
                        help="OpenMM platform: Reference, CPU, CUDA, OpenCL (default: fastest)")
    parser.add_argument("--device", default=None,
                        help="torch device for ASE / --force-path python (default: cuda if "
                        "available, else cpu)")
    parser.add_argument("--force-path", choices=("torch", "python"), default="torch",
                        help="OpenMM force: TorchForce (TorchScript models) or PythonForce "
                        "(any model format, e.g. AOTInductor)")
    parser.add_argument("--restart", action="store_true",
                        help="continue from DIR/checkpoint.json (same settings; --steps may grow)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even if DIR holds a previous run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> MDSettings:
    return MDSettings(
        structure=str(args.structure),
        model=str(args.model),
        engine=args.engine,
        ensemble=args.ensemble,
        timestep_fs=args.timestep,
        temperature_K=args.temperature,
        pressure_bar=args.pressure,
        friction_per_ps=args.friction,
        barostat_every=args.barostat_every,
        steps=args.steps,
        seed=args.seed,
        frame=args.frame,
        traj_every=args.traj_every,
        thermo_every=args.thermo_every,
        checkpoint_every=args.checkpoint_every,
        check_every=args.check_every,
        min_distance_A=args.min_distance,
        platform=args.platform,
        device=args.device,
        force_path=args.force_path,
        output=str(args.output),
        progress=not args.no_progress,
    )


def run_md(args: argparse.Namespace) -> int:
    """Entry point of `equimd md`; returns the exit code (0 done, 130/143 interrupted)."""
    settings = settings_from_args(args)
    return MDRun(settings, restart=args.restart, overwrite=args.overwrite).run()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m equimd.md_drivers.run ...` (the same as `equimd md ...`)."""
    parser = argparse.ArgumentParser(prog="equimd md", description=__doc__.split("\n")[0])
    add_md_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_md(args)
    except (MDInstabilityError, OutputWriteError, ValueError, FileNotFoundError) as error:
        print(f"equimd md: error: {error}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------
# structures


def read_structure(path: str | Path, frame: int = -1):
    """ase.Atoms from extxyz, PDB, ... (frame: index into a multi-frame file)."""
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such structure file")
    return read(path, index=frame)


def validate_settings(settings: MDSettings, atoms) -> None:
    positive = {"--timestep": settings.timestep_fs, "--traj-every": settings.traj_every,
                "--thermo-every": settings.thermo_every,
                "--checkpoint-every": settings.checkpoint_every}
    for name, value in positive.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if settings.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {settings.steps}")
    if settings.ensemble == "npt" and not atoms.pbc.all():
        raise ValueError(f"{settings.structure}: NPT needs a fully periodic structure "
                         f"(pbc is {atoms.pbc.tolist()})")
    if settings.engine == "openmm" and atoms.pbc.any() and not atoms.pbc.all():
        raise ValueError(f"{settings.structure}: OpenMM treats a system as fully periodic or not "
                         f"at all (pbc is {atoms.pbc.tolist()}); use --engine ase for slabs")


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
# engines: advance(n), thermo(), positions, snapshot()/restore(), trajectory frames


class OpenMMEngine:
    """A pure-ML OpenMM System (TorchForce or PythonForce on all atoms) and its integrator."""

    trajectory_name = "trajectory.dcd"

    def __init__(self, settings: MDSettings, atoms) -> None:
        import openmm
        import openmm.app as app
        from openmm import unit

        from equimd.md_drivers.openmm import create_force

        self.settings = settings
        self.numbers = atoms.get_atomic_numbers()
        self.periodic = bool(atoms.pbc.all())
        n_atoms = len(atoms)
        system = openmm.System()
        for mass in atoms.get_masses():
            system.addParticle(float(mass))
        topology = app.Topology()
        chain = topology.addChain()
        residue = topology.addResidue("MOL", chain)
        for index, z in enumerate(self.numbers):
            element = app.Element.getByAtomicNumber(int(z))
            topology.addAtom(f"{element.symbol}{index + 1}"[:4], element, residue)
        if self.periodic:
            box = [openmm.Vec3(*(row / 10.0)) for row in atoms.cell.array]
            system.setDefaultPeriodicBoxVectors(*box)
            topology.setPeriodicBoxVectors(box * unit.nanometer)
        options: dict[str, Any] = {}
        if settings.force_path == "python":
            options["device"] = settings.device or _default_device()
        system.addForce(create_force(settings.model, self.numbers, None, self.periodic,
                                     path=settings.force_path, **options))
        system.addForce(openmm.CMMotionRemover())
        self.dof = 3 * n_atoms - 3 if n_atoms > 1 else 3
        dt = settings.timestep_ps
        if settings.ensemble == "nve":
            integrator = openmm.VerletIntegrator(dt)
        else:
            integrator = openmm.LangevinMiddleIntegrator(
                settings.temperature_K, settings.friction_per_ps, dt)
            integrator.setRandomNumberSeed(_openmm_seed(settings.seed))
        if settings.ensemble == "npt":
            barostat = openmm.MonteCarloBarostat(
                settings.pressure_bar, settings.temperature_K, settings.barostat_every)
            barostat.setRandomNumberSeed(_openmm_seed(settings.seed + 1))
            system.addForce(barostat)
        if settings.platform:
            platform = openmm.Platform.getPlatformByName(settings.platform)
            self.context = openmm.Context(system, integrator, platform)
        else:
            self.context = openmm.Context(system, integrator)
        self.platform = self.context.getPlatform().getName()
        self.integrator = integrator
        self.system = system
        self.topology = topology
        self.context.setPositions(atoms.get_positions() / 10.0)
        if self.periodic:
            self.context.setPeriodicBoxVectors(*box)
        if atoms.has("momenta") and np.abs(atoms.get_momenta()).max() > 0:
            from ase import units

            velocities = atoms.get_velocities() * 0.1 * (1000.0 * units.fs)  # Å/t_ASE → nm/ps
            self.context.setVelocities(velocities)
        else:
            self.context.setVelocitiesToTemperature(settings.temperature_K,
                                                    _openmm_seed(settings.seed))
        # zero the centre-of-mass velocity now, not at the CMMotionRemover's first step (that
        # would change the kinetic energy by a jump between the first two thermo rows)
        from openmm import unit

        masses = atoms.get_masses()[:, None]
        velocities = self.context.getState(getVelocities=True).getVelocities(asNumpy=True)
        velocities = velocities.value_in_unit(unit.nanometer / unit.picosecond)
        velocities -= (masses * velocities).sum(axis=0) / masses.sum()
        self.context.setVelocities(velocities)
        self._state = None

    def describe(self) -> str:
        return f"OpenMM {self.settings.force_path} force on platform {self.platform}"

    def advance(self, steps: int) -> None:
        self._state = None  # also when step() raises: positions are then read afresh
        self.integrator.step(steps)

    def _current(self):
        if self._state is None:
            self._state = self.context.getState(getPositions=True, getEnergy=True)
        return self._state

    def positions(self) -> np.ndarray:
        """[N, 3] Å (unwrapped)."""
        from openmm import unit

        return self._current().getPositions(asNumpy=True).value_in_unit(unit.angstrom)

    def cell(self) -> np.ndarray:
        from openmm import unit

        if not self.periodic:
            return np.zeros((3, 3))
        return self._current().getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)

    def pbc(self) -> np.ndarray:
        return np.array([self.periodic] * 3)

    def thermo(self) -> dict[str, float]:
        from openmm import unit

        from equimd.units import EV_TO_KJ_PER_MOL

        state = self._current()
        epot = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
        ekin_kj = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        k_boltzmann = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
        volume = float(abs(np.linalg.det(self.cell()))) if self.periodic else math.nan
        return {"T_K": 2.0 * ekin_kj / (self.dof * k_boltzmann), "Epot_eV": epot,
                "Ekin_eV": ekin_kj / EV_TO_KJ_PER_MOL, "volume_A3": volume}

    def open_trajectory(self, path: Path, offset: int | None, frames: int) -> DCDTrajectory:
        return DCDTrajectory(path, self.topology, self.settings.timestep_ps,
                             self.settings.traj_every, 0, offset, frames)

    def write_frame(self, trajectory: DCDTrajectory, step: int) -> None:
        box = self.cell() / 10.0 if self.periodic else None
        trajectory.write(self.positions() / 10.0, box)

    def write_topology(self, path: Path) -> None:
        import openmm.app as app

        with open(path, "w") as handle:
            app.PDBFile.writeFile(self.topology, self.positions() / 10.0, handle)

    def snapshot(self) -> dict[str, Any]:
        """Binary checkpoint (exact continuation on the same platform) + portable XML state."""
        import openmm

        state = self.context.getState(getPositions=True, getVelocities=True,
                                      getParameters=True, getIntegratorParameters=True)
        return {
            "platform": self.platform,
            "checkpoint": base64.b64encode(self.context.createCheckpoint()).decode("ascii"),
            "state_xml": openmm.XmlSerializer.serialize(state),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        import openmm

        try:
            if snapshot.get("platform") != self.platform:
                raise openmm.OpenMMException("different platform")
            self.context.loadCheckpoint(base64.b64decode(snapshot["checkpoint"]))
        except openmm.OpenMMException as error:
            print(f"equimd md: warning: binary checkpoint not usable ({error}; written on "
                  f"{snapshot.get('platform')}, running on {self.platform}); restoring positions, "
                  "velocities and box from the XML state — the continuation is statistically, "
                  "not bitwise, the same", file=sys.stderr)
            self.context.setState(openmm.XmlSerializer.deserialize(snapshot["state_xml"]))
        self._state = None


class ASEEngine:
    """ASE dynamics with the equimd calculator: VelocityVerlet, Langevin or NPTBerendsen."""

    trajectory_name = "trajectory.extxyz"

    def __init__(self, settings: MDSettings, atoms) -> None:
        from ase import units
        from ase.md.langevin import Langevin
        from ase.md.nptberendsen import NPTBerendsen
        from ase.md.velocitydistribution import Stationary
        from ase.md.verlet import VelocityVerlet

        from equimd.md_drivers.ase import EquimdCalculator

        self.settings = settings
        self.atoms = atoms
        self.numbers = atoms.get_atomic_numbers()
        self.device = settings.device or _default_device()
        atoms.calc = EquimdCalculator(settings.model, device=self.device)
        if not (atoms.has("momenta") and np.abs(atoms.get_momenta()).max() > 0):
            _thermalize(atoms, settings.temperature_K, np.random.default_rng(settings.seed))
            Stationary(atoms, preserve_temperature=False)
        dt = settings.timestep_fs * units.fs
        self.rng = np.random.default_rng(settings.seed + 1)
        n_atoms = len(atoms)
        # degrees of freedom: the centre of mass is fixed except under Langevin noise
        self.dof = 3 * n_atoms if settings.ensemble == "nvt" or n_atoms == 1 else 3 * n_atoms - 3
        if settings.ensemble == "nve":
            self.dynamics = VelocityVerlet(atoms, dt)
        elif settings.ensemble == "nvt":
            friction = settings.friction_per_ps / (1000.0 * units.fs)
            # fixcm=False: ASE's fixcm=True Langevin does not sample NVT exactly (ASE ≥ 3.28)
            self.dynamics = Langevin(atoms, dt, temperature_K=settings.temperature_K,
                                     friction=friction, fixcm=False, rng=self.rng)
        else:
            # Berendsen: stateless (exact restarts); 0.1 ps thermostat, 1 ps barostat,
            # water's compressibility 4.57e-5 / bar as the coupling scale.
            # ASE's thermostat counts 3N degrees of freedom, but the centre of mass is at rest
            # (3N - 3): aim its kinetic temperature so that the true temperature is the target.
            target_K = settings.temperature_K * self.dof / (3 * n_atoms)
            self.dynamics = NPTBerendsen(
                atoms, dt, temperature_K=target_K,
                pressure_au=settings.pressure_bar * units.bar,
                taut=100.0 * units.fs, taup=1000.0 * units.fs,
                compressibility_au=4.57e-5 / units.bar)

    def describe(self) -> str:
        return f"ASE {type(self.dynamics).__name__} on {self.device}"

    def advance(self, steps: int) -> None:
        self.dynamics.run(steps)

    def positions(self) -> np.ndarray:
        return self.atoms.get_positions()

    def cell(self) -> np.ndarray:
        return self.atoms.cell.array.copy()

    def pbc(self) -> np.ndarray:
        return self.atoms.pbc.copy()

    def thermo(self) -> dict[str, float]:
        from ase import units

        volume = float(self.atoms.get_volume()) if self.atoms.pbc.all() else math.nan
        ekin = float(self.atoms.get_kinetic_energy())
        return {"T_K": 2.0 * ekin / (self.dof * units.kB),
                "Epot_eV": float(self.atoms.get_potential_energy()),
                "Ekin_eV": ekin, "volume_A3": volume}

    def open_trajectory(self, path: Path, offset: int | None, frames: int) -> ExtxyzTrajectory:
        return ExtxyzTrajectory(path, offset)

    def write_frame(self, trajectory: ExtxyzTrajectory, step: int) -> None:
        self.atoms.get_forces()  # results cached by the dynamics; computed here at step 0
        trajectory.write(self.atoms, step, step * self.settings.timestep_ps)

    def write_topology(self, path: Path) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        # floats are written with repr() by json: the round trip is exact
        return {
            "positions": self.atoms.get_positions().tolist(),
            "momenta": self.atoms.get_momenta().tolist(),
            "cell": self.atoms.cell.array.tolist(),
            "rng": self.rng.bit_generator.state,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.atoms.set_cell(np.array(snapshot["cell"]), scale_atoms=False)
        self.atoms.set_positions(np.array(snapshot["positions"]))
        self.atoms.set_momenta(np.array(snapshot["momenta"]))
        self.rng.bit_generator.state = snapshot["rng"]


def _thermalize(atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta (ASE ≥ 3.29 `thermalize_momenta`, else the older name)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _openmm_seed(seed: int) -> int:
    # OpenMM treats seed 0 as "pick one at random": map every seed to a fixed non-zero int32
    return int(seed) % 2_147_483_646 + 1


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
        import json

        if not self.checkpoint_path.is_file():
            raise FileNotFoundError(f"{self.checkpoint_path}: no checkpoint to restart from; "
                                    "start the run without --restart")
        record = json.loads(self.checkpoint_path.read_text())
        if record.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.checkpoint_path}: not an equimd MD checkpoint")
        saved = record["settings"]
        current = asdict(self.settings)

        def same(key: str) -> bool:
            if key in ("model", "structure"):  # the same file, however it is spelled
                return Path(saved.get(key, "")).resolve() == Path(current[key]).resolve()
            return saved.get(key) == current[key]

        changed = [f"{key}: {saved.get(key)!r} → {current[key]!r}" for key in _FIXED_ON_RESTART
                   if not same(key)]
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

    def _take_snapshot(self, engine, step: int, trajectory, thermo: ThermoCSV) -> dict[str, Any]:
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
        atoms = read_structure(settings.structure, settings.frame)
        validate_settings(settings, atoms)
        record = self._read_checkpoint() if self.restart else None
        if record is None and not self.overwrite and self.checkpoint_path.exists():
            raise ValueError(f"{self.directory} holds a previous run ({self.checkpoint_path}); "
                             "continue it with --restart or start afresh with --overwrite")
        self.directory.mkdir(parents=True, exist_ok=True)
        if record is None:
            # a fresh run: a stale checkpoint of an earlier run must not survive a crash of
            # this one before its first checkpoint
            self.checkpoint_path.unlink(missing_ok=True)
        engine_class = OpenMMEngine if settings.engine == "openmm" else ASEEngine
        engine = engine_class(settings, atoms)
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
            _close_outputs((trajectory, thermo), keep_first_error=failed)

    def _write_failure_note(self) -> str:
        """What is left after a failed write and how to go on."""
        if self._checkpoint_step is None:
            return "the run stopped before its first checkpoint"
        return (f"the run stopped; {self.checkpoint_path} (step {self._checkpoint_step}) is "
                "intact: free space and continue with --restart")

    def _loop(self, engine, step: int, resumed: dict[str, Any] | None, trajectory,
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
                        simulated_ns = (step - step_mark) * settings.timestep_ps * 1e-3
                        speed = simulated_ns * 86400.0 / (now - wall_mark)
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

    def _check(self, engine, step: int, last_good: dict[str, Any] | None, trajectory,
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
