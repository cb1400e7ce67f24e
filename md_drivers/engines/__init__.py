"""MD engines of `equimd md`: the interface the run loop drives, and the engines by name.

An engine owns the dynamics of one run (integrator, thermostat, barostat, the deployed model as
its force) and exposes what the loop in `equimd.md_drivers.run` needs: advance n steps, read
positions / cell / thermodynamic state, write trajectory frames, and take or restore an exact
snapshot for the checkpoint. Units at this interface are equimd's: Å, eV, K, steps; each engine
converts at its own boundary (OpenMM: nm, kJ/mol, ps).

    openmm  OpenMMEngine  TorchForce or PythonForce on all atoms; DCD trajectory
    ase     ASEEngine     EquimdCalculator with ASE dynamics; extxyz trajectory
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from equimd.md_drivers.engines.ase import ASEEngine
from equimd.md_drivers.engines.openmm import OpenMMEngine

if TYPE_CHECKING:
    from ase import Atoms

    from equimd.md_drivers.settings import MDSettings

__all__ = ["ENGINES", "ASEEngine", "MDEngine", "OpenMMEngine", "create_engine"]


class MDEngine(Protocol):
    """What the run loop needs from an engine (constructed as `Engine(settings, atoms)`).

    The constructor sets up the dynamics from `settings` (ensemble, time step, temperature,
    seed, ...) and the starting `atoms`, with their velocities if they carry any, else
    Maxwell-Boltzmann velocities at the target temperature with the centre of mass at rest.
    """

    trajectory_name: str
    """File name of the trajectory in the output directory (its format is the engine's)."""
    numbers: np.ndarray
    """[n_atoms] atomic numbers."""

    def describe(self) -> str:
        """One line for the run's header: engine, force path, platform or device."""
        ...

    def advance(self, steps: int) -> None:
        """Integrate `steps` time steps (may raise on non-finite coordinates)."""
        ...

    def positions(self) -> np.ndarray:
        """[n_atoms, 3] Å, unwrapped."""
        ...

    def cell(self) -> np.ndarray:
        """[3, 3] Å, rows are the cell vectors (zeros without periodicity)."""
        ...

    def pbc(self) -> np.ndarray:
        """[3] bool periodicity."""
        ...

    def thermo(self) -> dict[str, float]:
        """Current state: `T_K` (K), `Epot_eV`, `Ekin_eV` (eV), `volume_A3` (Å³, NaN if not
        periodic)."""
        ...

    def open_trajectory(self, path: Path, offset: int | None, frames: int) -> Any:
        """The trajectory writer; `offset` (bytes) and `frames` are a checkpoint's on restart
        (the file is cut back to `offset`), `None` and 0 on a fresh start."""
        ...

    def write_frame(self, trajectory: Any, step: int) -> None:
        """Append the current state as the frame of `step`."""
        ...

    def write_topology(self, path: Path) -> None:
        """Write the starting structure to read the trajectory with (a no-op if not needed)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """The engine state as JSON-serialisable data, restored exactly by `restore`."""
        ...

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from a `snapshot` (possibly taken by another process)."""
        ...

    def close(self) -> None:
        """Release what the engine holds (contexts, device memory); it is not used after."""
        ...


ENGINES: dict[str, type[MDEngine]] = {"openmm": OpenMMEngine, "ase": ASEEngine}
"""Engine name (`--engine`) → engine class."""


def create_engine(settings: MDSettings, atoms: Atoms) -> MDEngine:
    """The engine `settings.engine` set up for `atoms` (see `MDEngine`)."""
    return ENGINES[settings.engine](settings, atoms)
