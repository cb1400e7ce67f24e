"""The ASE calculator on deployed model files: derivatives, changing systems, errors, state."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from equimd.deploy import UnknownElementError, load
from equimd.deploy.export import export_model
from equimd.md_drivers.ase import Calculator, EquimdCalculator
from tests.model_zoo import STRUCTURES, nequip_small
from tests.test_nve import copper_cell, fitted_copper_model


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """{dtype: path} of TorchScript exports of the zoo model (species H, C, O, Cu)."""
    directory = tmp_path_factory.mktemp("ase")
    model = nequip_small()
    return {
        dtype: export_model(model, directory / f"{dtype}.pt", dtype=dtype)
        for dtype in ("float64", "float32")
    }


@pytest.fixture(scope="module")
def model64(model_files):
    """The float64 file loaded once; calculators built on it start with no results."""
    return load(model_files["float64"])


@pytest.mark.parametrize("structure", ["molecule", "triclinic_cu", "slab"])
def test_forces_are_negative_gradient_of_ase_energy(model64, structure):
    atoms = STRUCTURES[structure]()
    atoms.calc = EquimdCalculator(model=model64)
    forces = atoms.get_forces()
    numerical = calculate_numerical_forces(atoms, eps=1e-5, iatoms=[0, 1, len(atoms) - 1])
    np.testing.assert_allclose(forces[[0, 1, -1]], numerical[[0, 1, -1]], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("structure", ["triclinic_cu", "periodic_mixed_species", "small_cell"])
def test_stress_is_finite_strain_derivative(model64, structure):
    atoms = STRUCTURES[structure]()
    atoms.calc = EquimdCalculator(model=model64)
    stress = atoms.get_stress()  # Voigt xx yy zz yz xz xy
    assert stress.shape == (6,)
    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(stress, numerical, rtol=1e-5, atol=1e-8)


def test_stress_only_for_3d_periodic_cells(model64):
    calculator = EquimdCalculator(model=model64)
    for name in ("molecule", "slab"):
        atoms = STRUCTURES[name]()
        atoms.calc = calculator
        atoms.get_forces()
        with pytest.raises(PropertyNotImplementedError, match="3D-periodic"):
            atoms.get_stress()


def test_per_atom_energies_sum_to_energy(model64):
    atoms = STRUCTURES["periodic_mixed_species"]()
    atoms.calc = EquimdCalculator(model=model64)
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()


def test_atom_count_species_and_pbc_may_change_between_calls(model_files):
    shared = EquimdCalculator(model_files["float64"])
    loaded = shared.model  # fresh calculators below share the loaded model, not the state
    sequence = [STRUCTURES["triclinic_cu"](), STRUCTURES["molecule"](),
                STRUCTURES["triclinic_cu"]() * (1, 2, 1), STRUCTURES["slab"](),
                STRUCTURES["periodic_mixed_species"]()]
    for atoms in sequence:
        atoms.calc = shared
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        fresh = atoms.copy()
        fresh.calc = EquimdCalculator(model=loaded)
        assert energy == pytest.approx(fresh.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(forces, fresh.get_forces(), atol=1e-10)
    # the same Atoms object, edited in place
    atoms = STRUCTURES["molecule"]()
    atoms.calc = shared
    before = atoms.get_potential_energy()
    del atoms[-1]
    atoms.numbers[0] = 29
    after = atoms.get_potential_energy()
    assert after != before and atoms.get_forces().shape == (len(atoms), 3)


def test_unknown_element_names_element_index_and_species(model_files):
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    atoms.numbers[1] = 26  # Fe
    atoms.calc = EquimdCalculator(model_files["float32"])
    with pytest.raises(UnknownElementError) as error:
        atoms.get_potential_energy()
    message = str(error.value)
    assert "atom 1 is Fe (Z=26)" in message and "H, C, O, Cu" in message


def test_float32_and_float64_agree(model_files):
    atoms = STRUCTURES["triclinic_cu"]()
    results = {}
    for dtype, path in model_files.items():
        atoms.calc = EquimdCalculator(path)
        assert atoms.calc.model.dtype == getattr(torch, dtype)
        results[dtype] = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
    assert results["float32"][0] == pytest.approx(results["float64"][0], rel=1e-5)
    np.testing.assert_allclose(results["float32"][1], results["float64"][1], atol=1e-4)
    np.testing.assert_allclose(results["float32"][2], results["float64"][2], atol=1e-5)
    # a float32 file converted on load runs in float64 arithmetic
    atoms.calc = Calculator(model_files["float32"], dtype="float64")
    assert atoms.calc.model.dtype == torch.float64
    assert atoms.get_potential_energy() == pytest.approx(results["float32"][0], rel=1e-6)


NO_GLOBAL_STATE_SCRIPT = """
import sys, torch
from ase.build import bulk
torch.set_num_threads(1)
before = (torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled(),
          torch.get_rng_state().clone())
from equimd.md_drivers.ase import EquimdCalculator
for path in sys.argv[1:]:
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    atoms.calc = EquimdCalculator(path)
    atoms.get_forces(), atoms.get_stress()
    with torch.no_grad():  # the calculator still differentiates, and restores grad mode
        atoms.rattle(0.01)
        atoms.get_forces()
        assert not torch.is_grad_enabled()
after = (torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled(),
         torch.get_rng_state())
assert before[:3] == after[:3], (before[:3], after[:3])
assert torch.equal(before[3], after[3])
print("OK", sorted(m for m in sys.modules if m.startswith("equimd.potentials")))
"""


def test_calculator_changes_no_global_torch_state(model_files):
    """In a fresh process (torch defaults untouched by other tests), float32 and float64."""
    completed = subprocess.run(
        [sys.executable, "-c", NO_GLOBAL_STATE_SCRIPT, str(model_files["float32"]),
         str(model_files["float64"])],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "OK []"  # and no potentials/training code imported


def test_cell_relaxation_reaches_zero_stress(tmp_path):
    """Positions and cell of a strained, rattled Cu cell relax to |stress| < 1e-3 eV/Å³
    (with a model fitted to EMT, judged by the model's own stress)."""
    path = export_model(fitted_copper_model(), tmp_path / "cu.pt", dtype="float64")
    atoms = copper_cell()
    atoms.set_cell(atoms.cell.array @ np.diag([1.03, 0.98, 1.01]), scale_atoms=True)
    atoms.rattle(0.03, seed=3)
    atoms.calc = EquimdCalculator(path)
    assert np.abs(atoms.get_stress()).max() > 5e-3
    optimizer = BFGS(FrechetCellFilter(atoms), logfile=None)
    assert optimizer.run(fmax=1e-4, steps=300)
    assert np.abs(atoms.get_stress()).max() < 1e-3
    assert np.abs(atoms.get_forces()).max() < 1e-3
