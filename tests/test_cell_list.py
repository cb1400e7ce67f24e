"""The TorchScript cell list (`equimd.potentials.data.cell_list.neighbor_list_torch`): same pairs and
shifts as matscipy, deterministic order, scripted == eager, CPU == CUDA, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from equimd.potentials.data.cell_list import neighbor_list_torch
from equimd.potentials.data.neighbors import brute_force_neighbor_list
from tests.test_neighbors import KINDS, as_set, matscipy_pairs, random_structure

METHODS = ("cell_list", "brute_force")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


@pytest.fixture(scope="module")
def scripted():
    return torch.jit.script(neighbor_list_torch)


def compute(positions, cell, pbc, r_max, method="auto", dtype=torch.float64, function=None):
    function = neighbor_list_torch if function is None else function
    return function(
        torch.as_tensor(np.asarray(positions), dtype=dtype).reshape(-1, 3),
        torch.as_tensor(np.asarray(cell), dtype=dtype),
        torch.as_tensor(np.asarray(pbc), dtype=torch.bool),
        r_max,
        method,
    )


def checked_pairs(edge_index: torch.Tensor, shifts: torch.Tensor) -> set:
    """The pair set, after checking shapes, dtypes and the documented order."""
    assert edge_index.dtype == torch.long and edge_index.shape[0] == 2
    assert shifts.shape == (edge_index.shape[1], 3)
    rows = list(
        zip(
            edge_index[0].tolist(),
            edge_index[1].tolist(),
            *shifts.round().long().T.tolist(),
            strict=True,
        )
    )
    assert rows == sorted(rows), "not sorted by sender, receiver, shift"
    assert len(set(rows)) == len(rows), "duplicate pairs"
    return as_set(edge_index[0].tolist(), edge_index[1].tolist(), shifts.numpy())


def structures(n_per_kind: int, seed: int):
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        for _ in range(n_per_kind):
            yield kind, random_structure(rng, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_pairs_and_shifts_equal_matscipy(kind: str) -> None:
    """30 seeded structures per kind (210 in all), both algorithms, identical outputs."""
    rng = np.random.default_rng(1000 + KINDS.index(kind))
    for _ in range(30):
        positions, cell, pbc, r_max = random_structure(rng, kind)
        expected = matscipy_pairs(positions, cell, pbc, r_max)
        outputs = [compute(positions, cell, pbc, r_max, method) for method in METHODS]
        for method, (edge_index, shifts) in zip(METHODS, outputs, strict=True):
            assert checked_pairs(edge_index, shifts) == expected, (kind, method, cell, pbc)
            assert shifts.dtype == torch.float64
        # the same tensors, not only the same sets
        assert torch.equal(outputs[0][0], outputs[1][0])
        assert torch.equal(outputs[0][1], outputs[1][1])


def supercell(positions, cell, pbc, r_max, min_spacing: float):
    """Repeat along periodic axes until every lattice-plane spacing is >= min_spacing r_max."""
    basis = cell.copy()
    _, _, vh = np.linalg.svd(cell[pbc]) if pbc.any() else (None, None, np.eye(3))
    basis[~pbc] = vh[int(pbc.sum()) :]
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(basis), axis=0)
    repeats = np.where(pbc, np.ceil(min_spacing * r_max / spacing), 1).astype(int)
    translations = np.array(list(np.ndindex(*repeats))) @ cell
    positions = (positions[None, :, :] + translations[:, None, :]).reshape(-1, 3)
    return positions, cell * repeats[:, None]


@pytest.mark.parametrize("kind", ["bulk", "skewed", "slab", "wire", "unwrapped", "molecule"])
def test_grids_of_many_bins_equal_matscipy(kind: str) -> None:
    """Supercells at least 3.2 r_max thick: grids of 3 or more bins per axis, with wrap-around
    and open-axis edges, for the cell list and for "auto"."""
    rng = np.random.default_rng(2000 + KINDS.index(kind))
    done = 0
    while done < 4:
        positions, cell, pbc, r_max = random_structure(rng, kind)
        if kind == "molecule":  # a large cluster instead: several bins along every axis
            positions = rng.uniform(0.0, 4.0 * r_max, size=(400, 3))
        else:
            positions, cell = supercell(positions, cell, pbc, r_max, 3.2)
        if not 50 <= len(positions) <= 1500:
            continue
        done += 1
        expected = matscipy_pairs(positions, cell, pbc, r_max)
        cell_list = compute(positions, cell, pbc, r_max, "cell_list")
        assert checked_pairs(*cell_list) == expected, (kind, cell, pbc)
        auto = compute(positions, cell, pbc, r_max, "auto")
        assert torch.equal(auto[0], cell_list[0]) and torch.equal(auto[1], cell_list[1])


def test_small_cells_include_images_of_the_atom_itself() -> None:
    """One atom in a cell smaller than r_max sees its own periodic images (never itself)."""
    cell = np.array([[2.0, 0.0, 0.0], [0.7, 2.2, 0.0], [0.3, -0.4, 2.5]])
    edge_index, shifts = compute([[0.3, 0.1, 0.2]], cell, np.ones(3, bool), 5.0)
    pairs = checked_pairs(edge_index, shifts)
    expected = brute_force_neighbor_list(np.array([[0.3, 0.1, 0.2]]), cell, np.ones(3, bool), 5.0)
    assert pairs == expected and len(pairs) > 20
    assert (0, 0, 0, 0, 0) not in pairs


def test_strongly_skewed_cell() -> None:
    """Nearly parallel cell vectors (lattice reduction changes the basis internally; the
    shifts must still refer to the cell as given)."""
    cell = np.array([[5.0, 0.0, 0.0], [47.3, 5.1, 0.0], [-33.2, 12.4, 5.3]])
    rng = np.random.default_rng(5)
    positions = rng.uniform(0.0, 1.0, size=(12, 3)) @ cell
    for pbc in (np.ones(3, bool), np.array([True, True, False])):
        expected = matscipy_pairs(positions, cell, pbc, 4.0)
        for method in METHODS:
            assert checked_pairs(*compute(positions, cell, pbc, 4.0, method)) == expected


def test_shift_sign_convention() -> None:
    """r_ij = x_j - x_i + shift @ cell."""
    positions = [[0.5, 0.0, 0.0], [9.5, 0.0, 0.0]]
    edge_index, shifts = compute(positions, np.eye(3) * 10.0, np.ones(3, bool), 2.0)
    assert edge_index.tolist() == [[0, 1], [1, 0]]
    assert shifts.tolist() == [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    positions_t = torch.tensor(positions, dtype=torch.float64)
    edge = (
        positions_t[edge_index[1]]
        - positions_t[edge_index[0]]
        + shifts @ (torch.eye(3, dtype=torch.float64) * 10)
    )
    assert torch.allclose(edge.norm(dim=1), torch.ones(2, dtype=torch.float64))


def test_single_atom_and_empty_structures(scripted) -> None:
    for function in (neighbor_list_torch, scripted):
        for method in ("auto", *METHODS):
            # one atom, no neighbours
            edge_index, shifts = compute(
                [[1.0, 2.0, 3.0]], np.eye(3) * 20, np.ones(3, bool), 5.0, method, function=function
            )
            assert edge_index.shape == (2, 0) and shifts.shape == (0, 3)
            # no atoms at all, periodic and not
            for cell, pbc in (
                (np.eye(3) * 5, np.ones(3, bool)),
                (np.zeros((3, 3)), np.zeros(3, bool)),
            ):
                edge_index, shifts = compute(
                    np.zeros((0, 3)), cell, pbc, 5.0, method, function=function
                )
                assert edge_index.shape == (2, 0) and shifts.shape == (0, 3)
                assert edge_index.dtype == torch.long and shifts.dtype == torch.float64


def test_scripted_matches_eager(scripted) -> None:
    for dtype in (torch.float64, torch.float32):
        for _, (positions, cell, pbc, r_max) in structures(3, seed=21):
            for method in ("auto", *METHODS):
                eager = compute(positions, cell, pbc, r_max, method, dtype)
                script = compute(positions, cell, pbc, r_max, method, dtype, function=scripted)
                assert torch.equal(eager[0], script[0]) and torch.equal(eager[1], script[1])
                assert script[1].dtype == dtype


def test_float32_matches_float64_away_from_the_cutoff() -> None:
    """Pairs at distances within 1e-4 Å of r_max may legitimately differ with rounding."""
    for _, (positions, cell, pbc, r_max) in structures(3, seed=33):
        pairs64 = checked_pairs(*compute(positions, cell, pbc, r_max))
        edge_index, shifts = compute(positions, cell, pbc, r_max, dtype=torch.float32)
        assert shifts.dtype == torch.float32
        pairs32 = checked_pairs(edge_index, shifts.double())
        for i, j, *shift in pairs64 ^ pairs32:
            distance = np.linalg.norm(positions[j] - positions[i] + np.array(shift) @ cell)
            assert abs(distance - r_max) < 1e-4


def test_outputs_carry_no_gradient() -> None:
    positions = torch.rand(10, 3, dtype=torch.float64, requires_grad=True) * 6
    cell = (torch.eye(3, dtype=torch.float64) * 6).requires_grad_()
    edge_index, shifts = neighbor_list_torch(positions, cell, torch.ones(3, dtype=torch.bool), 3.0)
    assert not shifts.requires_grad and shifts.grad_fn is None


@pytest.mark.parametrize(
    "cell, pbc, message",
    [
        (np.diag([5.0, 0.0, 5.0]), [True, True, True], "axis 1 but cell vector 1 is zero"),
        (np.zeros((3, 3)), [True, False, False], "axis 0 but cell vector 0 is zero"),
        (np.diag([5.0, 5.0, 0.0]), [False, False, True], "axis 2 but cell vector 2 is zero"),
        ([[5.0, 0, 0], [10.0, 0, 0], [0, 0, 5.0]], [True, True, True], "linearly dependent"),
        ([[5.0, 0, 0], [-5.0, 0, 0], [0, 0, 0]], [True, True, False], "linearly dependent"),
        (np.diag([1e-5, 5.0, 5.0]), [True, True, True], "too small for r_max"),
    ],
)
def test_invalid_periodic_cells_raise(scripted, cell, pbc, message) -> None:
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    for function in (neighbor_list_torch, scripted):
        # scripted functions raise torch.jit.Error, which carries the same message
        with pytest.raises((RuntimeError, torch.jit.Error), match=message):
            compute(positions, cell, pbc, 4.0, function=function)


def test_open_directions_ignore_their_cell_vectors() -> None:
    """A zero vector along a non-periodic axis is fine and gives the same pairs as any other."""
    rng = np.random.default_rng(2)
    cell = np.diag([4.0, 4.5, 30.0])
    positions = rng.uniform(0.0, 1.0, size=(15, 3)) @ cell
    pbc = np.array([True, True, False])
    reference = compute(positions, cell, pbc, 3.5)
    zero = cell.copy()
    zero[2] = 0.0
    other = cell.copy()
    other[2] = [3.0, -1.0, 0.5]
    for variant in (zero, other):
        result = compute(positions, variant, pbc, 3.5)
        assert torch.equal(result[0], reference[0]) and torch.equal(result[1], reference[1])


def test_fcc_copper_2048_atoms_memory_stays_linear() -> None:
    """2048 atoms, r_max = 6 Å: matscipy's pairs, and no temporary of N² float64 size."""
    a = 3.61
    grid = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    positions = (
        (grid + basis).reshape(-1, 3) + 0.01 * np.random.default_rng(0).normal(size=(2048, 3))
    ) * a
    cell = np.eye(3) * 8 * a
    pbc = np.ones(3, bool)
    n_atoms = len(positions)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as profile:
        edge_index, shifts = compute(positions, cell, pbc, 6.0, "cell_list")
    largest = max(event.self_cpu_memory_usage for event in profile.events())
    assert largest < n_atoms * n_atoms * 8 / 2, f"a temporary of {largest / 1e6:.1f} MB"
    assert edge_index.shape[1] == len(matscipy_pairs(positions, cell, pbc, 6.0))
    # fcc shells below 6 Å: 12 at a/√2, 6 at a, 24 at a·√1.5, 12 at a·√2, 24 at a·√2.5
    # (the next, 8 at a·√3 = 6.25 Å, is outside)
    assert edge_index.shape[1] == 78 * n_atoms


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    n_atoms=st.integers(min_value=1, max_value=7),
    r_max=st.floats(min_value=0.5, max_value=4.0),
    pbc=st.lists(st.booleans(), min_size=3, max_size=3),
    method=st.sampled_from(METHODS),
)
def test_hypothesis_matches_brute_force(data, n_atoms, r_max, pbc, method) -> None:
    entries = st.floats(min_value=-6.0, max_value=6.0, allow_nan=False, allow_infinity=False)
    cell = np.array(data.draw(st.lists(entries, min_size=9, max_size=9))).reshape(3, 3)
    pbc = np.array(pbc)
    if pbc.any():
        periodic = cell[pbc]
        gram = periodic @ periodic.T
        lengths = np.sqrt(np.diag(gram))
        assume(lengths.min() > 0.5)
        assume(np.linalg.det(gram) / np.prod(np.diag(gram)) > 1e-2)  # not nearly degenerate
        basis = cell.copy()
        _, _, vh = np.linalg.svd(periodic)
        basis[~pbc] = vh[len(periodic) :]
        spacing = 1.0 / np.linalg.norm(np.linalg.inv(basis)[:, pbc], axis=0)
        assume(spacing.min() > r_max / 4)  # keeps the reference's image loop small
    coordinates = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False)
    positions = np.array(
        data.draw(st.lists(coordinates, min_size=3 * n_atoms, max_size=3 * n_atoms))
    )
    positions = positions.reshape(n_atoms, 3)
    expected = brute_force_neighbor_list(positions, cell, pbc, r_max)
    pairs = checked_pairs(*compute(positions, cell, pbc, r_max, method))
    # hypothesis likes exact ties (distances equal to r_max): allow only those to differ
    for i, j, *shift in pairs ^ expected:
        distance = np.linalg.norm(positions[j] - positions[i] + np.array(shift) @ cell)
        assert abs(distance - r_max) < 1e-9 * max(1.0, r_max)


@CUDA
def test_cuda_matches_cpu(scripted) -> None:
    for _, (positions, cell, pbc, r_max) in structures(4, seed=44):
        for method in ("auto", *METHODS):
            cpu = compute(positions, cell, pbc, r_max, method)
            for function in (neighbor_list_torch, scripted):
                cuda = function(
                    torch.as_tensor(positions, device="cuda"),
                    torch.as_tensor(cell, device="cuda"),
                    torch.as_tensor(pbc, device="cuda"),
                    r_max,
                    method,
                )
                assert cuda[0].is_cuda and cuda[1].is_cuda
                assert torch.equal(cuda[0].cpu(), cpu[0]) and torch.equal(cuda[1].cpu(), cpu[1])
