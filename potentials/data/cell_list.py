"""In-graph neighbor list: pure torch, TorchScript-scriptable, CPU and CUDA.

`neighbor_list_torch(positions, cell, pbc, r_max)` is the neighbor list that exported models
run inside their `forward` (see `deploy.module`). It needs no numpy and no Python-only
constructs, so `torch.jit.script` compiles it, and it runs on whatever device `positions`
live on. For preprocessing on the CPU, `potentials.data.neighbors.neighbor_list` (matscipy)
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
- The pair set is *exactly* matscipy's: every (i, j, S) with ``|r_ij| < r_max`` (strictly;
  evaluated with the formula above in the positions' dtype, so pairs within rounding of r_max
  may differ from a float64 computation), S = 0 along non-periodic directions, and
  (i, j, S) != (i, i, 0). Each pair appears once; the list is symmetric: (i, j, S) is present
  iff (j, i, -S) is.
- Deterministic order: sorted by sender, then receiver, then shift (lexicographic in
  S_a, S_b, S_c). Scripted and eager, CPU and CUDA, the cell list and the O(N²) path all
  return identical tensors for the same input.
- Not differentiable: positions and cell are detached; the edge vectors are meant to be
  recomputed (differentiably) from the returned shifts, e.g. by `graph.edge_vectors`.

Box invariants (what the function accepts):
- Triclinic cells of any skew: only the row vectors matter, not their orientation; cells
  need not be upper/lower triangular or right-handed.
- Along a periodic direction the cell vector must be non-zero and the periodic vectors
  linearly independent; otherwise a ``RuntimeError`` (message starts with
  ``"neighbor_list_torch:"``) is raised. Along non-periodic directions the cell vector is
  ignored and may be zero: a molecule may pass ``cell = zeros(3, 3)``, ``pbc = [F, F, F]``;
  a slab or wire may have zero vectors along its open directions.
- Cells smaller than r_max (even much smaller) are handled: an atom then sees several images
  of each neighbour, and of itself. A cell so thin that one atom would need more than
  ``MAX_IMAGES`` periodic images raises a ``RuntimeError`` rather than exhausting memory.
- Positions need not be wrapped into the cell: atoms anywhere (far outside, along periodic
  or non-periodic directions) are wrapped internally and the returned shifts refer to the
  positions as given.

How it works: positions are mapped to fractional coordinates of a basis made of the periodic
cell vectors plus orthonormal vectors spanning the open directions, and wrapped into [0, 1)
along periodic directions. Atoms are binned on a grid whose bins are at least
r_max / BIN_SUBDIVISION thick (thickness measured perpendicular to the lattice planes, so it
is valid for any skew); each atom is compared with the atoms of the bins within
BIN_SUBDIVISION bins of its own, periodic images included (O(N) work and memory). Below
``BRUTE_FORCE_MAX_ATOMS`` atoms a direct O(N² · images) comparison is faster and is used
instead. Both paths first filter candidates with a slightly padded cutoff on wrapped
coordinates and then apply the exact test above on the survivors.

Costs: one device-to-host synchronisation for the geometry (a handful of scalars), plus the
ones implied by data-dependent output sizes (``repeat_interleave``/``nonzero``). The output
size changes from call to call, so the function is not CUDA-graph capturable.
"""

import math
from typing import List, Tuple

import torch
from torch import Tensor

# Atoms per bin side: bins are >= r_max / BIN_SUBDIVISION thick and each atom searches
# BIN_SUBDIVISION bins on each side. 2 checks ~2.5x fewer candidates than 1 on dense
# systems (benchmarks/bench_neighbors.py: fcc Cu, 2048 atoms, r_max = 6 Å).
BIN_SUBDIVISION: int = 2

# Below this many atoms the O(N² · images) path is used. Measured crossover with
# benchmarks/bench_neighbors.py (2 CPU threads, float64, fcc Cu and a molecule): the direct
# path is faster up to ~100-150 atoms; see the benchmark for numbers.
BRUTE_FORCE_MAX_ATOMS: int = 128

# A structure whose cell needs more periodic images per atom than this is refused.
MAX_IMAGES: int = 1_000_000

# Candidates are pre-filtered with r_max * (1 + _PADDING) on wrapped coordinates, which is
# conservative against rounding; the exact strict test follows.
_PADDING: float = 1e-4


def neighbor_list_torch(
    positions: Tensor, cell: Tensor, pbc: Tensor, r_max: float, method: str = "auto"
) -> Tuple[Tensor, Tensor]:
    """All ordered pairs (i, j, S) with |x_j - x_i + S @ cell| < r_max, (j, S) != (i, 0).

    Args:
        positions: [N, 3] Å, float32 or float64.
        cell: [3, 3] Å, rows are lattice vectors (ignored along non-periodic directions).
        pbc: [3] bool.
        r_max: cutoff in Å.
        method: ``"auto"`` (cell list, or O(N²) below `BRUTE_FORCE_MAX_ATOMS` atoms),
            ``"cell_list"`` or ``"brute_force"``; all give identical results.

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
    use_brute_force = method == "brute_force" or (method == "auto" and _is_small(n_atoms))
    if use_brute_force:
        sender, receiver, image = _brute_force_candidates(geometry, reach)
    else:
        sender, receiver, image = _cell_list_candidates(geometry, reach)

    # Shifts with respect to the positions as given (x_w = x - w @ basis for wrap counts w),
    # then from the reduced basis back to the cell: shift = shift_reduced @ to_cell.
    shift = image - geometry.wraps[receiver] + geometry.wraps[sender]
    if geometry.reduced:
        shift = (shift.unsqueeze(2) * geometry.to_cell.unsqueeze(0)).sum(dim=1)
    shift_float = shift.to(dtype)
    cell_dtype = cell.to(dtype)
    edge = positions[receiver] - positions[sender] + shift_float @ cell_dtype
    keep = (edge * edge).sum(dim=1) < r_max * r_max
    keep = keep & ((sender != receiver) | (shift != 0).any(dim=1))
    sender = sender[keep]
    receiver = receiver[keep]
    shift = shift[keep]
    if geometry.reduced or not use_brute_force:
        order = _lexicographic_order(sender, receiver, shift, n_atoms)
        sender = sender[order]
        receiver = receiver[order]
        shift = shift[order]
    return torch.stack([sender, receiver]), shift.to(dtype)


# TorchScript cannot read module-level floats, so the constants reach scripted code as
# default arguments (bound when the module is imported).
def _padded(r_max: float, padding: float = _PADDING) -> float:
    return r_max * (1.0 + padding)


def _is_small(n_atoms: int, max_atoms: int = BRUTE_FORCE_MAX_ATOMS) -> bool:
    return n_atoms <= max_atoms


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


def _brute_force_candidates(geometry: _Geometry, reach: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Candidate (sender, receiver, image) triples by comparing all pairs and images.

    `image` is the lattice shift between wrapped positions. Returned in lexicographic order of
    (sender, receiver, image), which the final shifts inherit.
    """
    wrapped = geometry.wrapped
    device = wrapped.device
    n_atoms = wrapped.shape[0]
    images = _image_offsets(geometry.images_needed, device)
    # images are zero along open axes, so the basis rows there do not contribute
    image_vectors = images.to(wrapped.dtype) @ geometry.basis.to(wrapped.dtype)
    # [N (sender), N (receiver), K (image), 3]
    vectors = (
        wrapped.reshape(1, n_atoms, 1, 3)
        - wrapped.reshape(n_atoms, 1, 1, 3)
        + image_vectors.reshape(1, 1, -1, 3)
    )
    close = (vectors * vectors).sum(dim=3) < reach * reach
    index = close.nonzero()
    return index[:, 0], index[:, 1], images[index[:, 2]]


def _cell_list_candidates(
    geometry: _Geometry, reach: float, subdivision: int = BIN_SUBDIVISION
) -> Tuple[Tensor, Tensor, Tensor]:
    """Candidate (sender, receiver, image) triples from a cell list, O(N) memory and work.

    Sender-major order; the caller sorts the final pairs.
    """
    wrapped = geometry.wrapped
    fractional = geometry.fractional
    device = wrapped.device
    n_atoms = wrapped.shape[0]
    pbc = geometry.pbc

    # Grid: n_bins[a] bins along axis a, each >= reach / BIN_SUBDIVISION thick.
    n_bins: List[int] = [1, 1, 1]
    for axis in range(3):
        if pbc[axis]:
            n_bins[axis] = max(1, int(math.floor(geometry.spacing[axis] * subdivision / reach)))
        else:
            span = geometry.high[axis] - geometry.low[axis]
            n_bins[axis] = int(math.floor(span * subdivision / reach)) + 1
    # Few atoms in a big box (or far apart along an open axis): coarsen the grid so that
    # the number of bins stays O(N).
    max_bins = 8 * n_atoms + 64
    while n_bins[0] * n_bins[1] * n_bins[2] > max_bins:
        for axis in range(3):
            n_bins[axis] = (n_bins[axis] + 1) // 2

    # Bin thickness (fractional units along periodic axes, Å along open ones) and the number
    # of bins to search on each side.
    width: List[float] = [1.0, 1.0, 1.0]
    search: List[int] = [0, 0, 0]
    for axis in range(3):
        if pbc[axis]:
            width[axis] = 1.0 / n_bins[axis]
            search[axis] = int(math.ceil(reach * n_bins[axis] / geometry.spacing[axis]))
        else:
            span = geometry.high[axis] - geometry.low[axis]
            width[axis] = max(reach / subdivision, span / n_bins[axis])
            search[axis] = min(int(math.ceil(reach / width[axis])), n_bins[axis] - 1)

    origin = torch.tensor(
        [0.0 if pbc[a] else geometry.low[a] for a in range(3)], dtype=torch.float64, device=device
    )
    widths = torch.tensor(width, dtype=torch.float64, device=device)
    bins_per_axis = torch.tensor(n_bins, dtype=torch.long, device=device)
    atom_bin = torch.floor((fractional - origin) / widths).to(torch.long)
    atom_bin = torch.minimum(atom_bin.clamp_min(0), bins_per_axis - 1)  # [N, 3]
    strides = torch.tensor(
        [n_bins[1] * n_bins[2], n_bins[2], 1], dtype=torch.long, device=device
    )
    atom_bin_id = (atom_bin * strides).sum(dim=1)

    # Atoms sorted by bin; bin b holds atoms_by_bin[bin_start[b] : bin_start[b] + bin_size[b]].
    atoms_by_bin = torch.argsort(atom_bin_id, stable=True)
    total_bins = n_bins[0] * n_bins[1] * n_bins[2]
    bin_size = torch.bincount(atom_bin_id, minlength=total_bins)
    bin_start = torch.cumsum(bin_size, dim=0) - bin_size

    # Neighbouring bins of each atom's bin: [N, K, 3] bin coordinates and lattice images.
    offsets = _image_offsets(search, device)
    n_offsets = offsets.shape[0]
    neighbor_bin = atom_bin.unsqueeze(1) + offsets.unsqueeze(0)
    image = torch.div(neighbor_bin, bins_per_axis, rounding_mode="floor")
    periodic = torch.tensor(pbc, dtype=torch.bool, device=device)
    valid = ((image == 0) | periodic).all(dim=2)  # open axes: stay inside the grid
    image = torch.where(periodic, image, torch.zeros_like(image))
    neighbor_bin = neighbor_bin - image * bins_per_axis
    neighbor_bin_id = (neighbor_bin * strides).sum(dim=2).clamp(0, total_bins - 1)

    # Expand every (atom, neighbouring bin) into its candidate receivers.
    counts = (bin_size[neighbor_bin_id] * valid.to(torch.long)).reshape(-1)  # [N * K]
    slot = torch.repeat_interleave(torch.arange(n_atoms * n_offsets, device=device), counts)
    first_candidate = torch.cumsum(counts, dim=0) - counts
    rank_in_bin = torch.arange(slot.shape[0], device=device) - first_candidate[slot]
    receiver = atoms_by_bin[bin_start[neighbor_bin_id.reshape(-1)[slot]] + rank_in_bin]
    sender = torch.div(slot, n_offsets, rounding_mode="floor")

    # Padded distance filter on wrapped coordinates: x_w[j] - (x_w[i] - image @ cell).
    image = image.reshape(-1, 3)
    origin_of_slot = wrapped.repeat_interleave(n_offsets, dim=0) - image.to(
        wrapped.dtype
    ) @ geometry.basis.to(wrapped.dtype)
    vectors = wrapped[receiver] - origin_of_slot[slot]
    close = (vectors * vectors).sum(dim=1) < reach * reach
    return sender[close], receiver[close], image[slot[close]]


def _lexicographic_order(sender: Tensor, receiver: Tensor, shift: Tensor, n_atoms: int) -> Tensor:
    """Permutation sorting pairs by (sender, receiver, shift_a, shift_b, shift_c)."""
    if sender.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=sender.device)
    low = shift.min(dim=0)[0]
    extent_values: List[int] = (shift.max(dim=0)[0] - low + 1).tolist()
    key_range = float(n_atoms) * float(n_atoms)
    for extent in extent_values:
        key_range *= float(extent)
    if key_range < 4.0e18:
        shifted = shift - low
        key = (sender * n_atoms + receiver) * extent_values[0] + shifted[:, 0]
        key = (key * extent_values[1] + shifted[:, 1]) * extent_values[2] + shifted[:, 2]
        return torch.argsort(key)
    # Too many images or atoms for one int64 key: stable sorts, least significant first.
    order = torch.argsort(shift[:, 2], stable=True)
    for column in [shift[:, 1], shift[:, 0], receiver, sender]:
        order = order[torch.argsort(column[order], stable=True)]
    return order
