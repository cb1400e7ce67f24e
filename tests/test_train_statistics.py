"""Data statistics set into the model before training: E0s, avg_num_neighbors, scale, shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.train.batching import labelled_graph
from equimd.potentials.train.statistics import (
    StatisticsError,
    average_num_neighbors,
    compute_statistics,
    e0s_from_mapping,
    least_squares_e0s,
    species_of,
)

SPECIES = [1, 6, 8]
TRUE_E0 = {1: -13.6, 6: -1029.8, 8: -2041.3}


def synthetic_frames(num_frames: int = 40, seed: int = 0, noise: float = 0.0) -> list[Configuration]:
    """Random H/C/O compositions whose energy is Σ n_Z E0[Z] (+ noise) and random forces."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(num_frames):
        numbers = rng.choice(SPECIES, size=rng.integers(3, 12))
        energy = sum(TRUE_E0[int(z)] for z in numbers) + noise * rng.normal()
        frames.append(
            Configuration(
                positions=rng.uniform(0, 6, (len(numbers), 3)),
                numbers=numbers,
                energy=energy,
                forces=rng.normal(scale=0.5, size=(len(numbers), 3)),
                source=f"synthetic frame {index}",
            )
        )
    return frames


def test_least_squares_recovers_known_e0s():
    frames = synthetic_frames()
    e0 = least_squares_e0s(frames, SPECIES)
    np.testing.assert_allclose(e0, [TRUE_E0[z] for z in SPECIES], atol=1e-8)


def test_least_squares_e0s_are_robust_to_noise():
    e0 = least_squares_e0s(synthetic_frames(num_frames=400, noise=0.01), SPECIES)
    np.testing.assert_allclose(e0, [TRUE_E0[z] for z in SPECIES], atol=5e-3)


def test_least_squares_with_fixed_composition_reproduces_the_mean_energy():
    # every frame is the same molecule: E0s are not identifiable, the mean energy is
    frames = synthetic_frames(num_frames=1)
    frames = [
        Configuration(positions=frames[0].positions, numbers=frames[0].numbers, energy=e)
        for e in (-100.0, -101.0, -102.0)
    ]
    e0 = least_squares_e0s(frames, species_of(frames))
    counts = np.array([np.sum(frames[0].numbers == z) for z in species_of(frames)])
    assert counts @ np.array(e0) == pytest.approx(-101.0)


def test_frames_without_energy_are_skipped_and_none_is_an_error():
    frames = synthetic_frames()
    unlabelled = Configuration(positions=frames[0].positions, numbers=frames[0].numbers)
    e0 = least_squares_e0s(frames + [unlabelled], SPECIES)
    np.testing.assert_allclose(e0, [TRUE_E0[z] for z in SPECIES], atol=1e-8)
    with pytest.raises(StatisticsError, match="no frame has an energy"):
        least_squares_e0s([unlabelled], SPECIES)


def test_scale_shift_and_neighbors_follow_their_definitions():
    frames = synthetic_frames(seed=1)
    e0 = [TRUE_E0[z] - 0.5 for z in SPECIES]  # every atom has a residual of +0.5 eV
    graphs = [labelled_graph(frame, 2.5, torch.float64) for frame in frames]
    num_edges = sum(g.graph.edge_index.shape[1] for g in graphs)
    statistics = compute_statistics(frames, SPECIES, e0, num_edges)
    forces = np.concatenate([f.forces.ravel() for f in frames])
    assert statistics.scale == pytest.approx(np.sqrt(np.mean(forces**2)))
    assert statistics.shift == pytest.approx(0.5)
    atoms = sum(f.n_atoms for f in frames)
    assert statistics.avg_num_neighbors == pytest.approx(max(num_edges / atoms, 1.0))
    assert average_num_neighbors(30, 10) == 3.0


def test_given_e0s_must_cover_every_species():
    assert e0s_from_mapping({"H": -1.0, "C": -2.0, "O": -3.0}, SPECIES, "x") == [-1.0, -2.0, -3.0]
    assert e0s_from_mapping({1: -1.0, 6: -2.0, 8: -3.0}, SPECIES, "x") == [-1.0, -2.0, -3.0]
    with pytest.raises(StatisticsError, match="no E0 for O"):
        e0s_from_mapping({"H": -1.0, "C": -2.0}, SPECIES, "isolated.xyz")


def test_statistics_set_into_a_model_shift_its_energies():
    from equimd.potentials.models import build_model

    model = build_model("nequip", species=SPECIES, r_max=3.0, num_features=4, l_max=1, num_layers=1)
    model.scale_shift.set_statistics([-1.0, -2.0, -3.0], scale=2.0, shift=0.25)
    assert model.scale_shift.e0.tolist() == [-1.0, -2.0, -3.0]
    assert float(model.scale_shift.scale) == 2.0 and float(model.scale_shift.shift) == 0.25


def test_e0s_from_an_isolated_atom_file_and_from_the_config(tmp_path):
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from equimd.potentials.train.config import DataConfig
    from equimd.potentials.train.data import resolve_e0s

    atoms = []
    for z in SPECIES:
        atom = Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]])
        atom.calc = SinglePointCalculator(atom, energy=TRUE_E0[z] + 0.5)
        atoms.append(atom)
    path = tmp_path / "isolated.xyz"
    ase.io.write(path, atoms, format="extxyz")
    frames = synthetic_frames()
    isolated = resolve_e0s(DataConfig(train="x", e0s=f"isolated:{path}"), frames, SPECIES)
    assert isolated == pytest.approx([TRUE_E0[z] + 0.5 for z in SPECIES])
    given = resolve_e0s(DataConfig(train="x", e0s={"O": 3.0, "H": 1.0, "C": 2.0}), frames, SPECIES)
    assert given == [1.0, 2.0, 3.0]
    fitted = resolve_e0s(DataConfig(train="x"), frames, SPECIES)
    assert fitted == pytest.approx([TRUE_E0[z] for z in SPECIES])
    with pytest.raises(StatisticsError, match="F: not in the training frames"):
        resolve_e0s(DataConfig(train="x"), frames, SPECIES + [9])
