"""OpenMM forces (TorchForce and PythonForce) against the deployed model, after unit conversion.

The model files are small random NequIPs exported once per test session (`model_file`) and
shared with test_openmm_ml.py and test_md_run.py.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from equimd.md_drivers.openmm import (
    EV_TO_KJ_PER_MOL,
    FORCE_TO_KJ_PER_MOL_NM,
    ModelSpeciesError,
    create_python_force,
    create_torch_force,
)

SPECIES = [1, 6, 7, 8, 29]
_SCRATCH = Path(tempfile.mkdtemp(prefix="equimd-openmm-tests-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


@functools.cache
def model_file(dtype: str = "float64", scale: float = 0.5, seed: int = 0,
               num_layers: int = 2) -> Path:
    """A small random NequIP (H, C, N, O, Cu; r_max 4 Å) exported as TorchScript, cached per
    session. `scale`: energy scale of the per-atom readout (eV), small → gentle forces."""
    from equimd.deploy.export import export_model
    from equimd.potentials.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("nequip", species=SPECIES, r_max=4.0, l_max=1, num_features=8,
                            num_layers=num_layers, avg_num_neighbors=8.0).double()
    model.scale_shift.set_statistics([-0.3, -1.1, -0.7, -0.9, -2.0], scale=scale, shift=0.01)
    path = _SCRATCH / f"nequip_{dtype}_{scale}_{seed}_{num_layers}.pt"
    return export_model(model, path, dtype=dtype)


def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.03, seed=1)
    return atoms


def periodic_box() -> Atoms:
    """12 atoms of H, C, N, O, Cu in a triclinic 7 Å box (OpenMM reduced form: lower
    triangular rows, a along x)."""
    rng = np.random.default_rng(2)
    cell = np.array([[7.0, 0.0, 0.0], [1.2, 6.8, 0.0], [-0.8, 1.1, 7.2]])
    numbers = np.array([1, 1, 6, 7, 8, 29, 1, 6, 8, 1, 7, 29])
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    fractional = (grid[rng.choice(len(grid), len(numbers), replace=False)] + 0.5) / 3.0
    atoms = Atoms(numbers=numbers, scaled_positions=fractional, cell=cell, pbc=True)
    atoms.rattle(0.15, seed=3)
    return atoms


@functools.cache
def loaded(model_path: Path):
    from equimd.deploy import load

    return load(model_path)


def reference(model_path: Path, atoms: Atoms) -> tuple[float, np.ndarray]:
    """Energy eV and forces eV/Å of the deployed module itself."""
    out = loaded(model_path)(atoms.get_positions(), atoms.numbers, atoms.cell.array, atoms.pbc)
    return float(out["energy"]), out["forces"].double().numpy()


def openmm_energy_forces(force, atoms: Atoms, platform: str, extra_particles: int = 0,
                         shift_nm: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """(energy kJ/mol, forces [N, 3] kJ/mol/nm) of a System holding `force` only.

    The ML atoms come first, then `extra_particles` (no ML force expected on them)."""
    import openmm
    from openmm import unit

    system = openmm.System()
    for mass in list(atoms.get_masses()) + [1.0] * extra_particles:
        system.addParticle(float(mass))
    if atoms.pbc.all():
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*(row / 10)) for row in atoms.cell.array])
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName(platform))
    positions = atoms.get_positions() / 10.0
    if shift_nm is not None:
        positions = positions + shift_nm
    rng = np.random.default_rng(4)
    positions = np.vstack([positions, rng.uniform(-1, 1, (extra_particles, 3))])
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return energy, np.asarray(forces)


def assert_close(actual: np.ndarray | float, expected: np.ndarray | float, rtol: float) -> None:
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    scale = max(float(np.abs(expected).max()), 1e-12)
    assert np.abs(actual - expected).max() <= rtol * scale, (actual, expected)


def test_unit_conversion_constants_match_openmm_unit():
    from openmm import unit

    ev = (1 * unit.elementary_charge * unit.volt * unit.AVOGADRO_CONSTANT_NA)
    assert EV_TO_KJ_PER_MOL == pytest.approx(ev.value_in_unit(unit.kilojoule_per_mole), rel=1e-15)
    assert FORCE_TO_KJ_PER_MOL_NM == pytest.approx(10 * EV_TO_KJ_PER_MOL, rel=1e-15)


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
@pytest.mark.parametrize("path", ["torch", "python"])
@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "triclinic_box"])
def test_openmm_energy_and_forces_equal_deployed_model(platform, path, periodic):
    atoms = periodic_box() if periodic else ethanol()
    model_path = model_file("float64")
    create = create_torch_force if path == "torch" else create_python_force
    force = create(loaded(model_path), atoms.numbers, periodic=periodic)
    energy, forces = openmm_energy_forces(force, atoms, platform)
    energy_ev, forces_ev = reference(model_path, atoms)
    assert_close(energy, energy_ev * EV_TO_KJ_PER_MOL, 1e-6)
    assert_close(forces, forces_ev * FORCE_TO_KJ_PER_MOL_NM, 1e-6)


def test_periodic_force_does_not_depend_on_the_image_openmm_reports():
    """OpenMM positions are not wrapped: whole-box shifts of atoms change nothing."""
    atoms = periodic_box()
    model_path = model_file("float64")
    cell_nm = atoms.cell.array / 10.0
    shift = np.array([[2, -1, 0]]) @ cell_nm + np.zeros((len(atoms), 3))
    shift[3] += cell_nm[2] * 3
    force = create_torch_force(loaded(model_path), atoms.numbers, periodic=True)
    energy, forces = openmm_energy_forces(force, atoms, "Reference", shift_nm=shift)
    energy_ev, forces_ev = reference(model_path, atoms)
    assert_close(energy, energy_ev * EV_TO_KJ_PER_MOL, 1e-6)
    assert_close(forces, forces_ev * FORCE_TO_KJ_PER_MOL_NM, 1e-6)


@pytest.mark.parametrize("path", ["torch", "python"])
def test_ml_subset_gets_model_forces_and_other_particles_none(path):
    atoms = ethanol()
    model_path = model_file("float64")
    # ML atoms first in the System; 5 extra particles after them
    create = create_torch_force if path == "torch" else create_python_force
    force = create(loaded(model_path), atoms.numbers, atoms_subset=list(range(len(atoms))))
    energy, forces = openmm_energy_forces(force, atoms, "Reference", extra_particles=5)
    energy_ev, forces_ev = reference(model_path, atoms)
    assert_close(energy, energy_ev * EV_TO_KJ_PER_MOL, 1e-6)
    assert_close(forces[: len(atoms)], forces_ev * FORCE_TO_KJ_PER_MOL_NM, 1e-6)
    assert np.all(forces[len(atoms):] == 0.0)


def test_ml_subset_in_any_order_of_the_system():
    """ML atoms scattered through the System: indices map positions and forces both ways."""
    import openmm
    from openmm import unit

    atoms = ethanol()
    model_path = model_file("float64")
    n_system = 15
    subset = [12, 3, 7, 0, 14, 5, 9, 1, 10]
    force = create_torch_force(loaded(model_path), atoms.numbers, atoms_subset=subset)
    system = openmm.System()
    for _ in range(n_system):
        system.addParticle(12.0)
    system.addForce(force)
    positions = np.random.default_rng(5).uniform(-2, 2, (n_system, 3))
    positions[subset] = atoms.get_positions() / 10.0
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    energy_ev, forces_ev = reference(model_path, atoms)
    assert_close(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                 energy_ev * EV_TO_KJ_PER_MOL, 1e-6)
    assert_close(np.asarray(forces)[subset], forces_ev * FORCE_TO_KJ_PER_MOL_NM, 1e-6)
    others = sorted(set(range(n_system)) - set(subset))
    assert np.all(np.asarray(forces)[others] == 0.0)


def test_float32_model_in_openmm_matches_its_deployed_module():
    atoms = periodic_box()
    model_path = model_file("float32")
    force = create_torch_force(model_path, atoms.numbers, periodic=True)
    energy, forces = openmm_energy_forces(force, atoms, "CPU")
    energy_ev, forces_ev = reference(model_path, atoms)
    assert_close(energy, energy_ev * EV_TO_KJ_PER_MOL, 1e-5)
    assert_close(forces, forces_ev * FORCE_TO_KJ_PER_MOL_NM, 1e-4)


def test_float32_model_run_in_float64_agrees_with_float64_export():
    atoms = ethanol()
    float32_model = loaded(model_file("float32"))
    force = create_torch_force(float32_model, atoms.numbers, dtype="float64")
    assert float32_model.dtype == torch.float32  # not modified
    energy, forces = openmm_energy_forces(force, atoms, "Reference")
    energy_ev, forces_ev = reference(model_file("float64"), atoms)
    assert_close(energy, energy_ev * EV_TO_KJ_PER_MOL, 1e-6)
    assert_close(forces, forces_ev * FORCE_TO_KJ_PER_MOL_NM, 1e-6)


@pytest.mark.parametrize("create", [create_torch_force, create_python_force])
def test_unknown_element_is_named_with_its_system_index(create):
    numbers = [6, 1, 16, 8]  # S is not in the model
    with pytest.raises(ModelSpeciesError, match=r"atom 42 is S \(Z=16\).*H, C, N, O, Cu"):
        create(loaded(model_file("float64")), numbers, atoms_subset=[40, 41, 42, 43])


def test_torch_force_names_a_non_finite_position():
    """Inside OpenMM's TorchForce (no Python checks run there) a NaN position stops the
    evaluation with a message naming the atom, not with NaN forces."""
    import openmm

    atoms = ethanol()
    force = create_torch_force(loaded(model_file("float64")), atoms.numbers)
    positions = atoms.get_positions() / 10.0
    positions[3, 1] = np.nan
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    with pytest.raises(openmm.OpenMMException, match="position of atom 3 is not finite"):
        context.getState(getEnergy=True, getForces=True)


def test_python_force_survives_xml_serialization_and_deepcopy():
    """openmm-ml's interpolation deep-copies the ML force: the computation must pickle."""
    import copy

    import openmm

    atoms = ethanol()
    force = create_python_force(loaded(model_file("float64")), atoms.numbers)
    clone = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(force))
    energy, forces = openmm_energy_forces(copy.deepcopy(clone), atoms, "Reference")
    energy_ev, forces_ev = reference(model_file("float64"), atoms)
    assert_close(energy, energy_ev * EV_TO_KJ_PER_MOL, 1e-6)
    assert_close(forces, forces_ev * FORCE_TO_KJ_PER_MOL_NM, 1e-6)


@pytest.mark.slow
def test_python_force_runs_an_aotinductor_model_and_torch_force_refuses_it():
    """The PythonForce path exists for AOTInductor packages (compiling takes minutes)."""
    from ase.build import bulk

    from equimd.deploy.export import export_model
    from equimd.potentials.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # Cu only, l_max 2, 16 features: torch 2.9.1's inductor generated C++ that does not
        # compile ("tmp190 was not declared") for the 5-species l_max 1 and l_max 2 models
        model = build_model("nequip", species=[29], r_max=4.0, l_max=2, num_features=16,
                            num_layers=2, avg_num_neighbors=8.0)
    model.scale_shift.set_statistics([-3.5], scale=0.5, shift=0.0)
    scripted = export_model(model, _SCRATCH / "nequip_cu_l2.pt", dtype="float32")
    aoti = export_model(model, _SCRATCH / "nequip_cu_l2.pt2", dtype="float32", format="aoti")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=5)
    energy, forces = openmm_energy_forces(
        create_python_force(aoti, atoms.numbers, periodic=True), atoms, "CPU")
    energy_ev, forces_ev = reference(scripted, atoms)  # same weights, TorchScript
    assert_close(energy, energy_ev * EV_TO_KJ_PER_MOL, 1e-5)
    assert_close(forces, forces_ev * FORCE_TO_KJ_PER_MOL_NM, 1e-4)
    with pytest.raises(ValueError, match="TorchForce cannot embed"):
        create_torch_force(aoti, atoms.numbers, periodic=True)
