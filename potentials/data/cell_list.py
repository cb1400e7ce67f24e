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

How it works (the box and the bins are `equimd.potentials.data.cell_grid`): positions are
mapped to fractional coordinates of a basis made of the (reduced) periodic cell vectors plus
orthonormal vectors along the open directions, and wrapped into [0, 1) along periodic
directions. Atoms are sorted into bins at least r_max / BIN_SUBDIVISION thick (measured
perpendicular to the lattice planes, so valid for any skew); the atoms of each bin are compared
with those of the bins within BIN_SUBDIVISION bins of it, periodic images included. Only half
of the neighbouring bins are visited (offset 0 and the lexicographically positive offsets) and
the other half of the pairs is obtained by mirroring (i, j, S) -> (j, i, -S). Per bin, atoms
are padded to the largest occupancy so the distances of each (bin, neighbouring bin) block are
one dense tensor operation. Candidates pass a cutoff padded by a relative 1e-4 on wrapped
coordinates, then the exact test above.

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

from equimd.potentials.data.cell_grid import CHUNK_ELEMENTS, CellGeometry, CellGrid, bin_strides

__all__ = ["neighbor_list_torch"]

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
    geometry = CellGeometry(positions, cell.to(torch.float64), pbc_list, r_max, reach)
    if n_atoms == 0:
        return _empty(device, dtype)
    grid = CellGrid(geometry, reach, method)

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


def _image_offsets(reach: List[int], device: torch.device) -> Tensor:
    """[K, 3] int64: all integer vectors with |n_a| <= reach[a], in lexicographic order."""
    ranges = [torch.arange(-k, k + 1, dtype=torch.long, device=device) for k in reach]
    grids = torch.meshgrid(ranges, indexing="ij")
    return torch.stack([grids[0].reshape(-1), grids[1].reshape(-1), grids[2].reshape(-1)], dim=1)


def _half_shell_candidates(
    geometry: CellGeometry, grid: CellGrid, reach: float, chunk_elements: int = CHUNK_ELEMENTS
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
    strides = bin_strides(n_bins, device)
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
