"""Matformer's published crystal graph (`neighbor_strategy: k-nearest`, potentials/nn/knn_graph.py)
against the authors' code, and the physics of a model on it.

The reference edge lists (tests/data/matformer_graph_reference.pt) were made by the authors'
`matformer/graphs.py` (github.com/YKQ98/Matformer, jarvis-tools) in the torch-geometric peer
venv: benchmarks/peers/make_matformer_graph_fixtures.py. Each is the multiset of directed edges
(source, target, displacement) of the undirected 12-nearest-neighbour graph (8 Å search,
canonized pairs) with the lattice self-connections; here the same multiset must come out of
the in-model selection from the radius neighbour list, multiplicities included.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph, edge_vectors
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import TEST_HYPERPARAMETERS, build_model
from equimd.potentials.models.matformer import TIE_TOLERANCE
from equimd.potentials.nn.knn_graph import (
    kth_neighbor_distance,
    lattice_self_connections,
    nearest_neighbor_edges,
)

FIXTURE = Path(__file__).parent / "data" / "matformer_graph_reference.pt"
R_SEARCH, K = 8.0, 12  # the reference's search radius and neighbour count
SPECIES = [3, 14, 29, 42]  # Li, Si, Cu, Mo: the elements of the fixture structures


def reference_structures() -> dict:
    return torch.load(FIXTURE, weights_only=True)["structures"]


def atoms_of(structure: dict) -> Atoms:
    return Atoms(numbers=structure["numbers"].numpy(), positions=structure["positions"].numpy(),
                 cell=structure["cell"].numpy(), pbc=True)


def graph_of(atoms: Atoms, r_max: float = R_SEARCH):
    return configuration_to_graph(Configuration.from_atoms(atoms), r_max, dtype=torch.float64)


def knn_edges(atoms: Atoms, k: int = K) -> Counter:
    """The in-model graph as a multiset of (sender, receiver, displacement rounded to 1e-4 Å)."""
    graph = graph_of(atoms)
    sender, receiver = graph.edge_index
    vectors = edge_vectors(graph)
    lengths = torch.linalg.norm(vectors, dim=-1)
    kth = kth_neighbor_distance(lengths, receiver, len(atoms), k)
    kept, multiplicity = nearest_neighbor_edges(lengths, sender, receiver, kth, TIE_TOLERANCE)
    atom, lattice = lattice_self_connections(graph.cell, graph.pbc, graph.batch, kth, R_SEARCH, TIE_TOLERANCE)
    edges = Counter()
    for s, r, v, m in zip(sender[kept].tolist(), receiver[kept].tolist(), vectors[kept], multiplicity.tolist(), strict=True):
        edges[(s, r, *np.round(v.numpy(), 4))] += int(m)
    for i, v in zip(atom.tolist(), lattice, strict=True):
        edges[(i, i, *np.round(v.numpy(), 4))] += 1
    return edges


def reference_edges(structure: dict) -> Counter:
    """The authors' edge list: message from u to v along r (v's image minus u)."""
    return Counter(
        (u, v, *np.round(r.numpy(), 4))
        for u, v, r in zip(structure["source"].tolist(), structure["target"].tolist(), structure["displacement"], strict=True)
    )


@pytest.mark.parametrize("name", sorted(reference_structures()))
def test_knn_graph_matches_the_authors_graph(name):
    structure = reference_structures()[name]
    ours, theirs = knn_edges(atoms_of(structure)), reference_edges(structure)
    assert sum(theirs.values()) > 0
    assert ours == theirs, (
        f"{name}: only in equimd's {dict(ours - theirs)}; only in the reference's {dict(theirs - ours)}"
    )


def test_ties_at_the_kth_distance_are_kept():
    """bcc: 8 first and 6 second neighbours, so the 12th distance is the second shell and all
    14 are kept (per atom: 8 + 6 images of itself counted twice + 6 lattice self-connections
    ±(a+b), ±(a+c), ±(b+c), ±a, ±b, ±c being among the neighbours) — in float32 too."""
    atoms = bulk("Mo", "bcc", a=3.16, cubic=True)
    for dtype in (torch.float64, torch.float32):
        graph = configuration_to_graph(Configuration.from_atoms(atoms), R_SEARCH, dtype=dtype)
        lengths = torch.linalg.norm(edge_vectors(graph), dim=-1)
        sender, receiver = graph.edge_index
        kth = kth_neighbor_distance(lengths, receiver, 2, K)
        kept, multiplicity = nearest_neighbor_edges(lengths, sender, receiver, kth, TIE_TOLERANCE)
        atom, _ = lattice_self_connections(graph.cell, graph.pbc, graph.batch, kth, R_SEARCH, TIE_TOLERANCE)
        assert kth.tolist() == pytest.approx([3.16, 3.16], abs=1e-5)
        assert kept.numel() == 2 * 14
        assert float(multiplicity.sum()) == 2 * (8 + 2 * 6)
        assert atom.tolist() == [0] * 6 + [1] * 6


def test_fewer_than_k_neighbours_keeps_all_and_a_molecule_has_no_lattice_edges():
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    graph = graph_of(atoms)
    lengths = torch.linalg.norm(edge_vectors(graph), dim=-1)
    sender, receiver = graph.edge_index
    kth = kth_neighbor_distance(lengths, receiver, 3, K)
    kept, multiplicity = nearest_neighbor_edges(lengths, sender, receiver, kth, TIE_TOLERANCE)
    atom, _ = lattice_self_connections(graph.cell, graph.pbc, graph.batch, kth, R_SEARCH, TIE_TOLERANCE)
    assert torch.isinf(kth).all()
    assert kept.numel() == 6 and bool((multiplicity == 1).all())
    assert atom.numel() == 0


def knn_model(seed: int = 0):
    torch.manual_seed(seed)
    hp = dict(TEST_HYPERPARAMETERS["matformer"], neighbor_strategy="k-nearest", max_neighbors=K)
    model = build_model("matformer", species=SPECIES, r_max=R_SEARCH, **hp).double()
    for parameter in model.parameters():  # LayerNorm's ones and zeros would hide terms
        parameter.data.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def test_the_model_sums_over_the_authors_edges():
    """The k-nearest model's energy equals its layers run on the reference's edge list (each
    listed edge once, duplicates as listed): the multiplicities stand for duplicate edges."""
    model = knn_model()
    structure = reference_structures()["triclinic_mixed"]
    atoms = atoms_of(structure)
    energy = float(model(graph_of(atoms)).sum().detach())
    species = model.species_index(torch.as_tensor(atoms.numbers))
    lengths = torch.linalg.norm(structure["displacement"], dim=-1)
    edge_features = model.edge_embedding(lengths)
    h = model.atom_embedding(species)
    ones = torch.ones_like(lengths)
    for layer in model.att_layers:
        h = layer(h, edge_features, ones, structure["source"], structure["target"])
    readout = model.fc_out(torch.nn.functional.silu(model.fc(h))).squeeze(-1)
    reference = float(model.scale_shift(readout, species).sum().detach())
    assert energy == pytest.approx(reference, abs=1e-10)


def energy_and_forces(model, atoms: Atoms) -> tuple[float, np.ndarray]:
    out = ForceField(model)(graph_of(atoms), compute_forces=True)
    return float(out["energy"].sum().detach()), out["forces"].detach().numpy()


def rattled_crystal() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    atoms.numbers[[1, 4]] = 3  # Li
    return atoms


def test_forces_are_minus_the_energy_gradient_away_from_rank_swaps():
    model, atoms = knn_model(), rattled_crystal()
    energy, forces = energy_and_forces(model, atoms)
    step = 1e-5
    for atom, axis in [(0, 0), (3, 1), (4, 2)]:
        shifted = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * step
            shifted.append(energy_and_forces(model, moved)[0])
        assert forces[atom, axis] == pytest.approx(-(shifted[0] - shifted[1]) / (2 * step), abs=1e-8)
    assert np.abs(forces).max() > 1e-4  # the comparison is not between zeros


def test_stress_is_the_strain_derivative():
    """The lattice self-connections depend on the cell: σ = (1/V) ∂E/∂ε through them too."""
    model, atoms = knn_model(), rattled_crystal()
    out = ForceField(model)(graph_of(atoms), compute_forces=True, compute_stress=True)
    stress = out["stress"][0].detach().numpy()
    step = 1e-6
    for a, b in [(0, 0), (1, 2), (2, 2)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * step / 2
            strain[b, a] += sign * step / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            energies.append(energy_and_forces(model, strained)[0])
        assert stress[a, b] == pytest.approx((energies[0] - energies[1]) / (2 * step) / atoms.get_volume(), abs=1e-8)
    assert np.abs(stress).max() > 1e-5


def test_invariant_under_rotation_and_permutation():
    model, atoms = knn_model(), rattled_crystal()
    energy, forces = energy_and_forces(model, atoms)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0].numpy()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    rotated.cell = atoms.cell.array @ rotation.T
    energy_r, forces_r = energy_and_forces(model, rotated)
    assert energy_r == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(forces_r, forces @ rotation.T, atol=1e-9)
    order = np.random.default_rng(0).permutation(len(atoms))
    energy_p, forces_p = energy_and_forces(model, atoms[order])
    assert energy_p == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(forces_p, forces[order], atol=1e-9)


def test_the_published_graph_is_not_extensive_and_the_default_is():
    """Why `radius` is the default: the lattice self-connections are fixed cell vectors, so a
    2×2×2 supercell of the same crystal has other self-edges and another energy per atom."""
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True)
    supercell = atoms.repeat((2, 2, 2))
    model = knn_model()
    per_atom = energy_and_forces(model, atoms)[0] / len(atoms)
    per_atom_super = energy_and_forces(model, supercell)[0] / len(supercell)
    assert abs(per_atom - per_atom_super) > 1e-4


def test_torchscript_export_matches_eager():
    model, atoms = knn_model(), rattled_crystal()
    graph = graph_of(atoms)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(graph), model(graph), rtol=0, atol=1e-12)


def test_deployed_file_matches_eager(tmp_path):
    """`equimd deploy`'s file (neighbour list inside, float64) gives the eager model's numbers."""
    from equimd.deploy import load
    from equimd.deploy.export import export_model

    model, atoms = knn_model(), rattled_crystal()
    deployed = load(export_model(model, tmp_path / "matformer_knn.pt", dtype="float64"))
    out = deployed(atoms.get_positions(), atoms.numbers, atoms.get_cell().array, atoms.pbc)
    energy, forces = energy_and_forces(model, atoms)
    assert float(out["energy"].sum()) == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(out["forces"].numpy(), forces, atol=1e-9)


def test_unknown_neighbor_strategy_is_an_error():
    with pytest.raises(ValueError, match="neighbor_strategy"):
        build_model("matformer", species=SPECIES, r_max=5.0, neighbor_strategy="knn")
