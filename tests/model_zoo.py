"""Small models and structures shared by the contract tests (every model gets every check).

Models come from the registry: `contract_model(name)` builds the test configuration that each
registered model declares next to its code (`register_model(name, test_hyperparameters=...)`,
docs/models.md), so `MODEL_FACTORIES` holds every registered model (those of tests/models/
included) plus the extra variants registered below by hand.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule

import tests.models  # noqa: F401 - test-only models join the registry before it is read
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import AtomicGraph, collate, configuration_to_graph
from equimd.potentials.models import MODELS, TEST_HYPERPARAMETERS, Potential, build_model
from equimd.potentials.nn.convolution import apply_convolution_backend

# what every test configuration is built with
R_MAX = 4.0
SPECIES = [1, 6, 8, 29]


def _randomize_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial E0s/scale/shift so the physics tests exercise them."""
    gen = torch.Generator().manual_seed(seed)
    e0 = (torch.rand(model.num_species, generator=gen, dtype=torch.float64) - 0.5).tolist()
    model.scale_shift.set_statistics(e0, scale=1.3, shift=-0.2)
    return model


def contract_model(model_type: str, seed: int = 0) -> Potential:
    """The registered test configuration of `model_type` with species H, C, O, Cu and r_max
    4 Å, in float64, with non-trivial E0s/scale/shift.

    Built under float64 default dtype (constants computed at construction, such as MACE's
    coupling bases, are then exact) from `seed`: every call returns the same weights. The
    caller's RNG state and default dtype are left as they were.
    """
    if model_type not in TEST_HYPERPARAMETERS:
        cls = MODELS[model_type]
        raise LookupError(
            f"model {model_type!r} ({cls.__module__}.{cls.__qualname__}) is registered without "
            "a test configuration: add register_model(..., test_hyperparameters={...}) "
            "(docs/models.md)"
        )
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(torch.float64)
        try:
            model = build_model(
                model_type, species=SPECIES, r_max=R_MAX, **TEST_HYPERPARAMETERS[model_type]
            )
        finally:
            torch.set_default_dtype(previous)
    return _randomize_statistics(model.double())


# every registered model (the package's and the tests') in its test configuration
CONTRACT_MODELS = sorted(MODELS)


def slow_unless_test_only(names: list[str]) -> list:
    """`pytest.param`s of model names for a test that takes about a minute per model (an
    AOTInductor compile, a training run): the models registered by the tests (tests/models/,
    tiny by design) run in the default suite, every other one is marked slow."""
    import pytest

    def test_only(name: str) -> bool:
        return name in MODELS and MODELS[name].__module__.startswith("tests.")

    return [
        pytest.param(name, marks=() if test_only(name) else pytest.mark.slow) for name in names
    ]


def nequip_small() -> torch.nn.Module:
    """NequIP's test configuration (l_max 2, both parities, 8 features, 2 layers, resnet)."""
    return contract_model("nequip")


def nequip_l1_no_parity() -> torch.nn.Module:
    torch.manual_seed(1)
    model = build_model(
        "nequip", species=SPECIES, r_max=R_MAX, l_max=1, num_features=6, num_layers=2,
        parity=False, avg_num_neighbors=5.0,
    )
    return _randomize_statistics(model.double())


def nequip_fused_l3() -> torch.nn.Module:
    """The fast tensor-product backend pinned explicitly (whatever the default), l_max 3."""
    torch.manual_seed(2)
    model = build_model(
        "nequip", species=SPECIES, r_max=R_MAX, l_max=3, num_features=6, num_layers=2,
        avg_num_neighbors=10.0, resnet=True,
    )
    return _randomize_statistics(apply_convolution_backend(model, "fused").double())


def nequip_e3nn_reference() -> torch.nn.Module:
    """`nequip_small` with the e3nn reference tensor-product backend."""
    torch.manual_seed(0)
    model = build_model(
        "nequip", species=SPECIES, r_max=R_MAX, l_max=2, num_features=8, num_layers=2,
        avg_num_neighbors=10.0, resnet=True,
    )
    return _randomize_statistics(apply_convolution_backend(model, "e3nn").double())


MODEL_FACTORIES = {name: functools.partial(contract_model, name) for name in CONTRACT_MODELS}


def register_factory(name: str, factory) -> None:
    """An extra model variant for the physics tests (beyond the registered test configurations)."""
    MODEL_FACTORIES[name] = factory


register_factory("nequip_l1_noparity", nequip_l1_no_parity)
# convolution backends (equimd.potentials.nn.convolution): the default ("nequip" above) is the
# fast one; the fast one pinned explicitly and the e3nn reference get every physics check too.
register_factory("nequip_fused_l3", nequip_fused_l3)
register_factory("nequip_e3nn_reference", nequip_e3nn_reference)


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


def mace_small() -> torch.nn.Module:
    """MACE's test configuration: both interaction variants (non-residual first layer, residual
    second), vector hidden features and correlation 3; built under float64 default dtype."""
    return contract_model("mace")
