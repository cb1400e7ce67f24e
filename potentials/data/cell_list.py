"""In-graph neighbor list: pure torch, TorchScript-scriptable, CPU and CUDA.

`neighbor_list_torch(positions, cell, pbc, r_max)` is the neighbor list that exported models
run inside their `forward` (see `equimd.deploy.module`). It needs no numpy and no Python-only
constructs, so `torch.jit.script` compiles it, and it runs on whatever device `positions`
live on. For preprocessing on the CPU, `equimd.potentials.data.neighbors.neighbor_list` (matscipy)
returns the same pairs.

Contract
--------
Inputs:
    positions [N, 3] Å, float32 or float64 (N >= 0; any device).
    cell      [3, 3] Å, rows are the lattice vectors a, b, c (same device; cast to float64
              internally for the geometry and to the positions' dtype for distances).
    pbc       [3] bool, periodicity along a, b, c.
    r_max     float, cutoff radius in Å (> 0).

Output, ``(edge_index, shifts)``:
    edge_index [2, E] int64, ``edge_index[0]`` = sender i, ``edge_index[1]`` = receiver j.
    shifts     [E, 3] integer lattice shifts, stored in the positions' dtype.

Shift sign convention (the repository-wide one, same as matscipy's ``"ijS"`` and
mace-torch)::

    r_ij = x_j - x_i + shifts_ij @ cell           (Å)

Guarantees:
- The pair set is *exactly* matscipy's: every (i, j, S) with ``|r_ij| < r_max`` (strictly),
  S = 0 along non-periodic directions, and (i, j, S) != (i, i, 0). The test is evaluated with
  the formula above in the positions' dtype, so only pairs within rounding of r_max can
  differ from a float64 computation. Each pair appears once, and the list is symmetric:
  (i, j, S) is present iff (j, i, -S) is.
- Deterministic order: sorted by sender, then receiver, then shift (lexicographic in
  S_a, S_b, S_c). Scripted and eager, CPU and CUDA, the cell list and the O(N²) path return
  identical tensors for the same input (up to pairs within rounding of r_max).
- Not differentiable: positions and cell are detached; edge vectors are to be recomputed
  (differentiably) from the returned shifts, e.g. by `equimd.potentials.data.graph.edge_vectors`.
- Memory O(N + E): distances are computed in chunks of ~2^20 at a time (8 MB in float64),
  never as an N x N matrix (the O(N²) path is chosen only when it is that small). A chunk
  holds at least one M x M block, M the largest bin occupancy, so strongly clustered atoms
  in a mostly empty box (where the grid is coarsened to O(N) bins) can exceed this.

Box invariants (what the function accepts):
- Triclinic cells of any skew: only the row vectors matter, not their orientation; cells
  need not be upper/lower triangular or right-handed. Strongly skewed cells are reduced
  internally (Lagrange-Gauss pairwise reduction, an integer change of basis) so they cost no
  more than orthogonal ones; the returned shifts always refer to the cell as given.
- Along a periodic direction the cell vector must be non-zero and the periodic vectors
  linearly independent; otherwise a ``RuntimeError`` whose message starts with
  ``"neighbor_list_torch:"`` is raised (``torch.jit.Error``, with the same message, from the
  scripted function). Along non-periodic directions the cell vector is ignored and may be
  zero: a molecule may pass ``cell = zeros(3, 3)`` with ``pbc = [F, F, F]``, and a slab or a
  wire may have zero vectors along its open directions.
- Cells smaller than r_max (even much smaller) are handled: an atom then sees several images
  of each neighbour and of itself. A cell so small that one atom would need more than
  ``MAX_IMAGES`` periodic images raises a ``RuntimeError`` instead of exhausting memory.
- Positions need not be wrapped into the cell: atoms anywhere (outside the cell along
  periodic or open directions, any number of cells away) are wrapped internally, and the
  shifts refer to the positions as given.

How it works: positions are mapped to fractional coordinates of a basis made of the
(reduced) periodic cell vectors plus orthonormal vectors along the open directions, and
wrapped into [0, 1) along periodic directions. Atoms are sorted into bins at least
r_max / BIN_SUBDIVISION thick (measured perpendicular to the lattice planes, so valid for any
skew); the atoms of each bin are compared with those of the bins within BIN_SUBDIVISION bins
of it, periodic images included. Only half of the neighbouring bins are visited (offset 0 and
the lexicographically positive offsets) and the other half of the pairs is obtained by
mirroring (i, j, S) -> (j, i, -S). Per bin, atoms are padded to the largest occupancy so the
distances of each (bin, neighbouring bin) block are one dense tensor operation. Candidates
pass a cutoff padded by a relative 1e-4 on wrapped coordinates, then the exact test above.

The O(N² · images) comparison is the same search with a single bin. ``method="auto"`` uses it
when it computes fewer distances than the binned grid (N² · images / 2 against
bins · offsets / 2 · M², M the largest bin occupancy) and at most 2^20 of them. Measured with
`benchmarks/bench_neighbors.py --crossover` (float64, 1 CPU thread): for fcc Cu (periodic,
r_max 5-6 Å) the O(N²) path is faster up to 50-110 atoms and the cell list from 72-144
atoms; for water clusters (open, r_max 5 Å) the O(N²) path is faster up to ~400 atoms and
the cell list from ~650 atoms. The rule picks the faster path (or one within ~10% of it) in
all these cases.

Costs: a few device-to-host synchronisations of small values (pbc and cell, the extent of
the atoms along open directions, the largest bin occupancy, the range of the shifts for the
sort key) besides those implied by data-dependent output sizes (``nonzero``). Output sizes
change from call to call, so the function is not CUDA-graph capturable. On the CPU the fixed
cost is ~0.5 ms (scripted) to ~0.8 ms (eager) per call, which dominates for small molecules.
"""

import math
from typing import List, Tuple

import torch
from torch import Tensor

# Bins are at least r_max / BIN_SUBDIVISION thick and each bin is compared with the bins
# within BIN_SUBDIVISION bins of it. Measured on fcc Cu (256-6912 atoms, r_max 5 and 6 Å), a
# 2700-atom random liquid and a 1029-atom water cluster: 1 is the fastest (2 computes fewer
# distances on some of them but is up to 3x slower overall; 3 is slower still).
BIN_SUBDIVISION: int = 1

# A structure whose cell needs more periodic images per atom than this is refused.
MAX_IMAGES: int = 1_000_000

# Candidates are pre-filtered with r_max * (1 + _PADDING) on wrapped coordinates, which is
# conservative against rounding; the exact strict test follows.
_PADDING: float = 1e-4

# Distances computed at once (blocks of bins are processed in chunks of about this many):
# bounds the temporaries to a few times 8 MB in float64 whatever the system size. Also the
# largest O(N²) comparison that "auto" chooses.
_CHUNK_ELEMENTS: int = 1 << 20


def neighbor_list_torch(
    positions: Tensor, cell: Tensor, pbc: Tensor, r_max: float, method: str = "auto"
) -> Tuple[Tensor, Tensor]:
    """All ordered pairs (i, j, S) with |x_j - x_i + S @ cell| < r_max, (j, S) != (i, 0).

    Args:
        positions: [N, 3] Å, float32 or float64.
        cell: [3, 3] Å, rows are lattice vectors (ignored along non-periodic directions).
        pbc: [3] bool.
        r_max: cutoff in Å.
        method: ``"cell_list"`` (binned search), ``"brute_force"`` (O(N² · images), a single
            bin) or ``"auto"`` (whichever computes fewer distances; see the module
            docstring). All give identical results.

    Returns:
        edge_index [2, E] int64 (sender i, receiver j) and shifts [E, 3] (integer-valued, in
        the positions' dtype), sorted by sender, receiver, shift. See the module docstring
        for the convention and guarantees.

    Raises:
        RuntimeError: a periodic direction with a zero or linearly dependent cell vector,
            a cell needing more than `MAX_IMAGES` images, r_max <= 0 or bad shapes.
    """
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise RuntimeError("neighbor_list_torch: positions must have shape [N, 3]")
    if cell.numel() != 9:
        raise RuntimeError("neighbor_list_torch: cell must have shape [3, 3]")
    if pbc.numel() != 3:
        raise RuntimeError("neighbor_list_torch: pbc must have 3 entries")
    if not r_max > 0.0:
        raise RuntimeError("neighbor_list_torch: r_max must be positive")
    if method != "auto" and method != "cell_list" and method != "brute_force":
        raise RuntimeError(
            "neighbor_list_torch: method must be 'auto', 'cell_list' or 'brute_force', got '"
            + method
            + "'"
        )
    device = positions.device
    dtype = positions.dtype
    positions = positions.detach()
    cell = cell.detach().reshape(3, 3).to(device=device)
    pbc_list: List[bool] = pbc.reshape(3).to(torch.bool).tolist()
    n_atoms = positions.shape[0]

    reach = _padded(r_max)
    geometry = _Geometry(positions, cell.to(torch.float64), pbc_list, r_max, reach)
    if n_atoms == 0:
        return _empty(device, dtype)
    grid = _Grid(geometry, reach, method)

    # Half of the pairs (see `_half_shell_candidates`), exact test, then the mirror images.
    sender, receiver, image = _half_shell_candidates(geometry, grid, reach)
    # Shifts with respect to the positions as given (x_w = x - w @ basis for wrap counts w),
    # then from the reduced basis back to the cell: shift = shift_reduced @ to_cell.
    shift = image - _gather(geometry.wraps, receiver) + _gather(geometry.wraps, sender)
    if geometry.reduced:
        shift = _times_matrix(shift, geometry.to_cell)
    edge = (
        _gather(positions, receiver)
        - _gather(positions, sender)
        + _times_matrix(shift.to(dtype), cell.to(dtype))
    )
    # (i, i, 0) cannot occur (`_half_shell_candidates` skips it); the test is strict.
    keep = ((edge * edge).sum(dim=1) < r_max * r_max).nonzero().reshape(-1)
    sender = _gather(sender, keep)
    receiver = _gather(receiver, keep)
    shift = _gather(shift, keep)
    # The mirror (j, i, -S) of (i, j, S) has exactly the negated edge vector in floating
    # point, hence the same distance.
    sender, receiver = torch.cat([sender, receiver]), torch.cat([receiver, sender])
    shift = torch.cat([shift, -shift])
    order = _lexicographic_order(sender, receiver, shift, n_atoms)
    edge_index = torch.stack([_gather(sender, order), _gather(receiver, order)])
    return edge_index, _gather(shift, order).to(dtype)


# TorchScript cannot read module-level floats, so the constants reach scripted code as
# default arguments (bound when the module is imported).
def _padded(r_max: float, padding: float = _PADDING) -> float:
    return r_max * (1.0 + padding)


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """values[index] along dim 0 for any index shape (index_select: faster than indexing)."""
    shape = list(index.shape) + list(values.shape[1:])
    return values.index_select(0, index.reshape(-1)).reshape(shape)


def _times_matrix(vectors: Tensor, matrix: Tensor) -> Tensor:
    """vectors @ matrix for [..., 3] @ [3, 3], written out (faster than matmul for 3x3)."""
    return (
        vectors[..., 0:1] * matrix[0]
        + vectors[..., 1:2] * matrix[1]
        + vectors[..., 2:3] * matrix[2]
    )


def _empty(device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    return (
        torch.zeros((2, 0), dtype=torch.long, device=device),
        torch.zeros((0, 3), dtype=dtype, device=device),
    )


class _Geometry:
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


def _image_offsets(reach: List[int], device: torch.device) -> Tensor:
    """[K, 3] int64: all integer vectors with |n_a| <= reach[a], in lexicographic order."""
    ranges = [torch.arange(-k, k + 1, dtype=torch.long, device=device) for k in reach]
    grids = torch.meshgrid(ranges, indexing="ij")
    return torch.stack([grids[0].reshape(-1), grids[1].reshape(-1), grids[2].reshape(-1)], dim=1)


def _half_count(reach: List[int]) -> int:
    """Offsets o with |o_a| <= reach[a] that are 0 or lexicographically positive."""
    return ((2 * reach[0] + 1) * (2 * reach[1] + 1) * (2 * reach[2] + 1) + 1) // 2


class _Grid:
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
        geometry: _Geometry,
        reach: float,
        method: str,
        subdivision: int = BIN_SUBDIVISION,
        max_single_bin: int = _CHUNK_ELEMENTS,
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


def _bins_per_axis(geometry: _Geometry, reach: float, subdivision: int, n_atoms: int) -> List[int]:
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


def _search_per_axis(geometry: _Geometry, reach: float, n_bins: List[int]) -> List[int]:
    search: List[int] = [0, 0, 0]
    for axis in range(3):
        if geometry.pbc[axis]:
            search[axis] = int(math.ceil(reach * n_bins[axis] / geometry.spacing[axis]))
        elif n_bins[axis] > 1:
            span = geometry.high[axis] - geometry.low[axis]
            search[axis] = min(int(math.ceil(reach * n_bins[axis] / span)), n_bins[axis] - 1)
    return search


def _bin_of_atoms(geometry: _Geometry, n_bins: List[int]) -> Tensor:
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
    return (coordinates * _strides(n_bins, device)).sum(dim=1)


def _strides(n_bins: List[int], device: torch.device) -> Tensor:
    return torch.tensor([n_bins[1] * n_bins[2], n_bins[2], 1], dtype=torch.long, device=device)


def _half_shell_candidates(
    geometry: _Geometry, grid: _Grid, reach: float, chunk_elements: int = _CHUNK_ELEMENTS
) -> Tuple[Tensor, Tensor, Tensor]:
    """Half of the candidate pairs: (sender, receiver, image) with |r| < reach on wrapped
    coordinates, `image` the lattice shift in `geometry.basis` between wrapped positions.

    Neighbouring bins are visited with the offsets o > 0 (lexicographically) and o = 0,
    where only pairs of distinct atoms in one order are kept: every unordered pair appears
    once, and the full list is this one plus its mirror (j, i, -image). Per bin, the atoms
    are padded to the largest bin occupancy M, and each (bin, neighbouring bin) block of
    M x M distances is computed densely, in chunks of about `chunk_elements` distances.
    """
    wrapped = geometry.wrapped
    device = wrapped.device
    dtype = wrapped.dtype
    n_atoms = wrapped.shape[0]
    n_bins = grid.n_bins
    total_bins = n_bins[0] * n_bins[1] * n_bins[2]
    max_size = grid.max_size

    # Padded table: atoms of bin b in table[b, :size[b]], then N (a padding atom). An extra
    # last bin is all padding: it stands for neighbouring bins outside the grid.
    if total_bins == 1:
        table = torch.cat(
            [
                torch.arange(n_atoms, device=device),
                torch.full((max_size,), n_atoms, dtype=torch.long, device=device),
            ]
        )
    else:
        atoms_by_bin = torch.argsort(grid.atom_bin, stable=True)
        bin_start = torch.cumsum(grid.bin_size, dim=0) - grid.bin_size
        sorted_bin = _gather(grid.atom_bin, atoms_by_bin)
        rank = torch.arange(n_atoms, device=device) - _gather(bin_start, sorted_bin)
        table = torch.full(((total_bins + 1) * max_size,), n_atoms, dtype=torch.long, device=device)
        table[sorted_bin * max_size + rank] = atoms_by_bin
    table = table.reshape(total_bins + 1, max_size)
    # Padding atoms sit at +inf as senders and at -inf as receivers: every distance that
    # involves one is +inf (never inf - inf), so they never pass the test. Coordinates are
    # kept per component ([3, B + 1, M]): reductions over a trailing axis of 3 are slow.
    infinity = torch.full((1, 3), math.inf, dtype=dtype, device=device)
    sender_positions = _gather(torch.cat([wrapped, infinity]), table).permute(2, 0, 1)
    receiver_positions = _gather(torch.cat([wrapped, -infinity]), table).permute(2, 0, 1)
    sender_positions = sender_positions.contiguous()
    receiver_positions = receiver_positions.contiguous()

    # Blocks: (bin, offset) for half of the offsets, 0 first, then the positive ones.
    offsets = _image_offsets(grid.search, device)
    offsets = offsets[(offsets.shape[0] - 1) // 2 :]
    n_offsets = offsets.shape[0]
    strides = _strides(n_bins, device)
    bins = torch.arange(total_bins, device=device)
    bin_coordinates = torch.stack(
        [torch.div(bins, strides[axis], rounding_mode="floor") % n_bins[axis] for axis in range(3)],
        dim=1,
    )  # [B, 3]
    bins_per_axis = torch.tensor(n_bins, dtype=torch.long, device=device)
    is_periodic = torch.tensor(geometry.pbc, dtype=torch.bool, device=device)
    neighbor = (bin_coordinates.unsqueeze(1) + offsets.unsqueeze(0)).reshape(-1, 3)  # [B K, 3]
    image = torch.div(neighbor, bins_per_axis, rounding_mode="floor")
    outside = ((image != 0) & ~is_periodic).any(dim=1)  # beyond the grid along an open axis
    image = torch.where(is_periodic, image, torch.zeros_like(image))
    neighbor_bin = ((neighbor - image * bins_per_axis) * strides).sum(dim=1)
    neighbor_bin = torch.where(outside, torch.full_like(neighbor_bin, total_bins), neighbor_bin)
    image_vectors = _times_matrix(image.to(dtype), geometry.basis.to(dtype)).T.contiguous()
    # within a bin (offset 0) keep only sender slot < receiver slot
    upper = torch.ones(max_size, max_size, dtype=torch.bool, device=device).triu(1)

    n_blocks = total_bins * n_offsets
    chunk = max(1, chunk_elements // max(1, max_size * max_size))
    senders: List[Tensor] = []
    receivers: List[Tensor] = []
    images: List[Tensor] = []
    for first in range(0, n_blocks, chunk):
        block = torch.arange(first, min(first + chunk, n_blocks), device=device)
        sender_bin = torch.div(block, n_offsets, rounding_mode="floor")
        receiver_bin = _gather(neighbor_bin, block)
        # squared distances [blocks, M (sender), M (receiver)], one component at a time
        squared = torch.zeros(0, dtype=dtype, device=device)
        for axis in range(3):
            targets = _gather(receiver_positions[axis], receiver_bin)
            targets = targets + _gather(image_vectors[axis], block).unsqueeze(1)
            component = targets.unsqueeze(1) - _gather(
                sender_positions[axis], sender_bin
            ).unsqueeze(2)
            if axis == 0:
                squared = component * component
            else:
                squared.addcmul_(component, component)
        close = squared < reach * reach
        same_bin = (block % n_offsets == 0).nonzero().reshape(-1)
        close.index_put_((same_bin,), close.index_select(0, same_bin) & upper)
        found = close.nonzero()
        found_block = _gather(block, found[:, 0])
        sender_slot = _gather(sender_bin, found[:, 0]) * max_size + found[:, 1]
        receiver_slot = _gather(receiver_bin, found[:, 0]) * max_size + found[:, 2]
        senders.append(_gather(table.reshape(-1), sender_slot))
        receivers.append(_gather(table.reshape(-1), receiver_slot))
        images.append(_gather(image, found_block))
    if len(senders) == 1:
        return senders[0], receivers[0], images[0]
    return torch.cat(senders), torch.cat(receivers), torch.cat(images)


def _lexicographic_order(sender: Tensor, receiver: Tensor, shift: Tensor, n_atoms: int) -> Tensor:
    """Permutation sorting pairs by (sender, receiver, shift_a, shift_b, shift_c)."""
    if sender.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=sender.device)
    bounds: List[int] = torch.stack([shift.min(), shift.max()]).tolist()
    low = bounds[0]
    extent = bounds[1] - bounds[0] + 1
    if float(n_atoms) * float(n_atoms) * float(extent) ** 3 < 4.0e18:
        shifted = shift - low
        key = (sender * n_atoms + receiver) * extent + shifted[:, 0]
        key = (key * extent + shifted[:, 1]) * extent + shifted[:, 2]
        return torch.argsort(key)
    # Too many images or atoms for one int64 key: stable sorts, least significant first.
    order = torch.argsort(shift[:, 2], stable=True)
    for column in [shift[:, 1], shift[:, 0], receiver, sender]:
        order = order[torch.argsort(column[order], stable=True)]
    return order
