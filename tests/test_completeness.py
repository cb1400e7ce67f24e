"""What the geometry buys: structures that 2-body (distance-only) models cannot tell apart.

A carbon atom with three neighbours (H, O, Cu at 2.9, 3.0, 3.1 Å) whose mutual distances exceed
the 4 Å cutoff: every atom sees exactly the same distances in the planar (120°) and the
pyramidal (90°) arrangement, so any model built from distances within the cutoff (a pair
potential, or a message-passing network on distances) gives them equal energies. The pyramidal
arrangement is chiral: its mirror image has the same distances too. The frame models must tell
the planar and pyramidal arrangements apart (angles); the SE(3) models (ComENet, ClofNet) must
tell the two mirror images apart, and the O(3) model (GNN-LF) must give them equal energies.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from equimd.potentials.data.graph import edge_vectors
from equimd.potentials.forcefield import ForceField
from tests.model_zoo import contract_model, graph_of

DISTANCES = np.array([2.9, 3.0, 3.1])  # C–H, C–O, C–Cu (Å)


def centre_with_three_neighbours(directions: np.ndarray) -> Atoms:
    directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    return Atoms("CHOCu", positions=np.vstack([[0.0, 0.0, 0.0], DISTANCES[:, None] * directions]))


def planar() -> Atoms:
    angles = np.radians([0.0, 120.0, 240.0])
    return centre_with_three_neighbours(
        np.stack([np.cos(angles), np.sin(angles), 0 * angles], axis=1)
    )


def pyramidal() -> Atoms:
    return centre_with_three_neighbours(np.eye(3))


def mirrored(atoms: Atoms) -> Atoms:
    image = atoms.copy()
    image.positions[:, 0] *= -1
    return image


def energy(model_name: str, atoms: Atoms) -> float:
    out = ForceField(contract_model(model_name))(graph_of(atoms), compute_forces=False)
    return float(out["energy"])


def distances_seen_by_each_atom(atoms: Atoms) -> list[list[float]]:
    graph = graph_of(atoms)
    lengths = torch.linalg.norm(edge_vectors(graph), dim=-1).numpy()
    receivers = graph.edge_index[1].numpy()
    return [sorted(np.round(lengths[receivers == i], 12).tolist()) for i in range(len(atoms))]


def test_the_pairs_have_identical_distances_within_the_cutoff():
    """The premise: each atom sees the same distances in all three structures, and the
    neighbours do not see each other (so nothing but angles differs)."""
    seen = distances_seen_by_each_atom(planar())
    assert (
        seen
        == distances_seen_by_each_atom(pyramidal())
        == distances_seen_by_each_atom(mirrored(pyramidal()))
    )
    assert seen[0] == DISTANCES.tolist() and all(len(s) == 1 for s in seen[1:])


def test_a_pair_potential_cannot_tell_them_apart():
    reference = energy("toy_pair", planar())
    assert energy("toy_pair", pyramidal()) == pytest.approx(reference, abs=1e-12)
    assert energy("toy_pair", mirrored(pyramidal())) == pytest.approx(reference, abs=1e-12)


@pytest.mark.parametrize("model_name", ["comenet", "clofnet", "gnnlf"])
def test_frame_models_tell_planar_from_pyramidal(model_name):
    assert abs(energy(model_name, planar()) - energy(model_name, pyramidal())) > 1e-7


@pytest.mark.parametrize("model_name", ["comenet", "clofnet"])
def test_se3_models_tell_mirror_images_apart(model_name):
    assert contract_model(model_name).equivariance == "SE(3)"
    assert abs(energy(model_name, pyramidal()) - energy(model_name, mirrored(pyramidal()))) > 1e-7


def test_o3_model_gives_mirror_images_equal_energies():
    assert contract_model("gnnlf").equivariance == "O(3)"
    assert energy("gnnlf", mirrored(pyramidal())) == pytest.approx(
        energy("gnnlf", pyramidal()), abs=1e-12
    )
