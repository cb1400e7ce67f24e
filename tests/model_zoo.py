"""Small models and structures shared by the physics tests (every model gets every check)."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule

from potentials.data.configuration import Configuration
from potentials.data.graph import AtomicGraph, collate, configuration_to_graph
from potentials.models import build_model

R_MAX = 4.0
SPECIES = [1, 6, 8, 29]


def _randomize_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial E0s/scale/shift so the physics tests exercise them."""
    gen = torch.Generator().manual_seed(seed)
    e0 = (torch.rand(model.num_species, generator=gen, dtype=torch.float64) - 0.5).tolist()
    model.scale_shift.set_statistics(e0, scale=1.3, shift=-0.2)
    return model


def nequip_small() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(
        "nequip", species=SPECIES, r_max=R_MAX, l_max=2, num_features=8, num_layers=2,
        avg_num_neighbors=10.0, resnet=True,
    )
    return _randomize_statistics(model.double())


def nequip_l1_no_parity() -> torch.nn.Module:
    torch.manual_seed(1)
    model = build_model(
        "nequip", species=SPECIES, r_max=R_MAX, l_max=1, num_features=6, num_layers=2,
        parity=False, avg_num_neighbors=5.0,
    )
    return _randomize_statistics(model.double())


MODEL_FACTORIES = {"nequip": nequip_small, "nequip_l1_noparity": nequip_l1_no_parity}


def register_factory(name: str, factory) -> None:
    MODEL_FACTORIES[name] = factory


def molecule_atoms() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    return atoms


def triclinic_cu() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    cell = atoms.get_cell().array
    cell = cell + np.array([[0.0, 0.2, 0.1], [0.15, 0.0, -0.1], [0.05, 0.1, 0.0]])
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.08, seed=4)
    return atoms


def mixed_periodic_box() -> Atoms:
    rng = np.random.default_rng(5)
    cell = np.array([[6.0, 0.0, 0.0], [1.0, 5.5, 0.0], [0.5, 0.3, 6.5]])
    frac = rng.random((10, 3))
    numbers = rng.choice(SPECIES, size=10)
    atoms = Atoms(numbers=numbers, scaled_positions=frac, cell=cell, pbc=True)
    # push overlapping atoms apart a bit
    atoms.rattle(0.02, seed=6)
    return atoms


def small_cell() -> Atoms:
    """A cell smaller than r_max (many periodic images of each atom)."""
    atoms = bulk("Cu", "fcc", a=3.61)  # 1 atom, primitive, nearest plane spacing < r_max
    return atoms


def slab() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 1)
    atoms.pbc = (True, True, False)
    atoms.rattle(0.05, seed=7)
    return atoms


STRUCTURES = {
    "molecule": molecule_atoms,
    "triclinic_cu": triclinic_cu,
    "periodic_mixed_species": mixed_periodic_box,
    "small_cell": small_cell,
    "slab": slab,
}


def graph_of(atoms: Atoms, dtype: torch.dtype = torch.float64) -> AtomicGraph:
    return configuration_to_graph(Configuration.from_atoms(atoms), R_MAX, dtype=dtype)


def batch_of(structures: list[Atoms]) -> AtomicGraph:
    return collate([graph_of(a) for a in structures])
