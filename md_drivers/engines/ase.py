"""The ASE engine of `equimd md`: the equimd calculator with ASE's VelocityVerlet (NVE),
Langevin (NVT) or NPTBerendsen (NPT); extxyz trajectory.

ASE's units (Å, eV, its own time and pressure units) are converted with the constants of
`equimd.units`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from equimd.md_drivers.engines.common import default_device, has_velocities
from equimd.md_drivers.reporters import ExtxyzTrajectory
from equimd.units import ASE_PRESSURE_PER_BAR, ASE_TIME_PER_FS, BOLTZMANN_EV_PER_K, FS_PER_PS

if TYPE_CHECKING:
    from ase import Atoms

    from equimd.md_drivers.settings import MDSettings

THERMOSTAT_TIME_FS = 100.0
"""NPTBerendsen temperature coupling time, fs."""
BAROSTAT_TIME_FS = FS_PER_PS
"""NPTBerendsen pressure coupling time, fs (1 ps)."""
COMPRESSIBILITY_PER_BAR = 4.57e-5
"""NPTBerendsen coupling scale: the compressibility of water, 1/bar."""


class ASEEngine:
    """ASE dynamics with the equimd calculator: VelocityVerlet, Langevin or NPTBerendsen."""

    trajectory_name = "trajectory.extxyz"

    def __init__(self, settings: MDSettings, atoms: Atoms) -> None:
        from ase.md.velocitydistribution import Stationary

        from equimd.md_drivers.ase import EquimdCalculator

        self.settings = settings
        self.atoms = atoms
        self.numbers = atoms.get_atomic_numbers()
        self.device = settings.device or default_device()
        atoms.calc = EquimdCalculator(settings.model, device=self.device)
        if not has_velocities(atoms):
            _thermalize(atoms, settings.temperature_K, np.random.default_rng(settings.seed))
            Stationary(atoms, preserve_temperature=False)
        self.rng = np.random.default_rng(settings.seed + 1)
        n_atoms = len(atoms)
        # degrees of freedom: the centre of mass is fixed except under Langevin noise
        self.dof = 3 * n_atoms if settings.ensemble == "nvt" or n_atoms == 1 else 3 * n_atoms - 3
        self.dynamics = self._dynamics()

    def _dynamics(self):
        from ase.md.langevin import Langevin
        from ase.md.nptberendsen import NPTBerendsen
        from ase.md.verlet import VelocityVerlet

        settings, atoms = self.settings, self.atoms
        dt = settings.timestep_fs * ASE_TIME_PER_FS
        if settings.ensemble == "nve":
            return VelocityVerlet(atoms, dt)
        if settings.ensemble == "nvt":
            friction = settings.friction_per_ps / (FS_PER_PS * ASE_TIME_PER_FS)
            # fixcm=False: ASE's fixcm=True Langevin does not sample NVT exactly (ASE ≥ 3.28)
            return Langevin(atoms, dt, temperature_K=settings.temperature_K,
                            friction=friction, fixcm=False, rng=self.rng)
        # Berendsen: stateless (exact restarts).
        # ASE's thermostat counts 3N degrees of freedom, but the centre of mass is at rest
        # (3N - 3): aim its kinetic temperature so that the true temperature is the target.
        target_K = settings.temperature_K * self.dof / (3 * len(atoms))
        return NPTBerendsen(
            atoms, dt, temperature_K=target_K,
            pressure_au=settings.pressure_bar * ASE_PRESSURE_PER_BAR,
            taut=THERMOSTAT_TIME_FS * ASE_TIME_PER_FS, taup=BAROSTAT_TIME_FS * ASE_TIME_PER_FS,
            compressibility_au=COMPRESSIBILITY_PER_BAR / ASE_PRESSURE_PER_BAR)

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
        volume = float(self.atoms.get_volume()) if self.atoms.pbc.all() else math.nan
        ekin = float(self.atoms.get_kinetic_energy())
        return {"T_K": 2.0 * ekin / (self.dof * BOLTZMANN_EV_PER_K),
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

    def close(self) -> None:
        """Nothing to release: the calculator and its model go with the engine."""


def _thermalize(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta (ASE ≥ 3.29 `thermalize_momenta`, else the older name)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
