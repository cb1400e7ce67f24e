"""DimeNet++ against torch_geometric's DimeNetPlusPlus on the same weights (float64), and the
properties issue 14 asks of a triplet model.

Fixture tests/data/dimenetpp_reference.pt (benchmarks/peers/make_dimenetpp_fixtures.py, run
by the pyg peer venv; torch_geometric is never imported here): its state dict, the spherical
Bessel roots it uses (float32-rounded, as torch_geometric computes them) and the energies,
per-atom energies and forces of its blocks on molecules and periodic cells (one smaller than
the cutoff, a triclinic one, a slab). Graphs come from equimd's own neighbor list.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import TEST_HYPERPARAMETERS, build_model
from equimd.potentials.nn.dtype import default_dtype

DATA = Path(__file__).parent / "data"
SPECIES = [1, 6, 8, 29]
TOLERANCE = 1e-6  # eV, eV/Å


@functools.cache
def reference() -> dict:
    return torch.load(DATA / "dimenetpp_reference.pt", weights_only=True)


def equimd_state_dict(fixture: dict, model: torch.nn.Module) -> dict:
    """torch_geometric's parameter names and layout → equimd's DimeNetPlusPlus."""
    state = {}
    for name, value in fixture["state_dict"].items():
        if name == "emb.emb.weight":  # rows by atomic number → rows by species index
            value = value[torch.tensor(SPECIES)]
        elif name.startswith("output_blocks.0."):
            name = name.replace("output_blocks.0.", "output_embedding.", 1)
        elif name.startswith("output_blocks."):
            index = int(name.split(".")[1])
            name = name.replace(f"output_blocks.{index}.", f"output_blocks.{index - 1}.", 1)
        state[name] = value
    state["sbf.roots"] = fixture["sbf_roots"]
    state["sbf.normalizer"] = fixture["sbf_normalizer"]
    for name, value in model.state_dict().items():  # E0/scale/shift, species table
        state.setdefault(name, value)
    return state


@functools.cache
def reference_model() -> torch.nn.Module:
    fixture = reference()
    hyperparameters = dict(fixture["hyperparameters"])
    r_max = hyperparameters.pop("cutoff")
    with default_dtype(torch.float64):
        model = build_model("dimenetpp", species=SPECIES, r_max=r_max, **hyperparameters)
    model.load_state_dict(equimd_state_dict(fixture, model), strict=True)
    return model


def graph_of(frame: dict, r_max: float):
    configuration = Configuration(
        positions=frame["positions"].numpy(),
        numbers=frame["numbers"].numpy(),
        cell=frame["cell"].numpy(),
        pbc=frame["pbc"].numpy(),
    )
    return configuration_to_graph(configuration, r_max, dtype=torch.float64)


def test_fixture_covers_molecules_and_periodic_cells_smaller_than_the_cutoff():
    frames = reference()["structures"]
    assert sum(bool(f["pbc"].any()) for f in frames) >= 3
    assert sum(not bool(f["pbc"].any()) for f in frames) >= 3
    r_max = reference()["hyperparameters"]["cutoff"]
    small = [
        f
        for f in frames
        if bool(f["pbc"].all()) and float(torch.linalg.norm(f["cell"], dim=-1).min()) < r_max
    ]
    assert small, "no periodic cell smaller than the cutoff"


@pytest.mark.parametrize("name", [f["name"] for f in reference()["structures"]])
def test_energies_and_forces_match_torch_geometric(name):
    frame = next(f for f in reference()["structures"] if f["name"] == name)
    model = reference_model()
    out = ForceField(model)(graph_of(frame, model.r_max), True, False, False)
    assert abs(float(out["energy"][0].detach()) - float(frame["energy"])) < TOLERANCE
    assert (out["atomic_energies"] - frame["node_energy"]).abs().max() < TOLERANCE
    assert (out["forces"] - frame["forces"]).abs().max() < TOLERANCE
    assert float(frame["forces"].abs().max()) > 1e-2  # a non-trivial reference


def test_exact_bessel_roots_differ_from_torch_geometric_float32_roots_by_rounding_only():
    hyperparameters = TEST_HYPERPARAMETERS["dimenetpp"] | dict(num_spherical=4, num_radial=5)
    with default_dtype(torch.float64):
        model = build_model("dimenetpp", species=SPECIES, r_max=4.0, **hyperparameters)
    roots = reference()["sbf_roots"]
    assert torch.allclose(model.sbf.roots.double(), roots, rtol=2e-7, atol=0.0)
    assert torch.allclose(model.sbf.normalizer.double(), reference()["sbf_normalizer"], rtol=1e-5)


def homometric_tetrahedra() -> tuple[Atoms, Atoms]:
    """Two 4-atom carbon clusters with the same multiset of distances {1.5 ×3, 1.8, 1.95, 2.1}
    (Å) that are not congruent: one atom at 1.5 Å from the three others (whose mutual
    distances are 1.8, 1.95, 2.1), and an equilateral 1.5 Å triangle with the fourth atom
    at 1.8, 1.95, 2.1 Å from its corners. A sum of pair terms cannot tell them apart."""

    def trilaterate(a, b, c, ra, rb, rc):
        ex = (b - a) / np.linalg.norm(b - a)
        i = ex @ (c - a)
        ey = (c - a - i * ex) / np.linalg.norm(c - a - i * ex)
        ez = np.cross(ex, ey)
        d, j = np.linalg.norm(b - a), ey @ (c - a)
        x = (ra**2 - rb**2 + d**2) / (2 * d)
        y = (ra**2 - rc**2 + i**2 + j**2) / (2 * j) - i / j * x
        return a + x * ex + y * ey + np.sqrt(ra**2 - x**2 - y**2) * ez

    def triangle(ab, ac, bc):
        x = (ab**2 + ac**2 - bc**2) / (2 * ab)
        return np.array([[0, 0, 0], [ab, 0, 0], [x, np.sqrt(ac**2 - x**2), 0.0]])

    base = triangle(1.8, 1.95, 2.1)
    apex = trilaterate(*base, 1.5, 1.5, 1.5)
    first = np.vstack([base, apex])
    base = triangle(1.5, 1.5, 1.5)
    second = np.vstack([base, trilaterate(*base, 1.8, 1.95, 2.1)])
    return Atoms("C4", positions=first), Atoms("C4", positions=second)


def sorted_distances(atoms: Atoms) -> np.ndarray:
    distances = atoms.get_all_distances()
    return np.sort(distances[np.triu_indices(len(atoms), 1)])


def total_energy(model, atoms: Atoms) -> float:
    graph = configuration_to_graph(Configuration.from_atoms(atoms), model.r_max, torch.float64)
    return float(ForceField(model)(graph, False, False, False)["energy"][0].detach())


def test_distinguishes_structures_with_equal_distance_multisets():
    first, second = homometric_tetrahedra()
    np.testing.assert_allclose(sorted_distances(first), sorted_distances(second), atol=1e-12)
    model = reference_model()
    with default_dtype(torch.float64):
        pair_only = build_model("toy_pair", species=SPECIES, r_max=model.r_max)
    assert abs(total_energy(pair_only, first) - total_energy(pair_only, second)) < 1e-10
    difference = abs(total_energy(model, first) - total_energy(model, second))
    assert difference > 1e-3, difference
