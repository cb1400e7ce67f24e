"""Bad input through every entry point, and fuzzing of the exported model (issue 7, items 1, 3).

- Fuzzing: random structures (1-12 atoms, clusters and spread-out atoms, periodic cells of
  random shape and handedness, random pbc) through the deployed file of every registered
  model (its test configuration, `tests.model_zoo.CONTRACT_MODELS`; float64, and float32 for
  NequIP): finite results, forces summing to zero, invariance under translation, under moving
  one atom by a lattice vector, and under negating a periodic cell vector (a left-handed cell).
- Degenerate cells (zero, non-finite, parallel, coplanar, vanishing volume) through
  `equimd.potentials.data` (neighbor list, `configuration_to_graph`), the deployed model and the
  ASE calculator: a `CellError` naming the cell vectors (and determinant) and the frame.
- Left-handed cells are valid everywhere and give the results of the right-handed cell.
- dtype and device requests: unsupported export dtypes, devices this machine lacks, inputs
  in the other float dtype (cast, with the numbers of the cast inputs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from equimd.deploy import load, read_metadata
from equimd.deploy.errors import DeviceError
from equimd.deploy.export import export_model
from equimd.errors import CellError, EquimdError, StructureError
from equimd.md_drivers.ase import EquimdCalculator
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph, edge_vectors
from equimd.potentials.data.neighbors import neighbor_list
from tests.model_zoo import CONTRACT_MODELS, R_MAX, SPECIES, nequip_small, triclinic_cu

# ---- fixtures: one export per model and dtype for the session (tests/conftest.py) ---------


@pytest.fixture(scope="module")
def model_files(zoo_model_file):
    """{name: path}: the zoo NequIP (float64 and float32) and MACE (float64)."""
    return {
        "nequip64": zoo_model_file("nequip", "float64"),
        "nequip32": zoo_model_file("nequip", "float32"),
        "mace64": zoo_model_file("mace", "float64"),
    }


@pytest.fixture(scope="module")
def deployed(model_files):
    return {name: load(path) for name, path in model_files.items()}


# ---- random structures -----------------------------------------------------------------

MIN_SEPARATION = 0.7  # Å; closer atoms are removed (coincident atoms are tested separately)


def remove_close_atoms(positions, numbers, cell, pbc):
    """Drop atoms until no pair (periodic images included) is closer than MIN_SEPARATION."""
    sender, receiver, _ = neighbor_list(positions, cell, pbc, MIN_SEPARATION)
    keep = np.ones(len(positions), dtype=bool)
    for i, j in zip(sender, receiver, strict=True):
        if keep[i] and keep[j] and i != j:
            keep[max(i, j)] = False
    return positions[keep], numbers[keep]


@st.composite
def random_cell(draw, pbc: np.ndarray) -> np.ndarray:
    """Lengths 3-8 Å, skew up to 60 % of the lengths (strongly triclinic), either handedness;
    vectors along open directions are zero or random (they must be ignored)."""
    lengths = np.array(draw(st.lists(st.floats(3.0, 8.0), min_size=3, max_size=3)))
    skew = np.array(draw(st.lists(st.floats(-0.6, 0.6), min_size=9, max_size=9))).reshape(3, 3)
    cell = np.diag(lengths) + skew * lengths[:, None]
    np.fill_diagonal(cell, lengths)
    if draw(st.booleans()):
        cell[draw(st.integers(0, 2))] *= -1.0  # left-handed
    for axis in np.flatnonzero(~pbc):
        if draw(st.booleans()):
            cell[axis] = 0.0
    # the periodic part must stay well-conditioned (degenerate cells are tested separately)
    periodic = cell[pbc]
    gram = periodic @ periodic.T
    if np.linalg.det(gram) < 0.05 * np.prod(np.diag(gram)):
        cell[pbc] = np.diag(lengths)[pbc]
    return cell


@st.composite
def random_structure(draw, periodic: bool):
    """(positions [N, 3] Å, numbers [N], cell [3, 3] Å, pbc [3]); N in 1..12."""
    n_atoms = draw(st.sampled_from(range(1, 13)))  # uniform (integers() favours small sizes)
    numbers = np.array(draw(st.lists(st.sampled_from(SPECIES), min_size=n_atoms, max_size=n_atoms)))
    if periodic:
        mixed = st.lists(st.booleans(), min_size=3, max_size=3).filter(any)
        pbc = np.array(draw(st.one_of(st.just([True, True, True]), mixed)))  # bulk half the time
    else:
        pbc = np.zeros(3, dtype=bool)
    cell = draw(random_cell(pbc)) if periodic else np.zeros((3, 3))
    # coordinates from a drawn seed: hypothesis' own floats pile atoms onto 0.0 and ±1.0
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    raw = rng.uniform(-1.0, 1.0, size=(n_atoms, 3))
    if draw(st.booleans()):  # a dense cluster (1.0-1.6 Å per atom^(1/3)) anywhere
        positions = raw * draw(st.floats(1.0, 1.6)) * n_atoms ** (1 / 3)
    elif periodic:  # spread over the cell (fractional coordinates -1..1: partly outside it)
        positions = raw @ np.where(pbc[:, None], cell, 4.0 * np.eye(3))
    else:  # a sparse molecule-like spread
        positions = raw * draw(st.floats(2.5, 5.0))
    offset = np.array(draw(st.lists(st.floats(-30.0, 30.0), min_size=3, max_size=3)))
    positions = positions + offset
    positions, numbers = remove_close_atoms(positions, numbers, cell, pbc)
    return positions, numbers, cell, pbc


TOLERANCES = {  # dtype: (relative energy, force as a fraction of the largest force)
    "float64": (1e-10, 1e-9),
    "float32": (1e-5, 1e-4),
}


def check_physics(model, dtype: str, structure, translation: np.ndarray) -> None:
    positions, numbers, cell, pbc = structure
    energy_rtol, force_rtol = TOLERANCES[dtype]
    out = model(positions, numbers, cell, pbc)
    energy = float(out["energy"])
    forces = out["forces"].double().numpy()
    assert np.isfinite(energy) and np.isfinite(forces).all()
    assert forces.shape == (len(numbers), 3)
    force_scale = np.abs(forces).max() + 1e-6
    energy_scale = abs(energy) + 1.0
    # no external field: the forces sum to zero
    net = np.abs(forces.sum(axis=0)).max()
    assert net <= force_rtol * len(numbers) * force_scale, (net, force_scale)
    # a rigid translation changes nothing
    moved = model(positions + translation, numbers, cell, pbc)
    assert abs(float(moved["energy"]) - energy) <= energy_rtol * energy_scale
    np.testing.assert_allclose(moved["forces"].double().numpy(), forces, rtol=0, atol=force_rtol * force_scale)
    if not pbc.any():
        return
    # moving one atom by a lattice vector, or negating a periodic cell vector (left-handed
    # cell, same lattice), changes nothing
    axis = int(np.flatnonzero(pbc)[-1])
    jumped = positions.copy()
    jumped[0] += 3.0 * cell[axis]
    flipped = cell.copy()
    flipped[axis] *= -1.0
    for variant in (model(jumped, numbers, cell, pbc), model(positions, numbers, flipped, pbc)):
        assert abs(float(variant["energy"]) - energy) <= energy_rtol * energy_scale
        np.testing.assert_allclose(variant["forces"].double().numpy(), forces, rtol=0, atol=force_rtol * force_scale)
        # stress is a sum of nearly cancelling pair terms r_ij ⊗ f_ij / V: rounding is relative
        # to those terms (as in tests/test_deploy.py), not to their small sum
        volume = abs(np.linalg.det(cell))
        pair_term = np.abs(forces).max() * R_MAX / volume if volume > 1e-6 else 0.0
        stress_scale = max(np.abs(out["stress"].double().numpy()).max(), pair_term) + 1e-6
        np.testing.assert_allclose(
            variant["stress"].double().numpy(), out["stress"].double().numpy(),
            rtol=0, atol=force_rtol * stress_scale,
        )


# Examples per model file: 15 for a registered model in float64, more for NequIP, the
# default model. No shrinking: a failure is reported at once with its structure (shrinking
# would re-run the model hundreds of times).
EXAMPLES = {("nequip", "float64"): 30, ("nequip", "float32"): 20}
DEFAULT_EXAMPLES = 15
# (model, dtype) fuzzed: every registered model in float64, and NequIP in float32
FUZZED = [(name, "float64") for name in CONTRACT_MODELS] + [("nequip", "float32")]
translations = st.lists(st.floats(-15.0, 15.0), min_size=3, max_size=3).map(np.array)


def fuzz(model, dtype: str, examples: int, periodic: bool) -> None:
    @settings(
        max_examples=examples, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    @given(data=st.data())
    def check(data):
        structure = data.draw(random_structure(periodic=periodic), label="structure")
        check_physics(model, dtype, structure, data.draw(translations, label="translation"))

    check()


@pytest.fixture(scope="module", params=FUZZED, ids=[f"{name}-{dtype}" for name, dtype in FUZZED])
def fuzzed(request, zoo_model_file):
    """(deployed model, dtype, examples) for each fuzzed model file."""
    name, dtype = request.param
    examples = EXAMPLES.get((name, dtype), DEFAULT_EXAMPLES)
    return load(zoo_model_file(name, dtype)), dtype, examples


def test_fuzz_exported_model_molecules(fuzzed):
    model, dtype, examples = fuzzed
    fuzz(model, dtype, examples, periodic=False)


def test_fuzz_exported_model_periodic(fuzzed):
    model, dtype, examples = fuzzed
    fuzz(model, dtype, examples, periodic=True)


# ---- degenerate cells through every entry point -----------------------------------------

T, F = True, False
BAD_CELLS = {
    # name: (cell, pbc, message)
    "zero vector": (np.diag([5.0, 0.0, 5.0]), [T, T, T], r"pbc is True along axis 1 but cell vector 1 is zero"),
    "pbc without cell": (np.zeros((3, 3)), [T, T, T], r"axis 0 but cell vector 0 is zero"),
    "slab, zero periodic vector": (np.diag([5.0, 5.0, 0.0]), [F, F, T], r"axis 2 but cell vector 2 is zero"),
    "non-finite vector": (
        np.array([[5.0, 0, 0], [0, 5.0, 0], [0, np.nan, 5.0]]), [T, T, T], r"cell vector 2 is not finite",
    ),
    "parallel vectors": (
        np.array([[5.0, 0, 0], [10.0, 0, 0], [0, 0, 5.0]]), [T, T, T],
        r"cell vectors 0 and 1 are parallel .*linearly dependent",
    ),
    "antiparallel, slab": (
        np.array([[5.0, 0, 0], [-5.0, 0, 0], [0, 0, 0]]), [T, T, F], r"cell vectors 0 and 1 are parallel",
    ),
    "coplanar vectors": (
        np.array([[5.0, 0, 0], [0, 5.0, 0], [3.0, 4.0, 0]]), [T, T, T],
        r"vectors 0, 1 and 2 are coplanar \(determinant \S+ Å³, volume \S+ Å³\)",
    ),
    "vanishing volume": (np.diag([1e-3, 1e-3, 1e-3]), [T, T, T], r"degenerate \(determinant 1e-09 Å³, volume 1e-09 Å³\)"),
}
POSITIONS = np.array([[0.1, 0.2, 0.3], [1.2, 0.9, 0.4], [0.5, 1.4, 1.3]])
NUMBERS = np.array([1, 8, 29])


@pytest.mark.parametrize("case", sorted(BAD_CELLS))
def test_degenerate_cell_in_data_pipeline_names_frame_and_vectors(case):
    cell, pbc, message = BAD_CELLS[case]
    with pytest.raises(CellError, match=r"^bad\.xyz, frame 4: .*" + message):
        neighbor_list(POSITIONS, cell, pbc, R_MAX, source="bad.xyz, frame 4")
    config = Configuration(POSITIONS, NUMBERS, cell, pbc, source="bad.xyz, frame 4")
    with pytest.raises(CellError, match=r"^bad\.xyz, frame 4: .*" + message):
        configuration_to_graph(config, R_MAX)


@pytest.mark.parametrize("case", sorted(BAD_CELLS))
def test_degenerate_cell_in_deployed_model_and_ase_calculator(deployed, case):
    cell, pbc, message = BAD_CELLS[case]
    model = deployed["nequip32"]
    with pytest.raises(CellError, match=r"^structure: .*" + message):
        model(POSITIONS, NUMBERS, cell, pbc)
    with pytest.raises(CellError, match=r"^md\.xyz, frame 9: .*" + message):
        model(POSITIONS, NUMBERS, cell, pbc, source="md.xyz, frame 9")
    atoms = Atoms(numbers=NUMBERS, positions=POSITIONS, cell=cell, pbc=pbc)
    atoms.calc = EquimdCalculator(model=model)
    with pytest.raises(CellError, match=r"^atoms \(HCuO\): .*" + message):
        atoms.get_potential_energy()


def test_cell_error_is_one_class_for_data_and_deployed_models():
    """One CellError (equimd.errors) for the data pipeline and the deployed model; a script can
    catch it as a ValueError, a StructureError or the base EquimdError."""
    import equimd
    from equimd.deploy import errors as deploy_errors
    from equimd.potentials.data import neighbors

    assert neighbors.CellError is deploy_errors.CellError is CellError is equimd.CellError
    assert issubclass(CellError, StructureError) and issubclass(StructureError, ValueError)
    assert issubclass(StructureError, EquimdError)


def test_cell_too_small_for_cutoff_is_a_cell_error(deployed):
    """A periodic vector of 1e-5 Å would need more than a million images per atom: the in-graph
    neighbor list refuses, and the TorchScript traceback becomes a one-line CellError."""
    with pytest.raises(CellError, match=r"^structure: neighbor_list_torch: .*too small for r_max.*r_max 4.0 Å"):
        deployed["nequip64"](POSITIONS, NUMBERS, np.diag([1e-5, 5.0, 5.0]), [T, T, T])


def test_open_directions_ignore_degenerate_cell_vectors(deployed):
    """A molecule with a zero cell and a wire with zero open vectors are valid."""
    model = deployed["nequip64"]
    molecule = model(POSITIONS, NUMBERS, np.zeros((3, 3)), [F, F, F])
    wire = model(POSITIONS, NUMBERS, np.diag([30.0, 0.0, 0.0]), [T, F, F])
    assert np.isclose(float(molecule["energy"]), float(wire["energy"]), rtol=1e-12)


# ---- left-handed cells are valid: same lattice, same results ----------------------------


def left_handed_variants(cell: np.ndarray) -> list[np.ndarray]:
    """The same lattice with negative determinant: two rows swapped, one row negated."""
    swapped = cell[[1, 0, 2]]
    negated = cell * np.array([[1.0], [1.0], [-1.0]])
    assert np.linalg.det(cell) > 0 and np.linalg.det(swapped) < 0 and np.linalg.det(negated) < 0
    return [swapped, negated]


def sorted_rows(array: np.ndarray) -> np.ndarray:
    return array[np.lexsort(array.T[::-1])]


def test_left_handed_cell_gives_the_same_graph():
    atoms = triclinic_cu()
    right = configuration_to_graph(Configuration.from_atoms(atoms), R_MAX)
    for cell in left_handed_variants(atoms.get_cell().array):
        config = Configuration(atoms.positions, atoms.numbers, cell, atoms.pbc, source="left")
        left = configuration_to_graph(config, R_MAX)
        assert left.edge_index.shape == right.edge_index.shape
        # the same pairs with the same edge vectors (shifts refer to the rows as given)
        ours = np.column_stack([left.edge_index.T.numpy(), np.round(edge_vectors(left).numpy(), 9)])
        theirs = np.column_stack([right.edge_index.T.numpy(), np.round(edge_vectors(right).numpy(), 9)])
        np.testing.assert_array_equal(sorted_rows(ours), sorted_rows(theirs))


def test_left_handed_cell_gives_the_same_deployed_and_ase_results(deployed):
    model = deployed["nequip64"]
    atoms = triclinic_cu()
    reference = model(atoms.positions, atoms.numbers, atoms.get_cell().array, atoms.pbc)
    atoms.calc = EquimdCalculator(model=model)
    ase_energy, ase_stress = atoms.get_potential_energy(), atoms.get_stress()
    for cell in left_handed_variants(atoms.get_cell().array):
        out = model(atoms.positions, atoms.numbers, cell, atoms.pbc)
        for key in ("energy", "forces", "stress", "virial"):
            np.testing.assert_allclose(out[key].numpy(), reference[key].numpy(), rtol=0, atol=1e-11)
        left = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=cell, pbc=True)
        left.calc = EquimdCalculator(model=model)
        assert abs(left.get_potential_energy() - ase_energy) < 1e-11
        np.testing.assert_allclose(left.get_stress(), ase_stress, rtol=0, atol=1e-12)
        assert left.get_volume() > 0


# ---- other unusable structures: non-finite positions, coincident atoms, shapes ----------


def test_non_finite_positions_are_named(deployed):
    positions = POSITIONS.copy()
    positions[2, 1] = np.inf
    config = Configuration(positions, NUMBERS, np.eye(3) * 6.0, [T, T, T], source="run.xyz, frame 2")
    with pytest.raises(ValueError, match=r"^run\.xyz, frame 2: positions of atom 2 are not finite"):
        configuration_to_graph(config, R_MAX)
    positions[2, 1] = np.nan
    with pytest.raises(StructureError, match=r"positions of atom 2 \(Cu\) are not finite"):
        deployed["nequip64"](positions, NUMBERS)
    # finite in float64 but not in float32: the check is on what the model sees
    huge = POSITIONS.copy()
    huge[1, 0] = 1e39
    with pytest.raises(StructureError, match=r"atom 1 \(O\) are not finite in float32"):
        deployed["nequip32"](huge, NUMBERS)
    atoms = Atoms(numbers=NUMBERS, positions=positions)
    atoms.calc = EquimdCalculator(model=deployed["nequip32"])
    with pytest.raises(StructureError, match=r"^atoms \(HCuO\): positions of atom 2"):
        atoms.get_forces()


@pytest.mark.parametrize("name", ["nequip64", "mace64"])
def test_coincident_atoms_raise_instead_of_returning_nan(deployed, name):
    positions = POSITIONS.copy()
    positions[2] = positions[0]
    with pytest.raises(StructureError, match=r"not finite .*atoms 0 and 2 are 0 Å apart.*coincident"):
        deployed[name](positions, NUMBERS, np.eye(3) * 6.0, [T, T, T])
    # an atom on the periodic image of another
    positions[2] = positions[0] + np.array([0.0, 6.0, 0.0])
    with pytest.raises(StructureError, match=r"coincident"):
        deployed[name](positions, NUMBERS, np.eye(3) * 6.0, [T, T, T])


def test_wrong_shapes_are_named(deployed):
    model = deployed["nequip64"]
    with pytest.raises(StructureError, match=r"positions must have shape \[N, 3\] \(Å\), got \(9,\)"):
        model(POSITIONS.reshape(-1), NUMBERS)
    with pytest.raises(StructureError, match=r"2 atomic numbers but 3 positions"):
        model(POSITIONS, NUMBERS[:2])
    with pytest.raises(StructureError, match=r"cell must have shape \[3, 3\].*got \(2, 2\)"):
        model(POSITIONS, NUMBERS, np.eye(2), [T, T, T])
    with pytest.raises(StructureError, match=r"pbc must have 3 entries"):
        model(POSITIONS, NUMBERS, np.eye(3) * 6.0, [T, T])


# ---- dtype requests ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int", "int64", torch.float16, torch.int32])
def test_export_refuses_unsupported_dtype_and_writes_nothing(dtype, tmp_path):
    target = tmp_path / "model.pt"
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'float64'\].*not supported"):
        export_model(nequip_small(), target, dtype=dtype)
    assert list(tmp_path.iterdir()) == []


def test_export_accepts_torch_dtypes(tmp_path):
    path = export_model(nequip_small(), tmp_path / "model.pt", dtype=torch.float64)
    assert read_metadata(path)["dtype"] == "float64"
    assert load(path).dtype == torch.float64


def warm_up(model, atoms) -> None:
    """TorchScript runs a module's first calls in a profiling graph whose forces round
    differently from the optimised graph of later calls: bitwise comparisons start after."""
    for _ in range(2):
        model(atoms.positions, atoms.numbers, atoms.get_cell().array, atoms.pbc)


def test_float32_inputs_to_float64_model_are_cast(deployed):
    model = deployed["nequip64"]
    atoms = triclinic_cu()
    warm_up(model, atoms)
    positions32 = atoms.positions.astype(np.float32)
    cell32 = atoms.get_cell().array.astype(np.float32)
    exact = model(positions32.astype(np.float64), atoms.numbers, cell32.astype(np.float64), atoms.pbc)
    for positions, cell in [(positions32, cell32), (torch.from_numpy(positions32), torch.from_numpy(cell32))]:
        out = model(positions, atoms.numbers, cell, atoms.pbc)
        for key, value in exact.items():
            assert out[key].dtype == torch.float64
            assert torch.equal(out[key], value), key


def test_float64_inputs_to_float32_model_are_cast(deployed):
    model32, model64 = deployed["nequip32"], deployed["nequip64"]
    atoms = triclinic_cu()
    cell = atoms.get_cell().array
    warm_up(model32, atoms)
    out = model32(atoms.positions, atoms.numbers, cell, atoms.pbc)
    exact = model32(torch.from_numpy(atoms.positions).float(), atoms.numbers, torch.from_numpy(cell).float(), atoms.pbc)
    reference = model64(atoms.positions, atoms.numbers, cell, atoms.pbc)
    for key, value in exact.items():
        assert out[key].dtype == torch.float32
        assert torch.equal(out[key], value), key
    forces = reference["forces"].numpy()
    np.testing.assert_allclose(out["forces"].double().numpy(), forces, rtol=0, atol=1e-5 * np.abs(forces).max())
    assert abs(float(out["energy"]) - float(reference["energy"])) < 1e-5 * abs(float(reference["energy"]))
    # integer atomic numbers of any integer dtype, integer cells
    same = model32(atoms.positions, atoms.numbers.astype(np.int32), np.rint(cell).astype(np.int64), atoms.pbc)
    assert torch.isfinite(same["energy"])


def test_ase_calculator_refuses_unsupported_dtype(model_files):
    for dtype in ("float16", "float65", "int", torch.bfloat16):
        with pytest.raises(ValueError, match=r"dtype must be 'float32' or 'float64'"):
            EquimdCalculator(model_files["nequip32"], dtype=dtype)
    with pytest.raises(ValueError, match=r"dtype must be torch.float32 or torch.float64"):
        load(model_files["nequip32"]).to(torch.float16)


# ---- device requests ---------------------------------------------------------------------


def test_cuda_without_cuda_is_a_device_error_not_a_corrupt_file(model_files, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for call in (
        lambda: load(model_files["nequip32"], device="cuda"),
        lambda: EquimdCalculator(model_files["nequip32"], device="cuda:0"),
    ):
        with pytest.raises(DeviceError, match=r"'cuda(:0)?' was requested but CUDA is not available.*device='cpu'"):
            call()


def test_missing_or_unknown_device_is_a_device_error(model_files):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 without GPU)
    with pytest.raises(DeviceError, match=rf"'{missing}' was requested but"):
        load(model_files["nequip32"], device=missing)
    for name in ("gpu", "cuda:x"):
        with pytest.raises(DeviceError, match=rf"device '{name}' is not a device name torch knows"):
            EquimdCalculator(model_files["nequip32"], device=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_on_cuda_matches_cpu(model_files):
    atoms = triclinic_cu()
    args = (atoms.positions, atoms.numbers, atoms.get_cell().array, atoms.pbc)
    cpu = load(model_files["nequip64"])(*args)
    gpu = load(model_files["nequip64"], device="cuda")(*args)
    assert gpu["forces"].device.type == "cuda"
    for key, value in cpu.items():
        np.testing.assert_allclose(gpu[key].cpu().numpy(), value.numpy(), rtol=0, atol=1e-10)
