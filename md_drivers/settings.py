"""Settings of an `equimd md` run: the dataclass stored in the checkpoint, the command-line
arguments that fill it, and the checks made before a run starts or restarts."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from equimd.devices import check_device
from equimd.errors import SettingsError
from equimd.units import PS_PER_FS

if TYPE_CHECKING:
    from ase import Atoms

FIXED_ON_RESTART = (
    "engine", "ensemble", "timestep_fs", "temperature_K", "pressure_bar", "friction_per_ps",
    "barostat_every", "traj_every", "thermo_every", "seed", "force_path", "model", "structure",
    "frame", "trajectory_format",
)
"""Settings that must not change on --restart (they change the trajectory)."""

TRAJECTORY_FORMATS = ("extxyz", "dcd")

# what a checkpoint written before a setting existed ran with
LEGACY_SETTINGS = {"trajectory_format": lambda saved: "dcd" if saved.get("engine") == "openmm"
                   else "extxyz"}


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
    trajectory_format: str = "extxyz"
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
        return self.timestep_fs * PS_PER_FS


def add_md_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `equimd md` (see `equimd.md_drivers.run`)."""
    parser.add_argument("structure", help="starting structure (extxyz, PDB, anything ase.io reads)")
    parser.add_argument("--model", required=True, help="deployed model file (equimd deploy)")
    parser.add_argument("--engine", choices=("openmm", "ase"), default="openmm",
                        help="MD engine")
    parser.add_argument("--ensemble", choices=("nve", "nvt", "npt"), default="nvt",
                        help="nve: velocity Verlet; nvt: Langevin; npt: Langevin + barostat "
                        "(OpenMM MonteCarloBarostat, ASE Berendsen)")
    parser.add_argument("--timestep", type=float, default=1.0, help="time step, fs")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="K: thermostat target and initial velocities")
    parser.add_argument("--pressure", type=float, default=1.0, help="bar, NPT")
    parser.add_argument("--friction", type=float, default=1.0,
                        help="Langevin friction, 1/ps")
    parser.add_argument("--barostat-every", type=int, default=25,
                        help="steps between OpenMM Monte Carlo volume moves")
    parser.add_argument("--steps", type=int, default=1000, help="total steps of the run")
    parser.add_argument("--seed", type=int, default=0, help="velocities and thermostat noise")
    parser.add_argument("--frame", type=int, default=-1,
                        help="frame of STRUCTURE to start from (-1: the last)")
    parser.add_argument("-o", "--output", default="md_out",
                        help="output directory")
    parser.add_argument("--traj-every", type=int, default=100, help="steps between frames")
    parser.add_argument("--trajectory-format", choices=TRAJECTORY_FORMATS, default="extxyz",
                        help="extxyz: trajectory.extxyz, read back by ase.io.read (positions, "
                             "cell, energy; any engine); dcd: trajectory.dcd + topology.pdb "
                             "(OpenMM engine; VMD, MDTraj, MDAnalysis)")
    parser.add_argument("--thermo-every", type=int, default=100, help="steps between CSV rows")
    parser.add_argument("--checkpoint-every", type=int, default=1000,
                        help="steps between checkpoints")
    parser.add_argument("--check-every", type=int, default=0,
                        help="steps between NaN/close-contact checks (0: every --thermo-every steps)")
    parser.add_argument("--min-distance", type=float, default=0.5,
                        help="stop if two atoms come closer than this, Å (0: no check)")
    parser.add_argument("--platform", default=None,
                        help="OpenMM platform: Reference, CPU, CUDA, OpenCL (None: the fastest available)")
    parser.add_argument("--device", default=None,
                        help="torch device for ASE / --force-path python (None: cuda if "
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
    """The run's settings from parsed `equimd md` arguments (--restart and --overwrite are not
    settings: they say how to treat the output directory)."""
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
        trajectory_format=args.trajectory_format,
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


def validate_settings(settings: MDSettings, atoms: Atoms) -> None:
    """Raise `SettingsError` naming the option, its value and what is valid if `settings`
    cannot run on `atoms`."""
    positive = {"--timestep": settings.timestep_fs, "--traj-every": settings.traj_every,
                "--thermo-every": settings.thermo_every,
                "--checkpoint-every": settings.checkpoint_every,
                "--barostat-every": settings.barostat_every}
    for name, value in positive.items():
        if not value > 0:  # also catches NaN
            raise SettingsError(f"{name} must be positive, got {value}")
    not_negative = {"--steps": settings.steps, "--temperature": settings.temperature_K,
                    "--friction": settings.friction_per_ps,
                    "--check-every": settings.check_every,
                    "--min-distance": settings.min_distance_A}
    for name, value in not_negative.items():
        if not value >= 0:
            unit = {"--temperature": " K (absolute temperature)", "--friction": " 1/ps",
                    "--min-distance": " Å"}.get(name, "")
            raise SettingsError(f"{name} must be >= 0, got {value}{unit}")
    if settings.trajectory_format not in TRAJECTORY_FORMATS:
        raise SettingsError(f"--trajectory-format {settings.trajectory_format!r} is not one of "
                            f"{', '.join(TRAJECTORY_FORMATS)}")
    if settings.trajectory_format == "dcd" and settings.engine != "openmm":
        raise SettingsError("--trajectory-format dcd needs --engine openmm (the ASE engine "
                            "writes extxyz)")
    if settings.device is not None:
        check_device(settings.device, option="--device")
    if settings.ensemble == "npt" and not atoms.pbc.all():
        raise SettingsError(f"{settings.structure}: NPT needs a fully periodic structure "
                            f"(pbc is {atoms.pbc.tolist()})")
    if settings.engine == "openmm" and atoms.pbc.any() and not atoms.pbc.all():
        raise SettingsError(f"{settings.structure}: OpenMM treats a system as fully periodic or "
                            f"not at all (pbc is {atoms.pbc.tolist()}); use --engine ase for slabs")


def changed_on_restart(saved: dict[str, Any], settings: MDSettings) -> list[str]:
    """The settings of `FIXED_ON_RESTART` that differ between a checkpoint's `saved` settings
    and `settings`, as "key: old → new" (model and structure compare as resolved paths)."""
    current = asdict(settings)

    def same(key: str) -> bool:
        if key in ("model", "structure"):  # the same file, however it is spelled
            return Path(saved.get(key, "")).resolve() == Path(current[key]).resolve()
        return value(key) == current[key]

    def value(key: str) -> Any:
        if key not in saved and key in LEGACY_SETTINGS:
            return LEGACY_SETTINGS[key](saved)
        return saved.get(key)

    return [f"{key}: {value(key)!r} → {current[key]!r}" for key in FIXED_ON_RESTART
            if not same(key)]
