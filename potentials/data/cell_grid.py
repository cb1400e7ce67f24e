"""Where the atoms sit, for the in-graph cell list (`equimd.potentials.data.cell_list`): the
box and the bins. Both are TorchScript classes, scripted with the cell list into exported models.

`CellGeometry` checks the periodic cell vectors, reduces strongly skewed cells (pairwise
Lagrange-Gauss reduction, an integer change of basis), completes the basis with orthonormal
vectors along open directions and wraps the positions into [0, 1) along periodic directions.
`CellGrid` sorts the atoms into bins at least r_max / BIN_SUBDIVISION thick (measured
perpendicular to the lattice planes, so valid for any skew) and decides, for
``method="auto"``, whether a single bin (the O(N² · images) comparison) computes fewer
distances. The 3x3 arithmetic happens on the host in float64.
"""

import math
from typing import List

import torch
from torch import Tensor

__all__ = [
    "BIN_SUBDIVISION", "CHUNK_ELEMENTS", "MAX_IMAGES", "CellGeometry", "CellGrid", "bin_strides",
]

# Bins are at least r_max / BIN_SUBDIVISION thick and each bin is compared with the bins
# within BIN_SUBDIVISION bins of it. Measured on fcc Cu (256-6912 atoms, r_max 5 and 6 Å), a
# 2700-atom random liquid and a 1029-atom water cluster: 1 is the fastest (2 computes fewer
# distances on some of them but is up to 3x slower overall; 3 is slower still).
BIN_SUBDIVISION: int = 1

# A structure whose cell needs more periodic images per atom than this is refused.
MAX_IMAGES: int = 1_000_000

# Distances computed at once (blocks of bins are processed in chunks of about this many):
# bounds the temporaries to a few times 8 MB in float64 whatever the system size. Also the
# largest O(N²) comparison that "auto" chooses.
CHUNK_ELEMENTS: int = 1 << 20


class CellGeometry:
    """Validated, reduced cell geometry and wrapped coordinates (a TorchScript class).

    The periodic cell vectors are first reduced (pairwise Lagrange-Gauss reduction, an
    integer unimodular change of basis) so that strongly skewed cells cost no more than
    orthogonal ones; open directions get orthonormal vectors orthogonal to the periodic
    ones. The 3x3 arithmetic happens on the host in float64.

    basis:      [3, 3] float64 rows: reduced periodic vectors and open unit vectors. The
                fractional coordinate along an open axis is a length in Å.
    to_cell:    [3, 3] int64 T with shift (in the cell) = shift (in the basis) @ T.
    reduced:    whether T differs from the identity.
    spacing:    distance between lattice planes of `basis` (Å; periodic axes).
    images_needed: periodic images to search on each side, per axis.
    fractional: [N, 3] float64 coordinates in `basis`, wrapped to [0, 1) on periodic axes.
    wraps:      [N, 3] int64 w with positions = wrapped + w @ basis (zero on open axes).
    wrapped:    [N, 3] wrapped positions in the positions' dtype (Å).
    low, high:  per-axis min / max of `fractional` (host floats; Å along open axes).
    """

    def __init__(
        self,
        positions: Tensor,
        cell: Tensor,
        pbc: List[bool],
        r_max: float,
        reach: float,
        max_images: int = MAX_IMAGES,
    ) -> None:
        self.pbc = pbc
        device = positions.device
        flat: List[float] = cell.to(torch.float64).reshape(9).tolist()  # host synchronisation
        rows = [flat[0:3], flat[3:6], flat[6:9]]
        periodic: List[int] = []
        open_axes: List[int] = []
        for axis in range(3):
            if pbc[axis]:
                periodic.append(axis)
            else:
                open_axes.append(axis)
        _check_periodic_vectors(rows, periodic)

        # Reduce the periodic vectors; T starts as the identity.
        to_cell = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
        self.reduced = _reduce(rows, to_cell, periodic)
        _complete_basis(rows, periodic, open_axes)

        # Inverse by the adjugate: column a of the inverse is (b × c) / det for a's partners.
        cofactors = [
            _cross(rows[1], rows[2]),
            _cross(rows[2], rows[0]),
            _cross(rows[0], rows[1]),
        ]
        det = _dot(rows[0], cofactors[0])
        self.spacing: List[float] = [abs(det) / _norm(c) for c in cofactors]
        self.images_needed: List[int] = [0, 0, 0]
        total_images = 1
        for axis in periodic:
            self.images_needed[axis] = int(math.ceil(reach / self.spacing[axis]))
            total_images *= 2 * self.images_needed[axis] + 1
        if total_images > max_images:
            raise RuntimeError(
                "neighbor_list_torch: the cell is too small for r_max = "
                + str(r_max)
                + " Å: each atom would see "
                + str(total_images)
                + " periodic images (lattice plane spacings "
                + str(self.spacing)
                + " Å)"
            )

        self.basis = torch.tensor(rows, dtype=torch.float64, device=device)
        self.to_cell = torch.tensor(to_cell, dtype=torch.long, device=device)
        inverse = torch.tensor(
            [[c[a] / det for c in cofactors] for a in range(3)],
            dtype=torch.float64,
            device=device,
        )
        positions64 = positions.to(torch.float64)
        fractional = positions64 @ inverse
        is_periodic = torch.tensor(pbc, dtype=torch.bool, device=device)
        wraps = torch.where(is_periodic, torch.floor(fractional), torch.zeros_like(fractional))
        self.fractional = fractional - wraps
        self.wraps = wraps.to(torch.long)
        self.wrapped = (positions64 - wraps @ self.basis).to(positions.dtype)
        self.low: List[float] = [0.0, 0.0, 0.0]
        self.high: List[float] = [0.0, 0.0, 0.0]
        if positions.shape[0] > 0 and len(open_axes) > 0:
            bounds: List[List[float]] = torch.stack(
                [self.fractional.min(dim=0)[0], self.fractional.max(dim=0)[0]]
            ).tolist()
            self.low = bounds[0]
            self.high = bounds[1]


def _dot(a: List[float], b: List[float]) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _norm(a: List[float]) -> float:
    return math.sqrt(_dot(a, a))


def _cross(a: List[float], b: List[float]) -> List[float]:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _check_periodic_vectors(rows: List[List[float]], periodic: List[int]) -> None:
    """Raise if a periodic cell vector is zero or the periodic vectors are dependent."""
    lengths: List[float] = [_norm(rows[axis]) for axis in range(3)]
    for axis in periodic:
        if not lengths[axis] > 1e-8:
            raise RuntimeError(
                "neighbor_list_torch: pbc is True along axis "
                + str(axis)
                + " but cell vector "
                + str(axis)
                + " is zero ("
                + str(rows[axis])
                + " Å); give a non-zero cell vector or set pbc False along this axis"
            )
    # |volume| spanned by the periodic vectors relative to the product of their lengths
    # (1 when orthogonal, 0 when linearly dependent).
    relative_volume = 1.0
    if len(periodic) == 2:
        area = _norm(_cross(rows[periodic[0]], rows[periodic[1]]))
        relative_volume = area / (lengths[periodic[0]] * lengths[periodic[1]])
    elif len(periodic) == 3:
        volume = abs(_dot(rows[0], _cross(rows[1], rows[2])))
        relative_volume = volume / (lengths[0] * lengths[1] * lengths[2])
    if not relative_volume > 1e-10:
        raise RuntimeError(
            "neighbor_list_torch: the periodic cell vectors are linearly dependent "
            + "(degenerate cell "
            + str(rows)
            + " Å, relative volume "
            + str(relative_volume)
            + ")"
        )


def _reduce(rows: List[List[float]], to_cell: List[List[int]], periodic: List[int]) -> bool:
    """In place: pairwise-reduce the periodic rows (|b_i · b_j| <= |b_j|² / 2 for all i, j).

    Each accepted step b_i -= m b_j (m integer) strictly shortens b_i, so the loop ends; the
    same integer operation is applied to the rows of `to_cell`, keeping rows = to_cell @ cell.
    Returns whether any row changed.
    """
    reduced = False
    for _ in range(1000):
        changed = False
        for i in periodic:
            for j in periodic:
                if i == j:
                    continue
                ratio = _dot(rows[i], rows[j]) / _dot(rows[j], rows[j])
                if abs(ratio) > 0.5 + 1e-9:
                    multiple = int(math.floor(ratio + 0.5))
                    for k in range(3):
                        rows[i][k] -= multiple * rows[j][k]
                        to_cell[i][k] -= multiple * to_cell[j][k]
                    changed = True
                    reduced = True
        if not changed:
            break
    return reduced


def _complete_basis(rows: List[List[float]], periodic: List[int], open_axes: List[int]) -> None:
    """In place: replace the open rows by orthonormal vectors orthogonal to the periodic rows."""
    if len(open_axes) == 3:
        rows[0] = [1.0, 0.0, 0.0]
        rows[1] = [0.0, 1.0, 0.0]
        rows[2] = [0.0, 0.0, 1.0]
    elif len(open_axes) == 1:
        normal = _cross(rows[periodic[0]], rows[periodic[1]])
        length = _norm(normal)
        rows[open_axes[0]] = [x / length for x in normal]
    elif len(open_axes) == 2:
        length = _norm(rows[periodic[0]])
        direction = [x / length for x in rows[periodic[0]]]
        # the Cartesian axis least aligned with the wire
        smallest = 0
        for k in range(3):
            if abs(direction[k]) < abs(direction[smallest]):
                smallest = k
        helper = [0.0, 0.0, 0.0]
        helper[smallest] = 1.0
        first = _cross(direction, helper)
        length = _norm(first)
        first = [x / length for x in first]
        rows[open_axes[0]] = first
        rows[open_axes[1]] = _cross(direction, first)


def _half_count(reach: List[int]) -> int:
    """Offsets o with |o_a| <= reach[a] that are 0 or lexicographically positive."""
    return ((2 * reach[0] + 1) * (2 * reach[1] + 1) * (2 * reach[2] + 1) + 1) // 2


class CellGrid:
    """The bins atoms are sorted into (a TorchScript class).

    n_bins:    bins per axis. Periodic axes split the wrapped fractional range [0, 1), open
               axes the range [low, high] of the atoms, into bins at least
               reach / BIN_SUBDIVISION thick (perpendicular to the lattice planes).
    search:    bins to visit on each side, per axis. A displacement shorter than reach
               changes the fractional coordinate along a periodic axis by less than
               reach / spacing, so these bins (periodic images included) hold every
               neighbour.
    atom_bin:  [N] int64 flat bin index of each atom.
    bin_size:  [B] int64 atoms per bin; max_size = M, the largest.

    A single bin that searches every needed periodic image is the O(N² · images)
    comparison. With method "auto" it is chosen when it computes fewer distances,
    N² · half(images), than the grid, B · half(offsets) · M², and at most
    `max_single_bin` (so that it needs one chunk of memory).
    """

    def __init__(
        self,
        geometry: CellGeometry,
        reach: float,
        method: str,
        subdivision: int = BIN_SUBDIVISION,
        max_single_bin: int = CHUNK_ELEMENTS,
    ) -> None:
        n_atoms = geometry.wrapped.shape[0]
        device = geometry.wrapped.device
        self.n_bins: List[int] = [1, 1, 1]
        self.search: List[int] = geometry.images_needed
        self.atom_bin = torch.zeros(n_atoms, dtype=torch.long, device=device)
        self.bin_size = torch.full((1,), n_atoms, dtype=torch.long, device=device)
        self.max_size = n_atoms
        if method == "brute_force":
            return
        n_bins = _bins_per_axis(geometry, reach, subdivision, n_atoms)
        total_bins = n_bins[0] * n_bins[1] * n_bins[2]
        if total_bins == 1:  # the grid is the single bin
            return
        search = _search_per_axis(geometry, reach, n_bins)
        atom_bin = _bin_of_atoms(geometry, n_bins)
        bin_size = torch.bincount(atom_bin, minlength=total_bins)
        max_size = int(bin_size.max())  # host synchronisation
        if method == "auto":
            # distances computed by each (floats: no integer overflow)
            single_bin = float(n_atoms) ** 2 * float(_half_count(geometry.images_needed))
            grid = float(total_bins) * float(_half_count(search)) * float(max_size) ** 2
            if single_bin <= grid and single_bin <= float(max_single_bin):
                return
        self.n_bins = n_bins
        self.search = search
        self.atom_bin = atom_bin
        self.bin_size = bin_size
        self.max_size = max_size


def _bins_per_axis(
    geometry: CellGeometry, reach: float, subdivision: int, n_atoms: int
) -> List[int]:
    n_bins: List[int] = [1, 1, 1]
    for axis in range(3):
        if geometry.pbc[axis]:
            thickness = geometry.spacing[axis]
        else:
            thickness = geometry.high[axis] - geometry.low[axis]
        n_bins[axis] = max(1, int(math.floor(thickness * subdivision / reach)))
    # Few atoms in a big box (or far apart along an open axis): coarsen the grid so that
    # the number of bins stays O(N).
    max_bins = 2 * n_atoms + 64
    while n_bins[0] * n_bins[1] * n_bins[2] > max_bins:
        for axis in range(3):
            n_bins[axis] = (n_bins[axis] + 1) // 2
    return n_bins


def _search_per_axis(geometry: CellGeometry, reach: float, n_bins: List[int]) -> List[int]:
    search: List[int] = [0, 0, 0]
    for axis in range(3):
        if geometry.pbc[axis]:
            search[axis] = int(math.ceil(reach * n_bins[axis] / geometry.spacing[axis]))
        elif n_bins[axis] > 1:
            span = geometry.high[axis] - geometry.low[axis]
            search[axis] = min(int(math.ceil(reach * n_bins[axis] / span)), n_bins[axis] - 1)
    return search


def _bin_of_atoms(geometry: CellGeometry, n_bins: List[int]) -> Tensor:
    """[N] int64 flat bin index; periodic axes split [0, 1), open axes [low, high]."""
    device = geometry.fractional.device
    low: List[float] = [0.0, 0.0, 0.0]
    width: List[float] = [1.0, 1.0, 1.0]
    for axis in range(3):
        if geometry.pbc[axis]:
            width[axis] = 1.0 / n_bins[axis]
        else:
            low[axis] = geometry.low[axis]
            span = geometry.high[axis] - geometry.low[axis]
            width[axis] = max(span / n_bins[axis], 1e-300)
    scaled = (geometry.fractional - torch.tensor(low, dtype=torch.float64, device=device)) / (
        torch.tensor(width, dtype=torch.float64, device=device)
    )
    limit = torch.tensor(n_bins, dtype=torch.long, device=device) - 1
    coordinates = torch.minimum(torch.floor(scaled).to(torch.long).clamp_min(0), limit)
    return (coordinates * bin_strides(n_bins, device)).sum(dim=1)


def bin_strides(n_bins: List[int], device: torch.device) -> Tensor:
    return torch.tensor([n_bins[1] * n_bins[2], n_bins[2], 1], dtype=torch.long, device=device)
