"""Physics checks run for every model in `tests/model_zoo.MODEL_FACTORIES`: every registered
model in its test configuration (docs/models.md), and the extra variants listed there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from equimd.potentials.forcefield import ForceField
from equimd.potentials.nn.convolution import apply_convolution_backend, convolution_backend
from tests.model_zoo import MODEL_FACTORIES, STRUCTURES, batch_of, graph_of

MODELS = sorted(MODEL_FACTORIES)


@pytest.fixture(scope="module", params=MODELS)
def forcefield(request) -> ForceField:
    return ForceField(MODEL_FACTORIES[request.param]())


def evaluate(forcefield: ForceField, atoms, stress: bool = False) -> dict[str, np.ndarray]:
    out = forcefield(graph_of(atoms), compute_forces=True, compute_stress=stress)
    return {k: v.detach().numpy() for k, v in out.items()}


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_rotation_and_reflection_equivariance(forcefield, structure):
    """Rotations for every model; reflections (improper rotations) for the O(3) models only
    (`Potential.equivariance`; an SE(3) model is checked by the next test instead)."""
    atoms = STRUCTURES[structure]()
    reference = evaluate(forcefield, atoms)
    cases = [(0, False), (1, True)] if forcefield.potential.equivariance == "O(3)" else [(0, False)]
    for seed, reflect in cases:
        rotation = Rotation.random(random_state=seed).as_matrix()
        if reflect:
            rotation = -rotation  # improper rotation: inversion ∘ rotation
        rotated = atoms.copy()
        rotated.set_positions(atoms.get_positions() @ rotation.T)
        rotated.set_cell(atoms.get_cell().array @ rotation.T)
        out = evaluate(forcefield, rotated)
        np.testing.assert_allclose(out["energy"], reference["energy"], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(
            out["forces"], reference["forces"] @ rotation.T, rtol=1e-6, atol=1e-9
        )


def test_equivariance_group_is_as_declared(forcefield):
    """`equivariance` is "O(3)" or "SE(3)"; an SE(3) model tells a chiral molecule (rattled
    ethanol) from its mirror image — otherwise it is O(3) and must say so (the test above then
    checks reflections)."""
    group = forcefield.potential.equivariance
    assert group in ("O(3)", "SE(3)")
    if group == "O(3)":
        return
    atoms = STRUCTURES["molecule"]()
    mirrored = atoms.copy()
    mirrored.set_positions(atoms.get_positions() * np.array([1.0, 1.0, -1.0]))
    difference = evaluate(forcefield, mirrored)["energy"] - evaluate(forcefield, atoms)["energy"]
    assert np.abs(difference).max() > 1e-8, "an SE(3) model gives a mirror image the same energy"


@pytest.mark.parametrize("structure", ["molecule", "triclinic_cu", "slab"])
def test_translation_and_permutation_invariance(forcefield, structure):
    atoms = STRUCTURES[structure]()
    reference = evaluate(forcefield, atoms)
    moved = atoms.copy()
    moved.translate([1.3, -0.7, 2.1])
    out = evaluate(forcefield, moved)
    np.testing.assert_allclose(out["energy"], reference["energy"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(out["forces"], reference["forces"], rtol=1e-6, atol=1e-9)

    permutation = np.random.default_rng(0).permutation(len(atoms))
    permuted = atoms[permutation]
    out = evaluate(forcefield, permuted)
    np.testing.assert_allclose(out["energy"], reference["energy"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(out["forces"], reference["forces"][permutation], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("structure", ["molecule", "periodic_mixed_species", "small_cell"])
def test_forces_are_negative_energy_gradient(forcefield, structure):
    atoms = STRUCTURES[structure]()
    forces = evaluate(forcefield, atoms)["forces"]
    delta = 1e-5
    rng = np.random.default_rng(1)
    for atom in rng.choice(len(atoms), size=min(3, len(atoms)), replace=False):
        for axis in range(3):
            energies = []
            for sign in (+1, -1):
                displaced = atoms.copy()
                positions = displaced.get_positions()
                positions[atom, axis] += sign * delta
                displaced.set_positions(positions)
                energies.append(evaluate(forcefield, displaced)["energy"][0])
            numerical = -(energies[0] - energies[1]) / (2 * delta)
            assert numerical == pytest.approx(forces[atom, axis], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("structure", ["triclinic_cu", "periodic_mixed_species", "small_cell"])
def test_stress_is_strain_derivative(forcefield, structure):
    atoms = STRUCTURES[structure]()
    stress = evaluate(forcefield, atoms, stress=True)["stress"][0]
    np.testing.assert_allclose(stress, stress.T, atol=1e-12)
    delta = 1e-5
    volume = atoms.get_volume()
    cell = atoms.get_cell().array
    for i, j in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
        energies = []
        for sign in (+1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * delta / 2
            strain[j, i] += sign * delta / 2
            deformed = atoms.copy()
            deformed.set_cell(cell @ strain, scale_atoms=True)
            energies.append(evaluate(forcefield, deformed)["energy"][0])
        numerical = (energies[0] - energies[1]) / (2 * delta) / volume
        assert numerical == pytest.approx(stress[i, j], rel=1e-5, abs=1e-8)


def test_supercell_energy_is_extensive(forcefield):
    atoms = STRUCTURES["triclinic_cu"]()
    unit = evaluate(forcefield, atoms, stress=True)
    supercell = evaluate(forcefield, atoms * (2, 2, 2), stress=True)
    assert supercell["energy"][0] == pytest.approx(8 * unit["energy"][0], rel=1e-10)
    np.testing.assert_allclose(supercell["stress"], unit["stress"], rtol=1e-8, atol=1e-12)


def test_cell_smaller_than_cutoff_matches_supercell(forcefield):
    atoms = STRUCTURES["small_cell"]()
    atoms.rattle(0.0)
    unit = evaluate(forcefield, atoms)
    big = atoms * (3, 3, 3)
    supercell = evaluate(forcefield, big)
    assert unit["energy"][0] / len(atoms) == pytest.approx(
        supercell["energy"][0] / len(big), rel=1e-10
    )


def test_batch_equals_individual_structures(forcefield):
    structures = [STRUCTURES[name]() for name in sorted(STRUCTURES)]
    batched = forcefield(batch_of(structures), compute_stress=True)
    offset = 0
    for index, atoms in enumerate(structures):
        single = evaluate(forcefield, atoms, stress=True)
        n = len(atoms)
        assert batched["energy"][index].item() == pytest.approx(single["energy"][0], rel=1e-12)
        np.testing.assert_allclose(
            batched["forces"][offset : offset + n].detach().numpy(), single["forces"], atol=1e-12
        )
        np.testing.assert_allclose(
            batched["stress"][index].detach().numpy(), single["stress"][0], atol=1e-12
        )
        offset += n


def test_float32_agrees_with_float64(forcefield):
    atoms = STRUCTURES["triclinic_cu"]()
    reference = evaluate(forcefield, atoms, stress=True)
    model32 = type(forcefield.potential)(**forcefield.potential.hyperparameters())
    if convolution_backend(model32) is not None:  # the same backend as the float64 model
        apply_convolution_backend(model32, convolution_backend(forcefield.potential))
    model32.load_state_dict(forcefield.potential.state_dict())
    out = ForceField(model32.float())(graph_of(atoms, torch.float32), compute_stress=True)
    assert out["energy"].dtype == torch.float32
    np.testing.assert_allclose(
        out["energy"].detach().numpy(), reference["energy"], rtol=1e-5, atol=1e-6 * len(atoms)
    )
    np.testing.assert_allclose(
        out["forces"].detach().numpy(), reference["forces"], rtol=1e-4, atol=1e-4
    )
