"""Energy conservation of an exported model in NVE (VelocityVerlet, 1 fs, fcc Cu).

Random weights give unphysical dynamics, so a tiny NequIP is first fitted (about a hundred Adam
steps, inside the test) to ASE EMT energies and forces of rattled and strained Cu cells. The
fit is cached per process (`fitted_copper_model`) and reused by test_ase_calculator.py.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md import velocitydistribution
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from ase.units import fs

from equimd.deploy.export import export_model
from equimd.md_drivers.ase import EquimdCalculator
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import collate, configuration_to_graph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import TEST_HYPERPARAMETERS, build_model
from equimd.potentials.train.config import model_hyperparameter_defaults
from tests.model_zoo import CONTRACT_MODELS

R_MAX = 4.0
DRIFT_BOUND = 1e-3  # eV/atom/ps (= 1 meV/atom/ps)


def copper_cell(repeat: int = 2):
    """fcc Cu, cubic cell repeated `repeat`³ times (4·repeat³ atoms)."""
    return bulk("Cu", "fcc", a=3.61, cubic=True) * (repeat, repeat, repeat)


def emt_training_set(count: int = 6, seed: int = 0) -> list[Configuration]:
    """Rattled (0.05–0.2 Å) and strained (±3 %) 32-atom Cu cells labelled by ASE's EMT."""
    rng = np.random.default_rng(seed)
    configs = []
    for index in range(count):
        atoms = copper_cell()
        strain = np.eye(3) + np.diag(rng.uniform(-0.03, 0.03, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.rattle(stdev=0.05 + 0.15 * index / count, seed=int(rng.integers(1 << 31)))
        atoms.calc = EMT()
        config = Configuration.from_atoms(atoms, source=f"emt {index}")
        config.energy = atoms.get_potential_energy()
        config.forces = atoms.get_forces()
        configs.append(config)
    return configs


# the NequIP every NVE, ASE-calculator and long-run test shares (test_nve_energy_drift_over_2_ps)
COPPER_NEQUIP = dict(l_max=1, num_features=8, num_layers=2, radial_mlp_hidden=[16])


@functools.cache
def fitted_copper_model(steps: int = 300, seed: int = 0, model_type: str = "nequip") -> torch.nn.Module:
    """A tiny float64 model for Cu fitted to EMT (energy per atom + forces, Adam): NequIP
    (`COPPER_NEQUIP`) by default, any other registered model in its test configuration.

    300 steps (120 until 2026-12-06): NequIP's seeded initialisation changed that day (its
    first self-connections no longer draw a discarded set of e3nn weights first; the same
    weights train identically, checked), and from the new one 120 steps left 60 % relative
    force error, 200 steps 29 %, 300 steps 21 % (the old fit's ~20 %).

    Cached: the test modules that need a physically sensible model share one fit.
    """
    configs = emt_training_set(seed=seed)
    hyperparameters = dict(COPPER_NEQUIP) if model_type == "nequip" else dict(TEST_HYPERPARAMETERS[model_type])
    if "avg_num_neighbors" in model_hyperparameter_defaults(model_type):
        hyperparameters["avg_num_neighbors"] = 18.0  # fcc Cu within 4 Å: 12 + 6 neighbours
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_type, species=[29], r_max=R_MAX, **hyperparameters).double()
    energies = np.array([c.energy / c.n_atoms for c in configs])
    force_rms = float(np.sqrt(np.mean(np.concatenate([c.forces.ravel() for c in configs]) ** 2)))
    model.scale_shift.set_statistics([float(energies.mean())], scale=force_rms, shift=0.0)
    batch = collate([configuration_to_graph(c, R_MAX) for c in configs])
    n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).double()
    forcefield = ForceField(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        out = forcefield(batch, compute_forces=True, training=True)
        energy_loss = torch.mean(((out["energy"] - batch.energy) / n_atoms) ** 2)
        force_loss = torch.mean((out["forces"] - batch.forces) ** 2)
        (100.0 * energy_loss + force_loss).backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return model


def energy_drift(model_path, steps: int, seed: int = 1, temperature: float = 300.0) -> dict[str, float]:
    """Run NVE with VelocityVerlet at 1 fs; return the drift of the total energy
    (slope of a linear fit, eV/atom/ps), its RMS fluctuation (eV/atom) and the mean T (K)."""
    atoms = copper_cell(2)
    atoms.rattle(0.02, seed=seed)
    atoms.calc = EquimdCalculator(model_path, compute_stress=False)
    # ASE ≥ 3.29 names it thermalize_momenta; MaxwellBoltzmannDistribution before
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or (
        velocitydistribution.MaxwellBoltzmannDistribution
    )
    thermalize(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dynamics = VelocityVerlet(atoms, timestep=1.0 * fs)
    times, totals, temperatures = [], [], []

    def record() -> None:
        times.append(dynamics.get_time() / (1000 * fs))  # ps
        totals.append(atoms.get_total_energy() / len(atoms))
        temperatures.append(atoms.get_temperature())

    dynamics.attach(record, interval=10)
    dynamics.run(steps)
    slope, intercept = np.polyfit(times, totals, 1)
    residual = np.asarray(totals) - (slope * np.asarray(times) + intercept)
    return {
        "drift": float(slope),
        "fluctuation": float(np.sqrt(np.mean(residual**2))),
        "temperature": float(np.mean(temperatures)),
    }


@pytest.fixture(scope="module")
def copper_model_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("nve")
    return {
        dtype: export_model(fitted_copper_model(), directory / f"cu_{dtype}.pt", dtype=dtype)
        for dtype in ("float64", "float32")
    }


def test_fitted_model_reproduces_emt(copper_model_files):
    atoms = copper_cell()
    atoms.rattle(0.1, seed=42)
    atoms.calc = EMT()
    reference = atoms.get_forces()
    atoms.calc = EquimdCalculator(copper_model_files["float64"])
    force_error = np.sqrt(np.mean((atoms.get_forces() - reference) ** 2))
    # a quick fit (about 20 % force error), not a production model: enough for stable MD
    assert force_error < 0.3 * np.sqrt(np.mean(reference**2))


def test_nve_energy_drift_over_2_ps(copper_model_files):
    """float64 export, 2000 steps of 1 fs, 32 Cu atoms at about 150 K: |drift| < 1 meV/atom/ps."""
    result = energy_drift(copper_model_files["float64"], steps=2000)
    assert 100.0 < result["temperature"] < 300.0  # equipartition: about half of 300 K
    assert abs(result["drift"]) < DRIFT_BOUND, result


@pytest.mark.slow
def test_nve_energy_drift_float32(copper_model_files):
    """The float32 export (the MD default) conserves energy within the same bound."""
    result = energy_drift(copper_model_files["float32"], steps=2000)
    assert abs(result["drift"]) < DRIFT_BOUND, result


@pytest.mark.slow
@pytest.mark.parametrize("model_type", [name for name in CONTRACT_MODELS if name != "nequip"])
def test_nve_energy_drift_of_every_model(model_type, tmp_path):
    """Every registered model (its test configuration, fitted to EMT copper like the NequIP
    above) conserves energy in float64 NVE: a smooth energy, forces = −dE/dr, no cutoff jump."""
    path = export_model(fitted_copper_model(model_type=model_type), tmp_path / "cu.pt", dtype="float64")
    result = energy_drift(path, steps=1000)
    assert 50.0 < result["temperature"] < 400.0, result  # no blow-up
    assert abs(result["drift"]) < DRIFT_BOUND, result
