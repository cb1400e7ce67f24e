"""The OpenMM engine of `equimd md`: a pure-ML System (TorchForce or PythonForce on all atoms),
a Verlet or Langevin integrator, a Monte Carlo barostat for NPT; extxyz (default) or DCD
trajectory.

Units change here, with the constants of `equimd.units`: OpenMM works in nm, ps and kJ/mol,
the engine interface in Å, fs and eV.
"""

from __future__ import annotations

import base64
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from equimd.deploy.load import repeatable_execution
from equimd.errors import SettingsError
from equimd.md_drivers.engines.common import default_device, has_velocities
from equimd.md_drivers.reporters import DCDTrajectory, ExtxyzTrajectory
from equimd.units import (
    ANGSTROM_TO_NM,
    ASE_TIME_PER_FS,
    EV_TO_KJ_PER_MOL,
    FS_PER_PS,
    NM_TO_ANGSTROM,
)

if TYPE_CHECKING:
    from ase import Atoms

    from equimd.md_drivers.settings import MDSettings


class OpenMMEngine:
    """A pure-ML OpenMM System (TorchForce or PythonForce on all atoms) and its integrator."""


    def __init__(self, settings: MDSettings, atoms: Atoms) -> None:
        import openmm

        self.settings = settings
        platform = _platform(settings.platform) if settings.platform else None  # refuse early
        self.numbers = atoms.get_atomic_numbers()
        self.periodic = bool(atoms.pbc.all())
        if self.periodic:
            atoms, changed = reduced_box_frame(atoms)
            if changed:
                print("equimd md: the periodic cell was rotated to OpenMM's reduced box form "
                      f"(rows {np.round(atoms.cell.array, 4).tolist()} Å, same lattice and "
                      "structure); trajectory and checkpoints use this frame", file=sys.stderr)
        n_atoms = len(atoms)
        self.system, self.topology, box = _system_and_topology(settings, atoms, self.periodic)
        self.dof = 3 * n_atoms - 3 if n_atoms > 1 else 3
        self.integrator = _integrator(settings, self.system)
        if platform is not None:
            self.context = openmm.Context(self.system, self.integrator, platform)
        else:
            self.context = openmm.Context(self.system, self.integrator)
        self.platform = self.context.getPlatform().getName()
        self.context.setPositions(atoms.get_positions() / NM_TO_ANGSTROM)
        if self.periodic:
            self.context.setPeriodicBoxVectors(*box)
        self._set_initial_velocities(atoms)
        self._state = None

    def _set_initial_velocities(self, atoms: Atoms) -> None:
        """The structure's velocities, else Maxwell-Boltzmann at the target temperature; the
        centre-of-mass velocity zeroed now, not at the CMMotionRemover's first step (that would
        change the kinetic energy by a jump between the first two thermo rows)."""
        from openmm import unit

        if has_velocities(atoms):
            # Å per ASE time unit → nm/ps
            velocities = atoms.get_velocities() * ANGSTROM_TO_NM * (FS_PER_PS * ASE_TIME_PER_FS)
            self.context.setVelocities(velocities)
        else:
            self.context.setVelocitiesToTemperature(self.settings.temperature_K,
                                                    openmm_seed(self.settings.seed))
        masses = atoms.get_masses()[:, None]
        velocities = self.context.getState(getVelocities=True).getVelocities(asNumpy=True)
        velocities = velocities.value_in_unit(unit.nanometer / unit.picosecond)
        velocities -= (masses * velocities).sum(axis=0) / masses.sum()
        self.context.setVelocities(velocities)

    def describe(self) -> str:
        return f"OpenMM {self.settings.force_path} force on platform {self.platform}"

    def advance(self, steps: int) -> None:
        self._state = None  # also when step() raises: positions are then read afresh
        with repeatable_execution():  # TorchForce runs in this thread: a restart repeats bitwise
            self.integrator.step(steps)

    def _current(self):
        if self._state is None:
            with repeatable_execution():
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

        state = self._current()
        epot = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
        ekin_kj = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        k_boltzmann = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
        volume = float(abs(np.linalg.det(self.cell()))) if self.periodic else math.nan
        return {"T_K": 2.0 * ekin_kj / (self.dof * k_boltzmann), "Epot_eV": epot,
                "Ekin_eV": ekin_kj / EV_TO_KJ_PER_MOL, "volume_A3": volume}

    @property
    def trajectory_name(self) -> str:
        return f"trajectory.{self.settings.trajectory_format}"

    def open_trajectory(self, path: Path, offset: int | None,
                        frames: int) -> DCDTrajectory | ExtxyzTrajectory:
        if self.settings.trajectory_format == "dcd":
            return DCDTrajectory(path, self.topology, self.settings.timestep_ps,
                                 self.settings.traj_every, 0, offset, frames)
        return ExtxyzTrajectory(path, offset)

    def write_frame(self, trajectory: DCDTrajectory | ExtxyzTrajectory, step: int) -> None:
        if isinstance(trajectory, DCDTrajectory):
            box = self.cell() / NM_TO_ANGSTROM if self.periodic else None
            trajectory.write(self.positions() / NM_TO_ANGSTROM, box)
            return
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        frame = Atoms(numbers=self.numbers, positions=self.positions(), cell=self.cell(),
                      pbc=self.pbc())
        frame.calc = SinglePointCalculator(frame, energy=self.thermo()["Epot_eV"])
        trajectory.write(frame, step, step * self.settings.timestep_ps)

    def write_topology(self, path: Path) -> None:
        """topology.pdb, which a DCD trajectory needs to be read (not written for extxyz)."""
        import openmm.app as app

        if self.settings.trajectory_format != "dcd":
            return

        with open(path, "w") as handle:
            app.PDBFile.writeFile(self.topology, self.positions() / NM_TO_ANGSTROM, handle)

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

    def close(self) -> None:
        """Drop the Context and integrator (platform memory, the model in the force) now."""
        self._state = None
        self.context = self.integrator = None


def reduced_box_frame(atoms: Atoms) -> tuple[Atoms, bool]:
    """`atoms` rotated (positions, momenta and cell together) and its cell vectors recombined
    into OpenMM's reduced form: a = (a_x, 0, 0), b = (b_x, b_y, 0), c = (c_x, c_y, c_z) with
    positive diagonal, |b_x| ≤ a_x/2, |c_x| ≤ a_x/2, |c_y| ≤ b_y/2. A rotation and a change of
    lattice basis change neither energies nor forces (up to the rotation); a left-handed cell
    gets c → −c first (the same lattice). Returns (atoms, whether anything changed)."""
    from ase.cell import Cell

    cell = atoms.cell.array.copy()
    if np.linalg.det(cell) < 0:
        cell[2] = -cell[2]
    lower, rotation = Cell(cell).standard_form()  # lower @ rotation = cell
    a, b, c = (np.array(vector) for vector in lower.array)
    c = c - np.round(c[1] / b[1]) * b
    c = c - np.round(c[0] / a[0]) * a
    b = b - np.round(b[0] / a[0]) * a
    reduced = atoms.copy()
    reduced.set_cell(np.array([a, b, c]), scale_atoms=False)
    reduced.positions = atoms.positions @ rotation.T
    if atoms.has("momenta"):
        reduced.set_momenta(atoms.get_momenta() @ rotation.T)
    changed = not np.allclose(reduced.cell.array, atoms.cell.array, rtol=0, atol=1e-12)
    return reduced, changed


def _system_and_topology(settings: MDSettings, atoms: Atoms, periodic: bool):
    """(System with the model's force on all atoms and a CMMotionRemover, Topology with one
    residue, box vectors in nm as Vec3s or None)."""
    import openmm
    import openmm.app as app
    from openmm import unit

    from equimd.md_drivers.openmm import create_force

    numbers = atoms.get_atomic_numbers()
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))
    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue("MOL", chain)
    for index, z in enumerate(numbers):
        element = app.Element.getByAtomicNumber(int(z))
        topology.addAtom(f"{element.symbol}{index + 1}"[:4], element, residue)
    box = None
    if periodic:
        box = [openmm.Vec3(*(row / NM_TO_ANGSTROM)) for row in atoms.cell.array]
        system.setDefaultPeriodicBoxVectors(*box)
        topology.setPeriodicBoxVectors(box * unit.nanometer)
    options: dict[str, Any] = {}
    if settings.force_path == "python":
        options["device"] = settings.device or default_device()
    system.addForce(create_force(settings.model, numbers, None, periodic,
                                 path=settings.force_path, **options))
    system.addForce(openmm.CMMotionRemover())
    return system, topology, box


def _integrator(settings: MDSettings, system):
    """Verlet (NVE) or Langevin middle (NVT, NPT) integrator; adds the Monte Carlo barostat to
    `system` for NPT. Both are seeded from `settings.seed`."""
    import openmm

    dt = settings.timestep_ps
    if settings.ensemble == "nve":
        integrator = openmm.VerletIntegrator(dt)
    else:
        integrator = openmm.LangevinMiddleIntegrator(
            settings.temperature_K, settings.friction_per_ps, dt)
        integrator.setRandomNumberSeed(openmm_seed(settings.seed))
    if settings.ensemble == "npt":
        barostat = openmm.MonteCarloBarostat(
            settings.pressure_bar, settings.temperature_K, settings.barostat_every)
        barostat.setRandomNumberSeed(openmm_seed(settings.seed + 1))
        system.addForce(barostat)
    return integrator


def _platform(name: str):
    """The OpenMM platform `name`, or `SettingsError` naming the platforms this machine has
    (CUDA and OpenCL are listed only where their drivers load)."""
    import openmm

    available = [openmm.Platform.getPlatform(i).getName()
                 for i in range(openmm.Platform.getNumPlatforms())]
    if name not in available:
        missing = (" (its plugin did not load: no GPU or driver on this machine?)"
                   if name in ("CUDA", "OpenCL", "HIP") else "")
        raise SettingsError(f"--platform {name}: no such OpenMM platform here{missing}; "
                            f"available: {', '.join(available)}")
    return openmm.Platform.getPlatformByName(name)


def openmm_seed(seed: int) -> int:
    """`seed` as an OpenMM random seed: OpenMM treats 0 as "pick one at random", so every seed
    maps to a fixed non-zero int32."""
    return int(seed) % 2_147_483_646 + 1
