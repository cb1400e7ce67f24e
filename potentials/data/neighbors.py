"""Neighbor lists for preprocessing (CPU, matscipy).

The in-graph, TorchScript-able cell list used by exported models lives in
`potentials.data.cell_list`.
"""

from __future__ import annotations

import numpy as np


class CellError(ValueError):
    """A cell that cannot define periodic images (zero, degenerate or too thin)."""


def check_cell(cell: np.ndarray, pbc: np.ndarray, source: str = "<structure>") -> None:
    """Raise `CellError` if a periodic direction has a zero or linearly dependent vector."""
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    for axis in range(3):
        if pbc[axis] and np.linalg.norm(cell[axis]) < 1e-8:
            raise CellError(
                f"{source}: pbc is True along axis {axis} but cell vector {axis} is zero"
            )
    if pbc.any():
        volume = abs(np.linalg.det(cell))
        if pbc.all() and volume < 1e-6:
            raise CellError(f"{source}: periodic cell is degenerate (volume {volume:.3g} Å³)")


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    r_max: float,
    source: str = "<structure>",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ordered pairs (i, j, shift) with |x_j - x_i + shift @ cell| < r_max, i.e. (j, shift) != (i, 0).

    Handles periodic, mixed (slab) and non-periodic structures, triclinic cells, and cells
    smaller than r_max (several images of the same atom). Returns sender [E], receiver [E] and
    integer shifts [E, 3] (as float64).
    """
    from matscipy.neighbours import neighbour_list as matscipy_neighbour_list

    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.asarray(cell, dtype=np.float64)
    check_cell(cell, pbc, source)
    if not pbc.all():
        # matscipy needs a non-degenerate box: for non-periodic directions use a box
        # spanning the atoms plus a margin (no images are created along them).
        cell = cell.copy()
        span = positions.max(axis=0) - positions.min(axis=0) if len(positions) else np.zeros(3)
        for axis in range(3):
            if not pbc[axis]:
                direction = cell[axis]
                norm = np.linalg.norm(direction)
                length = span.max() + 2.0 * r_max + 1.0
                if norm < 1e-8:
                    direction = np.eye(3)[axis]
                    norm = 1.0
                cell[axis] = direction / norm * max(norm, length)
        if abs(np.linalg.det(cell)) < 1e-8:
            # e.g. an all-zero cell for a molecule: fall back to an orthogonal box
            lengths = np.full(3, span.max() + 2.0 * r_max + 1.0)
            for axis in range(3):
                if not pbc[axis]:
                    cell[axis] = np.eye(3)[axis] * lengths[axis]
    sender, receiver, shift = matscipy_neighbour_list(
        "ijS", positions=positions, cell=cell, pbc=pbc, cutoff=float(r_max)
    )
    return sender.astype(np.int64), receiver.astype(np.int64), shift.astype(np.float64)


def brute_force_neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_max: float
) -> set[tuple[int, int, int, int, int]]:
    """Reference O(N² · images) pair set {(i, j, s0, s1, s2)} for tests."""
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    reach = []
    if pbc.any():
        inverse = np.linalg.inv(cell) if abs(np.linalg.det(cell)) > 1e-12 else None
    for axis in range(3):
        if not pbc[axis]:
            reach.append(0)
            continue
        # distance between lattice planes perpendicular to this axis
        normal = inverse[:, axis]
        spacing = 1.0 / np.linalg.norm(normal)
        reach.append(int(np.ceil(r_max / spacing)) + 1)
    pairs = set()
    n = len(positions)
    for s0 in range(-reach[0], reach[0] + 1):
        for s1 in range(-reach[1], reach[1] + 1):
            for s2 in range(-reach[2], reach[2] + 1):
                offset = np.array([s0, s1, s2], dtype=np.float64) @ cell
                d = positions[None, :, :] - positions[:, None, :] + offset
                dist = np.linalg.norm(d, axis=-1)
                for i, j in zip(*np.nonzero(dist < r_max), strict=True):
                    if i == j and s0 == s1 == s2 == 0:
                        continue
                    pairs.add((int(i), int(j), s0, s1, s2))
    assert n >= 0
    return pairs
