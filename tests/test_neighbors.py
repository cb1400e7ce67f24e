"""The matscipy neighbor list (`equimd.potentials.data.neighbors.neighbor_list`) against the
brute-force reference, on periodic, triclinic, mixed-pbc, small and open structures.

`random_structure` is shared with `tests/test_cell_list.py`.
"""

from __future__ import annotations

import numpy as np
import pytest

from equimd.potentials.data.neighbors import CellError, brute_force_neighbor_list, neighbor_list

KINDS = ("bulk", "skewed", "small", "slab", "wire", "molecule", "unwrapped")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def random_cell(rng: np.random.Generator, lengths: np.ndarray, skew: float) -> np.ndarray:
    """Triclinic cell [3, 3] Å: lower-triangular with off-diagonals up to `skew` times the
    diagonal, randomly rotated (so no entry is structurally zero)."""
    cell = np.diag(lengths)
    cell[1, 0] = rng.uniform(-skew, skew) * lengths[0]
    cell[2, :2] = rng.uniform(-skew, skew, size=2) * lengths[:2]
    return cell @ random_rotation(rng).T


def random_structure(
    rng: np.random.Generator, kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """positions [N, 3] Å, cell [3, 3] Å, pbc [3], r_max Å for one of `KINDS`.

    bulk: periodic triclinic cell of 0.6-2.5 r_max; skewed: cell vectors at small angles
    (b ≈ m·a + small, m up to 4); small: cell of 0.35-1 r_max, many images of every atom;
    slab / wire: two / one periodic axes, the open cell vectors random or zero; molecule:
    no periodicity and an all-zero cell; unwrapped: like bulk with positions up to three
    cells outside the box.
    """
    r_max = float(rng.uniform(1.5, 5.0))
    pbc = np.ones(3, dtype=bool)
    if kind in ("bulk", "unwrapped"):
        cell = random_cell(rng, rng.uniform(0.6, 2.5, size=3) * r_max, skew=0.8)
    elif kind == "skewed":
        lengths = rng.uniform(0.8, 2.0, size=3) * r_max
        cell = np.diag(lengths)
        cell[1, 0] = rng.integers(1, 5) * lengths[0] + rng.uniform(-0.5, 0.5) * lengths[0]
        cell[2, 0] = rng.integers(-3, 4) * lengths[0] + rng.uniform(-0.5, 0.5) * lengths[0]
        cell[2, 1] = rng.integers(-3, 4) * lengths[1] + rng.uniform(-0.5, 0.5) * lengths[1]
        cell = cell[rng.permutation(3)] @ random_rotation(rng).T
    elif kind == "small":
        cell = random_cell(rng, rng.uniform(0.35, 1.0, size=3) * r_max, skew=0.4)
    elif kind in ("slab", "wire"):
        cell = random_cell(rng, rng.uniform(0.6, 2.0, size=3) * r_max, skew=0.6)
        open_axes = rng.choice(3, size=1 if kind == "slab" else 2, replace=False)
        pbc[open_axes] = False
        if rng.random() < 0.5:
            cell[open_axes] = 0.0
    elif kind == "molecule":
        cell = np.zeros((3, 3))
        pbc[:] = False
    else:
        raise ValueError(kind)

    volume = abs(np.linalg.det(cell)) if pbc.all() else None
    if kind == "molecule":
        n_atoms = int(rng.integers(1, 30))
        positions = rng.uniform(-1.0, 1.0, size=(n_atoms, 3)) * r_max * 1.5 + rng.normal(
            scale=20.0, size=3
        )
        return positions, cell, pbc, r_max
    if volume is not None:
        # at most ~60 neighbours per atom on average, at least one atom
        n_max = max(1, int(60 * volume / (4.0 / 3.0 * np.pi * r_max**3)))
        n_atoms = int(rng.integers(1, min(n_max, 40) + 1))
    else:
        n_atoms = int(rng.integers(1, 25))
    fractional = rng.uniform(0.0, 1.0, size=(n_atoms, 3))
    if kind == "unwrapped":
        fractional += rng.integers(-3, 4, size=(n_atoms, 3))
    positions = fractional @ cell
    if not pbc.all():
        # anywhere along the open directions (also outside the cell, also if it is zero)
        positions = positions + rng.uniform(-2.0, 2.0, size=(n_atoms, 3)) * r_max
    return positions, cell, pbc, r_max


def as_set(sender, receiver, shift) -> set[tuple[int, int, int, int, int]]:
    shift = np.asarray(shift)
    assert np.array_equal(shift, np.round(shift)), "shifts must be integers"
    shift = np.round(shift).astype(int)
    return {
        (int(i), int(j), int(s[0]), int(s[1]), int(s[2]))
        for i, j, s in zip(sender, receiver, shift, strict=True)
    }


def matscipy_pairs(positions, cell, pbc, r_max) -> set[tuple[int, int, int, int, int]]:
    sender, receiver, shift = neighbor_list(positions, cell, pbc, r_max)
    pairs = as_set(sender, receiver, shift)
    assert len(pairs) == len(sender), "duplicate pairs"
    return pairs


@pytest.mark.parametrize("kind", KINDS)
def test_matscipy_matches_brute_force_on_random_structures(kind: str) -> None:
    rng = np.random.default_rng(KINDS.index(kind))
    for _ in range(12):
        positions, cell, pbc, r_max = random_structure(rng, kind)
        expected = brute_force_neighbor_list(positions, cell, pbc, r_max)
        assert matscipy_pairs(positions, cell, pbc, r_max) == expected, (kind, cell, pbc)


def test_molecule_with_all_zero_cell() -> None:
    rng = np.random.default_rng(7)
    positions = rng.uniform(-3.0, 3.0, size=(20, 3)) + 100.0  # far from the origin
    cell = np.zeros((3, 3))
    pbc = np.zeros(3, dtype=bool)
    pairs = matscipy_pairs(positions, cell, pbc, 3.0)
    assert pairs == brute_force_neighbor_list(positions, cell, pbc, 3.0)
    assert all(pair[2:] == (0, 0, 0) for pair in pairs)
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    assert len(pairs) == int((distances < 3.0).sum()) - len(positions)


def test_wire_whose_open_vectors_are_zero() -> None:
    """A wire along y with a zero cell otherwise (the open vectors cannot be filled in
    along the Cartesian axes there: one of them is parallel to the wire)."""
    rng = np.random.default_rng(3)
    positions = rng.uniform(0.0, 5.0, size=(6, 3))
    cell = np.zeros((3, 3))
    cell[0] = [0.0, 5.0, 0.0]
    pbc = np.array([True, False, False])
    pairs = matscipy_pairs(positions, cell, pbc, 3.0)
    assert pairs == brute_force_neighbor_list(positions, cell, pbc, 3.0)
    assert any(p[2] != 0 for p in pairs)


def test_shift_sign_convention() -> None:
    """r_ij = x_j - x_i + shift @ cell: atom 1 just below the upper face is atom 0's
    neighbour through the image one cell down."""
    positions = np.array([[0.5, 0.0, 0.0], [9.5, 0.0, 0.0]])
    cell = np.eye(3) * 10.0
    pbc = np.ones(3, dtype=bool)
    assert matscipy_pairs(positions, cell, pbc, 2.0) == {(0, 1, -1, 0, 0), (1, 0, 1, 0, 0)}


def test_pairs_are_symmetric() -> None:
    rng = np.random.default_rng(11)
    for kind in KINDS:
        positions, cell, pbc, r_max = random_structure(rng, kind)
        pairs = matscipy_pairs(positions, cell, pbc, r_max)
        assert pairs == {(j, i, -a, -b, -c) for i, j, a, b, c in pairs}


def test_zero_periodic_cell_vector_raises() -> None:
    cell = np.diag([5.0, 0.0, 5.0])
    with pytest.raises(CellError, match="axis 1"):
        neighbor_list(np.zeros((2, 3)), cell, np.ones(3, dtype=bool), 3.0)


def test_linearly_dependent_periodic_vectors_raise() -> None:
    cell = np.array([[5.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(CellError, match="linearly dependent"):
        neighbor_list(np.zeros((2, 3)), cell, np.array([True, True, False]), 3.0)
