"""Neighbor lists for preprocessing (CPU, matscipy).

The in-graph, TorchScript-able cell list used by exported models lives in
`equimd.potentials.data.cell_list`.
"""

from __future__ import annotations

import numpy as np

from equimd.checks import check_cell
from equimd.errors import CellError

__all__ = ["CellError", "brute_force_neighbor_list", "check_cell", "neighbor_list"]


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

    Raises ValueError for non-finite positions and `CellError` for an unusable periodic cell
    (see `check_cell`), both starting with `source`.
    """
    from matscipy.neighbours import neighbour_list as matscipy_neighbour_list

    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.asarray(cell, dtype=np.float64)
    finite = np.isfinite(positions).all(axis=1)
    if not finite.all():
        atom = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{source}: positions of atom {atom} are not finite: {positions[atom]}")
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
            # e.g. an all-zero cell for a molecule, or a wire whose open vectors were filled
            # in parallel to it: use vectors orthogonal to the periodic ones (only the
            # periodic vectors define images, so the pair set does not change)
            length = span.max() + 2.0 * r_max + 1.0
            cell[~pbc] = _orthonormal_complement(cell[pbc])[: int((~pbc).sum())] * length
    sender, receiver, shift = matscipy_neighbour_list(
        "ijS", positions=positions, cell=cell, pbc=pbc, cutoff=float(r_max)
    )
    return sender.astype(np.int64), receiver.astype(np.int64), shift.astype(np.float64)


def _orthonormal_complement(vectors: np.ndarray) -> np.ndarray:
    """[3 - k, 3] orthonormal rows orthogonal to the k independent rows of `vectors`."""
    if len(vectors) == 0:
        return np.eye(3)
    _, _, vh = np.linalg.svd(np.asarray(vectors, dtype=np.float64).reshape(-1, 3))
    return vh[len(vectors) :]


def brute_force_neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_max: float
) -> set[tuple[int, int, int, int, int]]:
    """Reference O(N² · images) pair set {(i, j, s0, s1, s2)} for tests.

    Positions need not be wrapped into the cell; cell vectors along open directions are
    ignored (they may be zero).
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    # Basis: periodic vectors plus orthonormal vectors along the open directions; for a
    # displacement d and periodic axis a, |fractional_a(d)| <= |d| / spacing_a.
    basis = cell.copy()
    basis[~pbc] = _orthonormal_complement(cell[pbc])
    inverse = np.linalg.inv(basis)
    fractional = positions @ inverse
    reach = []
    for axis in range(3):
        if not pbc[axis] or len(positions) == 0:
            reach.append(0)
            continue
        spacing = 1.0 / np.linalg.norm(inverse[:, axis])
        spread = fractional[:, axis].max() - fractional[:, axis].min()
        reach.append(int(np.ceil(r_max / spacing + spread)) + 1)
    pairs = set()
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
    return pairs
