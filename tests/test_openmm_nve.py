"""Energy conservation in OpenMM NVE (VerletIntegrator, 0.5 fs) with the TorchForce.

A random NequIP with a small energy scale is smooth (polynomial cutoff envelope, no
singularities for the distances met here), so velocity Verlet must conserve its energy: the
total energy drift is bounded and its fluctuation is a small fraction of the potential
energy's. Default: 0.1 ps; slow: 2 ps in float64 (0.5 fs) and in float32 (1 fs, as MD runs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch  # noqa: F401
from ase.build import bulk

from equimd.md_drivers.openmm import EV_TO_KJ_PER_MOL, create_torch_force
from tests.test_openmm import model_file


def copper_box():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=11)
    return atoms


def run_nve(model_path, picoseconds: float, timestep_fs: float = 0.5, platform: str = "CPU",
            temperature: float = 300.0, samples: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(time ps [samples+1], Epot and Etot eV per atom [samples+1, 2]) of an NVE run."""
    import openmm
    from openmm import unit

    atoms = copper_box()
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*(row / 10)) for row in atoms.cell.array])
    system.addForce(create_torch_force(model_path, atoms.numbers, periodic=True))
    integrator = openmm.VerletIntegrator(timestep_fs * unit.femtosecond)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
    context.setPositions(atoms.get_positions() / 10)
    context.setVelocitiesToTemperature(temperature * unit.kelvin, 3)
    steps = int(round(picoseconds * 1000 / timestep_fs))
    every = max(steps // samples, 1)
    times, energies = [], []
    for index in range(steps // every + 1):
        if index:
            integrator.step(every)
        state = context.getState(getEnergy=True)
        epot = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        ekin = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        times.append(state.getTime().value_in_unit(unit.picosecond))
        energies.append([epot / EV_TO_KJ_PER_MOL, (epot + ekin) / EV_TO_KJ_PER_MOL])
    return np.array(times), np.array(energies) / len(atoms)


def assert_energy_conserved(times, energies, drift_bound: float, fluctuation_ratio: float):
    epot, etot = energies[:, 0], energies[:, 1]
    drift = np.polyfit(times, etot, 1)[0]  # eV/atom/ps
    assert abs(drift) < drift_bound, f"drift {drift:.3g} eV/atom/ps"
    assert np.std(etot) < fluctuation_ratio * np.std(epot), (np.std(etot), np.std(epot))


def test_nve_conserves_energy_short_float64():
    times, energies = run_nve(model_file("float64", 0.3), picoseconds=0.1, samples=50)
    assert times[-1] == pytest.approx(0.1)
    assert_energy_conserved(times, energies, drift_bound=1e-5, fluctuation_ratio=1e-3)


@pytest.mark.slow
def test_nve_conserves_energy_for_2ps_float64():
    times, energies = run_nve(model_file("float64", 0.3), picoseconds=2.0)
    assert times[-1] == pytest.approx(2.0)
    assert_energy_conserved(times, energies, drift_bound=1e-5, fluctuation_ratio=1e-3)


@pytest.mark.slow
def test_nve_conserves_energy_for_2ps_float32_at_1fs():
    times, energies = run_nve(model_file("float32", 0.3), picoseconds=2.0, timestep_fs=1.0)
    assert_energy_conserved(times, energies, drift_bound=1e-4, fluctuation_ratio=1e-2)
