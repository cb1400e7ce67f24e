"""`DeployedPotential.compute_local` and the receptive field: what the LAMMPS pair style needs.

A domain-decomposed host hands the model its local atoms followed by ghost atoms (periodic
images as separate atoms, no cell) and takes the energy of the local atoms only. Checked here
without LAMMPS: for a periodic cell whose images within `receptive_field` are the ghosts,
compute_local's energy, folded forces and virial equal the periodic `forward`; one hop fewer
gives a different energy; and the receptive-field table (`equimd.deploy.metadata`) is large
enough for every registered model (an atom's energy ignores everything beyond it).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from ase.build import bulk

from equimd.deploy.export import build_metadata, torchscript_bytes
from equimd.deploy.metadata import receptive_field
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph
from equimd.potentials.models import MODELS
from tests.model_zoo import R_MAX, contract_model


@functools.cache
def scripted(model_type: str) -> torch.jit.ScriptModule:
    model = contract_model(model_type)
    data = torchscript_bytes(model, build_metadata(model, "float64", "torchscript"))
    return torch.jit.load(io.BytesIO(data))


def periodic_cell() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rattled triclinic Cu/O/H cell (positions, numbers, cell)."""
    atoms = bulk("Cu", "fcc", a=3.6).repeat((2, 2, 2))
    atoms.set_cell(
        atoms.cell[:] + np.array([[0, 0, 0], [0.4, 0, 0], [0.3, -0.2, 0]]), scale_atoms=True
    )
    atoms.numbers[[1, 5]] = [8, 1]
    atoms.rattle(0.1, seed=3)
    return atoms.get_positions(), atoms.numbers.copy(), atoms.cell[:].copy()


def ghost_cluster(positions, numbers, cell, cutoff):
    """Local atoms, then every periodic image (not the identity) within `cutoff` of a local
    atom: (positions, numbers, owner index of each atom)."""
    n = len(positions)
    reach = int(np.ceil(cutoff / np.min(1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)))) + 1
    ghosts, owners = [], []
    for shift in np.ndindex(2 * reach + 1, 2 * reach + 1, 2 * reach + 1):
        shift = np.array(shift) - reach
        if not shift.any():
            continue
        images = positions + shift @ cell
        distance = np.linalg.norm(images[:, None, :] - positions[None, :, :], axis=-1).min(axis=1)
        keep = np.nonzero(distance < cutoff)[0]
        ghosts.append(images[keep])
        owners.append(keep)
    ghost_positions = np.concatenate([positions, *ghosts])
    owner = np.concatenate([np.arange(n), *owners])
    return ghost_positions, numbers[owner], owner


@pytest.mark.parametrize("model_type", ["toy_pair", "nequip", "mace"])
def test_local_energy_of_ghost_cluster_equals_periodic(model_type):
    module = scripted(model_type)
    field = float(module.receptive_field)
    assert field == pytest.approx(
        receptive_field(model_type, contract_model(model_type).hyperparameters())
    )
    positions, numbers, cell = periodic_cell()
    reference = module.compute(
        torch.tensor(positions),
        torch.tensor(numbers),
        torch.tensor(cell),
        torch.ones(3, dtype=torch.bool),
        True,
        True,
    )
    cluster, cluster_numbers, owner = ghost_cluster(positions, numbers, cell, field)
    assert len(cluster) > 4 * len(positions)  # the ghosts are really there
    local = module.compute_local(
        torch.tensor(cluster), torch.tensor(cluster_numbers), len(positions), True
    )
    assert local["atomic_energies"].shape == (len(positions),)
    assert abs(float(local["energy"] - reference["energy"])) < 1e-10
    folded = np.zeros_like(positions)
    np.add.at(folded, owner, local["forces"].numpy())
    np.testing.assert_allclose(folded, reference["forces"].numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        local["virial"].numpy(), reference["virial"].numpy(), rtol=0, atol=1e-10
    )
    # the virial of the cluster is Σ_a x_a ⊗ f_a over local and ghost atoms (LAMMPS fdotr)
    fdotr = cluster.T @ local["forces"].numpy()
    np.testing.assert_allclose(local["virial"].numpy(), 0.5 * (fdotr + fdotr.T), rtol=0, atol=1e-10)
    if field > R_MAX:  # message passing: a ghost shell one hop short is not enough
        short, short_numbers, _ = ghost_cluster(positions, numbers, cell, field - R_MAX)
        too_short = module.compute_local(
            torch.tensor(short), torch.tensor(short_numbers), len(positions), False
        )
        assert abs(float(too_short["energy"] - reference["energy"])) > 1e-8


def test_compute_local_all_atoms_is_the_molecule_forward():
    module = scripted("toy_pair")
    positions, numbers, _ = periodic_cell()
    full = module.compute(
        torch.tensor(positions),
        torch.tensor(numbers),
        torch.zeros(3, 3),
        torch.zeros(3, dtype=torch.bool),
        True,
        False,
    )
    local = module.compute_local(
        torch.tensor(positions), torch.tensor(numbers), len(positions), False
    )
    assert abs(float(local["energy"] - full["energy"])) < 1e-12
    np.testing.assert_allclose(local["forces"].numpy(), full["forces"].numpy(), atol=1e-12)
    assert not local["virial"].any()
    with pytest.raises(torch.jit.Error, match="nlocal"):
        module.compute_local(torch.tensor(positions), torch.tensor(numbers), 100, False)


def test_forward_signature_unchanged():
    module = scripted("toy_pair")
    positions, numbers, cell = periodic_cell()
    out = module(
        torch.tensor(positions),
        torch.tensor(numbers),
        torch.tensor(cell),
        torch.ones(3, dtype=torch.bool),
    )
    assert set(out) == {"energy", "atomic_energies", "forces", "stress", "virial"}


def test_unknown_model_type_has_no_receptive_field():
    assert receptive_field("no_such_model", {"r_max": 4.0}) is None
    assert receptive_field("nequip", {"r_max": 4.0}) is None  # layer count missing
    assert receptive_field("nequip", {"r_max": 4.0, "num_layers": 3}) == 12.0
    assert receptive_field("dimenetpp", {"r_max": 5.0, "num_blocks": 2}) == 15.0
    assert receptive_field("implicit_kernels", {"r_max": 2.0, "num_layers": 3}) == 14.0
    assert receptive_field("toy_pair", {"r_max": 4.0}) == 4.0


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_receptive_field_table_is_large_enough(model_type):
    """Atom 0's energy in a dense random cluster is unchanged (1e-10 eV, float64) when every
    atom farther than the receptive field is removed: the ghost cutoff loses nothing."""
    model = contract_model(model_type).eval()
    field = receptive_field(model_type, model.hyperparameters())
    assert field is not None, f"{model_type}: add it to RECEPTIVE_FIELD_LAYERS"
    rng = np.random.default_rng(7)
    # a rod of atoms ~1.1 Å apart along x: many hops of ~r_max lie beyond the field
    length = field + 3 * R_MAX
    count = int(length / 1.1)
    positions = np.stack(
        [np.linspace(0, length, count), rng.normal(0, 0.6, count), rng.normal(0, 0.6, count)],
        axis=1,
    )
    numbers = rng.choice([1, 6, 8, 29], size=count)

    def energy_of_atom_0(keep):
        graph = configuration_to_graph(
            Configuration(positions=positions[keep], numbers=numbers[keep]), R_MAX
        )
        with torch.no_grad():
            return float(model(graph)[0])

    inside = np.nonzero(np.linalg.norm(positions - positions[0], axis=1) < field)[0]
    assert len(inside) < count
    assert abs(energy_of_atom_0(inside) - energy_of_atom_0(np.arange(count))) < 1e-10
