"""Reading and writing labelled structures: round trips, units, virial -> stress, and the
error messages a user sees for broken files (file, frame, line or key named)."""

from __future__ import annotations

import multiprocessing
import pickle
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import units
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from equimd.potentials.data import (
    Configuration,
    DataFormatError,
    DatasetKeys,
    HDF5Dataset,
    convert,
    read_configurations,
    read_isolated_atom_energies,
    write_extxyz,
    write_hdf5,
)
from equimd.potentials.data import hdf5 as hdf5_module

FIELDS = ("positions", "numbers", "cell", "pbc", "energy", "forces", "stress")


def assert_same_configurations(actual: list[Configuration], expected: list[Configuration]) -> None:
    """Bit-for-bit equal geometry and labels (sources are not compared)."""
    assert len(actual) == len(expected)
    for frame, (a, e) in enumerate(zip(actual, expected, strict=True)):
        for name in FIELDS:
            got, want = getattr(a, name), getattr(e, name)
            if want is None:
                assert got is None, f"frame {frame}: {name} should be absent"
            else:
                assert got is not None, f"frame {frame}: {name} missing"
                assert np.array_equal(np.asarray(got), np.asarray(want)), f"frame {frame}: {name}"


def sample_configurations() -> list[Configuration]:
    """A periodic crystal with all labels, a molecule without stress, an unlabelled frame."""
    rng = np.random.default_rng(0)
    sym = rng.normal(size=(3, 3)) * 0.01
    return [
        Configuration(
            positions=rng.uniform(0, 4, (4, 3)),
            numbers=[29, 29, 13, 13],
            cell=[[4.0, 0.1, 0.0], [0.0, 4.2, 0.0], [0.3, 0.0, 3.9]],
            pbc=[True, True, True],
            energy=-12.345678901234567,
            forces=rng.normal(size=(4, 3)),
            stress=sym + sym.T,
        ),
        Configuration(
            positions=rng.normal(size=(3, 3)),
            numbers=[8, 1, 1],
            energy=-14.2,
            forces=rng.normal(size=(3, 3)),
        ),
        Configuration(
            positions=rng.normal(size=(2, 3)),
            numbers=[6, 6],
            pbc=[True, False, False],
            cell=np.diag([10.0, 0.0, 0.0]),
        ),
    ]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def extxyz_frame(comment: str, atoms: list[str]) -> str:
    return f"{len(atoms)}\n{comment}\n" + "".join(line + "\n" for line in atoms)


# --- round trips --------------------------------------------------------------------------------


def test_extxyz_round_trip_is_exact(tmp_path):
    configs = sample_configurations()
    path = write_extxyz(configs, tmp_path / "out.xyz")
    back = read_configurations(path)
    assert_same_configurations(back, configs)
    assert [c.source for c in back] == [f"{path}, frame {k}" for k in range(3)]


def test_extxyz_to_hdf5_to_configuration_is_exact(tmp_path):
    configs = sample_configurations()
    xyz = write_extxyz(configs, tmp_path / "in.xyz")
    assert convert(xyz, tmp_path / "out.h5") == 3
    back = read_configurations(tmp_path / "out.h5")
    assert_same_configurations(back, configs)
    assert back[1].source == f"{tmp_path / 'out.h5'}, frame 1 (from {xyz}, frame 1)"
    # h5 -> h5 keeps the original location instead of nesting "(from ...)"
    convert(tmp_path / "out.h5", tmp_path / "again.h5")
    again = read_configurations(tmp_path / "again.h5")
    assert again[1].source == f"{tmp_path / 'again.h5'}, frame 1 (from {xyz}, frame 1)"
    # and back to extxyz
    assert convert(tmp_path / "out.h5", tmp_path / "back.xyz") == 3
    assert_same_configurations(read_configurations(tmp_path / "back.xyz"), configs)


def test_hdf5_layout_matches_documented_schema(tmp_path):
    configs = sample_configurations()
    path = write_hdf5(configs, tmp_path / "data.h5")
    with h5py.File(path, "r") as handle:
        assert handle.attrs["format"] == "equimd-hdf5"
        assert handle.attrs["version"] == 1
        assert handle.attrs["energy_unit"] == "eV" and handle.attrs["length_unit"] == "Å"
        assert handle["ptr"][()].tolist() == [0, 4, 7, 9]
        assert handle["positions"].shape == (9, 3) and handle["forces"].shape == (9, 3)
        assert handle["cell"].shape == (3, 3, 3) and handle["stress"].shape == (3, 3, 3)
        assert handle["has_energy"][()].tolist() == [True, True, False]
        assert handle["has_forces"][()].tolist() == [True, True, False]
        assert handle["has_stress"][()].tolist() == [True, False, False]
        assert np.isnan(handle["energy"][2]) and np.isnan(handle["forces"][7:]).all()
        for name in ("positions", "forces", "cell", "energy"):
            assert handle[name].chunks is not None and handle[name].compression == "gzip"


def test_hdf5_dataset_opens_lazily_and_survives_pickling(tmp_path):
    configs = sample_configurations()
    path = write_hdf5(configs, tmp_path / "data.h5")
    dataset = HDF5Dataset(path)
    assert dataset._handle is None and len(dataset) == 3
    assert dataset.n_atoms.tolist() == [4, 3, 2]
    assert_same_configurations([dataset[0], dataset[-1]], [configs[0], configs[2]])
    assert dataset[2].source == f"{path}, frame 2 (from <memory>)"
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._handle is None
    assert_same_configurations([clone[1]], [configs[1]])
    with pytest.raises(IndexError, match="frame 3 out of range"):
        dataset[3]
    dataset.close()


def _energy_in_worker(dataset: HDF5Dataset) -> float:
    return dataset[0].energy


def test_hdf5_dataset_reopens_in_a_forked_worker(tmp_path):
    path = write_hdf5(sample_configurations(), tmp_path / "data.h5")
    dataset = HDF5Dataset(path)
    parent_energy = dataset[0].energy  # the parent holds an open handle before the fork
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_energy_in_worker, (dataset,)) == parent_energy


def test_write_hdf5_is_atomic(tmp_path, monkeypatch):
    path = write_hdf5(sample_configurations()[:1], tmp_path / "data.h5")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hdf5_module, "_create", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_hdf5(sample_configurations(), path)
    assert len(HDF5Dataset(path)) == 1  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5"]  # no temporary left


def test_write_extxyz_refuses_non_finite_values(tmp_path):
    bad = sample_configurations()[1]
    bad.forces[2, 1] = np.nan
    bad.source = "bad.xyz, frame 7"
    with pytest.raises(DataFormatError, match=r"bad.xyz, frame 7, atom 2: forces are not finite"):
        write_extxyz([bad], tmp_path / "out.xyz")
    assert not list(tmp_path.iterdir())


def test_predictions_are_written_next_to_labels(tmp_path):
    configs = sample_configurations()[:2]
    forces = [c.forces + 0.5 for c in configs]
    stress = np.stack([np.eye(3) * 0.01, np.eye(3) * 0.02])
    path = write_extxyz(
        configs,
        tmp_path / "pred.xyz",
        predictions={"energy": [1.5, 2.5], "forces": np.concatenate(forces), "stress": stress},
    )
    keys = DatasetKeys(energy_key="pred_energy", forces_key="pred_forces", stress_key="pred_stress")
    predicted = read_configurations(path, keys)
    assert [c.energy for c in predicted] == [1.5, 2.5]
    for config, f, s in zip(predicted, forces, stress, strict=True):
        assert np.array_equal(config.forces, f) and np.array_equal(config.stress, s)
    assert_same_configurations(read_configurations(path), configs)  # labels unchanged
    with pytest.raises(ValueError, match="predicted energy has 1 values for 2 frames"):
        write_extxyz(configs, tmp_path / "x.xyz", predictions={"energy": [1.0]})


# --- keys and units -----------------------------------------------------------------------------

CELL = 'Lattice="4.0 0.0 0.0 0.0 5.0 0.0 0.0 0.0 6.0"'


def test_keys_are_found_in_info_arrays_and_calculator(tmp_path):
    text = extxyz_frame(
        f"{CELL} Properties=species:S:1:pos:R:3:REF_forces:R:3:force:R:3 REF_energy=-3.5 "
        'REF_stress="1 2 3 2 4 5 3 5 6" energy=-1.0 pbc="T T T"',
        ["Si 0 0 0 1 2 3 4 5 6", "Si 1 1 1 -1 -2 -3 -4 -5 -6"],
    )
    path = write(tmp_path, "mace.xyz", text)
    mace = read_configurations(
        path, DatasetKeys(energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress")
    )[0]
    assert mace.energy == -3.5
    assert mace.forces.tolist() == [[1, 2, 3], [-1, -2, -3]]
    assert mace.stress.tolist() == [[1, 2, 3], [2, 4, 5], [3, 5, 6]]
    tial = read_configurations(path, DatasetKeys(forces_key="force"))[0]
    assert tial.energy == -1.0  # ASE moved it into a SinglePointCalculator
    assert tial.forces.tolist() == [[4, 5, 6], [-4, -5, -6]]


def test_units_are_converted_to_ev_and_angstrom(tmp_path):
    text = extxyz_frame(
        f"{CELL} Properties=species:S:1:pos:R:3:forces:R:3 energy=-2.0 "
        'stress="1 0 0 0 2 0 0 0 3" pbc="T T T"',
        ["H 1 0 0 0.5 0 0", "H 0 1 0 -0.5 0 0"],
    )
    path = write(tmp_path, "hartree_bohr.xyz", text)
    config = read_configurations(path, DatasetKeys(energy_unit="Hartree", length_unit="Bohr"))[0]
    bohr, hartree = units.Bohr, units.Hartree
    assert np.allclose(config.positions, [[bohr, 0, 0], [0, bohr, 0]], rtol=1e-15)
    assert np.allclose(config.cell, np.diag([4.0, 5.0, 6.0]) * bohr, rtol=1e-15)
    assert config.energy == pytest.approx(-2.0 * hartree, rel=1e-15)
    assert config.forces[0, 0] == pytest.approx(0.5 * hartree / bohr, rel=1e-15)
    assert np.allclose(np.diag(config.stress), np.array([1, 2, 3]) * hartree / bohr**3, rtol=1e-15)
    kcal = read_configurations(path, DatasetKeys(energy_unit="kcal/mol", length_unit="nm"))[0]
    assert kcal.energy == pytest.approx(-2.0 * units.kcal / units.mol, rel=1e-15)
    assert kcal.forces[0, 0] == pytest.approx(0.5 * units.kcal / units.mol / 10.0, rel=1e-15)
    kj = read_configurations(path, DatasetKeys(energy_unit="kJ/mol"))[0]
    assert kj.energy == pytest.approx(-2.0 * units.kJ / units.mol, rel=1e-15)
    with pytest.raises(ValueError, match="unknown energy_unit 'kcal'"):
        DatasetKeys(energy_unit="kcal")
    with pytest.raises(ValueError, match="unknown length_unit 'pm'"):
        DatasetKeys(length_unit="pm")


def test_virial_becomes_stress_divided_by_minus_volume(tmp_path):
    virial = np.array([[3.0, 0.5, 0.0], [0.5, 6.0, 0.0], [0.0, 0.0, 9.0]])
    flat = " ".join(map(str, virial.reshape(-1)))
    text = extxyz_frame(
        f"{CELL} Properties=species:S:1:pos:R:3:dft_force:R:3 dft_energy=-10.0 "
        f'dft_virial="{flat}" pbc="T T T"',
        ["Si 0 0 0 0 0 0", "Si 1 1 1 0 0 0"],
    )
    path = write(tmp_path, "gap.xyz", text)
    keys = DatasetKeys(energy_key="dft_energy", forces_key="dft_force", virial_key="dft_virial")
    config = read_configurations(path, keys)[0]
    assert np.allclose(config.stress, -virial / 120.0, rtol=1e-15, atol=0)
    in_kcal = read_configurations(path, DatasetKeys(**{**keys.__dict__, "energy_unit": "kcal/mol"}))
    assert np.allclose(in_kcal[0].stress, -virial * units.kcal / units.mol / 120.0, rtol=1e-15)
    # a molecule has no volume: the virial cannot become a stress
    no_box = write(
        tmp_path, "no_box.xyz", text.replace(CELL + " ", "").replace('"T T T"', '"F F F"')
    )
    with pytest.raises(
        DataFormatError, match=r"no_box.xyz, frame 0, line 2: virial 'dft_virial'.*zero volume"
    ):
        read_configurations(no_box, keys)


def test_isolated_atom_energies(tmp_path):
    text = (
        extxyz_frame(
            'Properties=species:S:1:pos:R:3 config_type=IsolatedAtom energy=-13.6 pbc="F F F"',
            ["H 0 0 0"],
        )
        + extxyz_frame(
            'Properties=species:S:1:pos:R:3 config_type=IsolatedAtom energy=-1025.3 pbc="F F F"',
            ["C 0 0 0"],
        )
        + extxyz_frame(
            'Properties=species:S:1:pos:R:3 energy=-30.0 pbc="F F F"', ["H 0 0 0", "H 0 0 0.74"]
        )
    )
    path = write(tmp_path, "iso_atoms.xyz", text)
    assert read_isolated_atom_energies(path) == {1: -13.6, 6: -1025.3}
    in_hartree = read_isolated_atom_energies(path, DatasetKeys(energy_unit="Hartree"))
    assert in_hartree[1] == pytest.approx(-13.6 * units.Hartree)
    clash = write(tmp_path, "clash.xyz", text + extxyz_frame("energy=-13.0", ["H 0 0 0"]))
    with pytest.raises(DataFormatError, match=r"clash.xyz, frame 3: isolated-atom energy of Z=1"):
        read_isolated_atom_energies(clash)
    molecules = write(tmp_path, "molecules.xyz", extxyz_frame("energy=-1", ["H 0 0 0", "H 0 0 1"]))
    with pytest.raises(DataFormatError, match="molecules.xyz: no single-atom frame"):
        read_isolated_atom_energies(molecules)


def test_frame_selection_keeps_file_frame_numbers(tmp_path):
    configs = [
        Configuration(positions=[[0, 0, float(k)]], numbers=[1], energy=float(k)) for k in range(6)
    ]
    path = write_extxyz(configs, tmp_path / "six.xyz")
    convert(path, tmp_path / "six.h5")
    for index, expected in [
        (":", [0, 1, 2, 3, 4, 5]),
        ("::2", [0, 2, 4]),
        ("-2:", [4, 5]),
        (-1, [5]),
        ("3", [3]),
        (slice(4, 1, -1), [4, 3, 2]),
        ("::-2", [5, 3, 1]),
    ]:
        for file in (path, tmp_path / "six.h5"):
            picked = read_configurations(file, index=index)
            assert [c.energy for c in picked] == expected, (file, index)
            assert [c.source.split(" (from")[0] for c in picked] == [
                f"{file}, frame {k}" for k in expected
            ]
    with pytest.raises(IndexError, match="six.xyz: frame 6 out of range, the file has 6 frames"):
        read_configurations(path, index=6)
    with pytest.raises(ValueError, match="cannot read frame index '1:2:3:4'"):
        read_configurations(path, index="1:2:3:4")


def test_a_similar_key_is_suggested_when_no_frame_has_the_label(tmp_path):
    path = write(
        tmp_path,
        "gap.xyz",
        extxyz_frame(
            "Properties=species:S:1:pos:R:3:dft_force:R:3 dft_energy=-1.0", ["H 0 0 0 1 1 1"]
        ),
    )
    with pytest.warns(
        UserWarning, match=r"no frame has energy under 'energy' \(did you mean 'dft_energy'"
    ):
        configs = read_configurations(path, DatasetKeys(forces_key="dft_force"))
    assert configs[0].energy is None


# --- errors: keys, shapes, values ---------------------------------------------------------------

TWO_FRAMES = extxyz_frame(
    'Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 pbc="F F F"', ["H 0 0 0 0 0 1"]
) + extxyz_frame(
    'Properties=species:S:1:pos:R:3:dft_force:R:3 dft_energy=-2.0 config_type=x pbc="F F F"',
    ["H 0 0 0 0 0 1", "H 0 0 1 0 0 -1"],
)


def test_missing_required_energy_names_frame_line_present_keys_and_suggestion(tmp_path):
    path = write(tmp_path, "train.xyz", TWO_FRAMES)
    with pytest.raises(DataFormatError) as error:
        read_configurations(path, DatasetKeys(require_energy=True))
    message = str(error.value)
    assert f"{path}, frame 1, line 5" in message
    assert "required energy key 'energy' is missing" in message
    assert "config_type, dft_energy" in message  # the keys that are there
    assert "did you mean 'dft_energy'" in message


def test_missing_required_forces_lists_per_atom_keys(tmp_path):
    path = write(tmp_path, "train.xyz", TWO_FRAMES)
    with pytest.raises(
        DataFormatError,
        match=r"train.xyz, frame 1, line 5: required forces key "
        r"'forces' is missing; per-atom keys present: dft_force \(did you mean",
    ):
        read_configurations(path, DatasetKeys(require_forces=True))
    # not required: the frame is read without forces
    assert read_configurations(path)[1].forces is None


def test_forces_with_the_wrong_shape_are_rejected(tmp_path):
    text = extxyz_frame(
        "Properties=species:S:1:pos:R:3:forces:R:2 energy=1", ["H 0 0 0 1 2", "H 1 0 0 1 2"]
    )
    path = write(tmp_path, "shape.xyz", text)
    with pytest.raises(
        DataFormatError,
        match=r"shape.xyz, frame 0, line 2: 'forces' has shape \(2, 2\), expected \(2, 3\)",
    ):
        read_configurations(path)


def test_energy_that_is_not_a_number_is_rejected(tmp_path):
    path = write(tmp_path, "energy.xyz", extxyz_frame("energy=abc", ["H 0 0 0"]))
    with pytest.raises(
        DataFormatError,
        match=r"energy.xyz, frame 0, line 2: 'energy' must be one number, got 'abc'",
    ):
        read_configurations(path)


@pytest.mark.parametrize(
    ("comment", "atom", "expected"),
    [
        ("energy=nan", "H 0 0 0", r"frame 1, line 5: energy is not finite"),
        (
            "Properties=species:S:1:pos:R:3:forces:R:3",
            "H 0 0 0 0 inf 0",
            r"frame 1, line 6 \(atom 0\): forces are not finite",
        ),
        ("energy=1", "H 0 nan 0", r"frame 1, line 6 \(atom 0\): positions are not finite"),
        ('stress="1 0 0 0 nan 0 0 0 1"', "H 0 0 0", r"frame 1, line 5: stress is not finite"),
    ],
)
def test_non_finite_values_are_rejected(tmp_path, comment, atom, expected):
    text = extxyz_frame("energy=1", ["H 0 0 0"]) + extxyz_frame(comment, [atom])
    path = write(tmp_path, "nan.xyz", text)
    with pytest.raises(DataFormatError, match=f"nan.xyz, {expected}"):
        read_configurations(path)


# --- errors: malformed extxyz -------------------------------------------------------------------

GOOD = extxyz_frame('energy=1 pbc="F F F"', ["H 0 0 0", "H 0 0 1"]) * 3  # lines 1-12


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace("2\n", "x\n", 1),
            r"frame 0, line 1: expected the atom count \(an integer\), got 'x'",
        ),
        (
            "\n".join(GOOD.split("\n")[:8] + ["3"] + GOOD.split("\n")[9:]),
            r"frame 2, line 13: truncated frame: expected 3 atom lines \(lines 11-13\), file ends at line 12",
        ),
        (
            "\n".join(GOOD.split("\n")[:4] + ["1"] + GOOD.split("\n")[5:]),
            r"frame 2, line 8: expected the atom count \(an integer\), got 'H 0 0 1'",
        ),
        (
            "\n".join(GOOD.split("\n")[:4] + ["3"] + GOOD.split("\n")[5:]),
            r"frame 1, line 9 \(atom 2\): expected 4 columns \(species:S:1:pos:R:3\), got 1: '2'",
        ),
        (
            GOOD.replace("H 0 0 1", "H 0 zero 1", 2),
            r"frame 0, line 4 \(atom 1\): column 'pos' must be a real number, got 'zero'",
        ),
        (
            GOOD.replace("H 0 0 1", "H 0 0 1 7", 1),
            r"frame 0, line 4 \(atom 1\): expected 4 columns",
        ),
        (
            GOOD.replace("H 0 0 1", "Xq 0 0 1", 1),
            r"frame 0, line 4 \(atom 1\): unknown element 'Xq'",
        ),
        (
            "\n".join(GOOD.split("\n")[:10]),
            r"frame 2, line 11: truncated frame: expected 2 atom lines \(lines 11-12\), file ends at line 10",
        ),
        ("\n".join(GOOD.split("\n")[:9]), r"frame 2, line 10: file ends after the atom count"),
        (GOOD.replace("2\n", "0\n", 1), r"frame 0, line 1: atom count must be positive, got 0"),
        (
            "\n".join(GOOD.split("\n")[:4] + [""] + GOOD.split("\n")[4:]),
            r"line 5: blank line where the atom count of frame 1 was expected \(more data follows on line 6\)",
        ),
        (
            GOOD.replace("energy=1", "Properties=species:S:1:pos:R", 1),
            r"frame 0, line 2: malformed Properties='species:S:1:pos:R'",
        ),
        (
            GOOD.replace("energy=1", "Properties=species:S:1:pos:X:3", 1),
            r"frame 0, line 2: malformed Properties entry pos:X:3",
        ),
        (
            GOOD.replace("energy=1", "Properties=species:S:1:x:R:3", 1),
            r"frame 0, line 2: Properties='species:S:1:x:R:3' must contain pos:R:3",
        ),
        (
            extxyz_frame("energy=1", ["H 0 0 0", "H 0 0 1"])
            + extxyz_frame('Lattice="1 2 3"', ["H 0 0 0"]),
            r"frame 1, line 6: cannot parse the frame \(ValueError: Got info item Lattice",
        ),
    ],
    ids=[
        "count-not-int",
        "count-too-big-last",
        "count-too-small",
        "count-too-big",
        "non-numeric",
        "extra-column",
        "unknown-element",
        "truncated-atoms",
        "truncated-comment",
        "zero-atoms",
        "blank-line",
        "properties-triples",
        "properties-type",
        "properties-no-pos",
        "ase-error",
    ],
)
def test_malformed_extxyz_names_file_frame_and_line(tmp_path, text, expected):
    path = write(tmp_path, "bad.xyz", text)
    with pytest.raises(DataFormatError, match=f"bad.xyz, {expected}"):
        read_configurations(path)


def test_trailing_blank_lines_and_crlf_are_fine(tmp_path):
    path = tmp_path / "crlf.xyz"
    path.write_bytes(GOOD.replace("\n", "\r\n").encode() + b"\r\n\r\n  \n")
    assert len(read_configurations(path)) == 3


def test_binary_garbage_is_reported_with_its_line(tmp_path):
    path = tmp_path / "binary.xyz"
    path.write_bytes(GOOD.encode() + b"\xff\xfe\n")
    with pytest.raises(DataFormatError, match=r"binary.xyz, line 13: not UTF-8 text"):
        read_configurations(path)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"data.cif: unknown file type '.cif'"):
        read_configurations(write(tmp_path, "data.cif", ""))
    with pytest.raises(FileNotFoundError, match="nothing.xyz: no such file"):
        read_configurations(tmp_path / "nothing.xyz")


# --- npz (rMD17, sGDML) -------------------------------------------------------------------------


def rmd17_arrays(n_frames: int = 4, n_atoms: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "nuclear_charges": np.array([8, 1, 1], dtype=np.uint8)[:n_atoms],
        "coords": rng.normal(size=(n_frames, n_atoms, 3)),
        "energies": rng.normal(-47000, 1, n_frames),
        "forces": rng.normal(size=(n_frames, n_atoms, 3)) * 20,
        "old_energies": rng.normal(size=n_frames),
    }


def test_rmd17_npz_is_converted_from_kcal_per_mol(tmp_path):
    arrays = rmd17_arrays()
    np.savez(tmp_path / "water.npz", **arrays)
    configs = read_configurations(tmp_path / "water.npz", DatasetKeys(energy_unit="kcal/mol"))
    kcal = units.kcal / units.mol
    assert len(configs) == 4 and configs[2].source == f"{tmp_path / 'water.npz'}, frame 2"
    assert configs[2].numbers.tolist() == [8, 1, 1] and not configs[2].pbc.any()
    assert np.array_equal(configs[2].positions, arrays["coords"][2])
    assert configs[2].energy == pytest.approx(arrays["energies"][2] * kcal, rel=1e-15)
    assert np.allclose(configs[2].forces, arrays["forces"][2] * kcal, rtol=1e-15)
    old = read_configurations(
        tmp_path / "water.npz", DatasetKeys(energy_key="old_energies"), index="1:3"
    )
    assert [c.energy for c in old] == arrays["old_energies"][1:3].tolist()


def test_sgdml_npz_layout_and_declared_units(tmp_path):
    arrays = rmd17_arrays()
    np.savez(
        tmp_path / "sgdml.npz",
        z=arrays["nuclear_charges"],
        R=arrays["coords"],
        E=arrays["energies"][:, None],
        F=arrays["forces"],
        e_unit="kcal/mol",
        r_unit="Ang",
    )
    configs = read_configurations(tmp_path / "sgdml.npz", DatasetKeys(energy_unit="kcal/mol"))
    assert configs[3].energy == pytest.approx(arrays["energies"][3] * units.kcal / units.mol)
    with pytest.raises(
        DataFormatError,
        match=r"sgdml.npz: the file declares e_unit='kcal/mol' but "
        r"DatasetKeys.energy_unit is 'eV'; set energy_unit='kcal/mol'",
    ):
        read_configurations(tmp_path / "sgdml.npz")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda a: a.pop("coords"),
            r"rMD17 npz without 'coords'; keys present: energies, forces, nuclear_charges",
        ),
        (
            lambda a: a.update(forces=a["forces"][:, :2]),
            r"'forces' has shape \(4, 2, 3\) \(dtype float64\), expected \(n_frames, n_atoms, 3\) = \(4, 3, 3\)",
        ),
        (
            lambda a: a.update(energies=a["energies"][:3]),
            r"'energies' has shape \(3,\).*expected \(n_frames,\) = \(4,\)",
        ),
        (
            lambda a: a.update(coords=a["coords"][0]),
            r"'coords' has shape \(3, 3\).*expected \(n_frames, n_atoms, 3\)",
        ),
        (
            lambda a: a.update(nuclear_charges=np.array([8.0, 1.0, 1.0])),
            r"'nuclear_charges' has shape \(3,\) and dtype float64",
        ),
        (
            lambda a: a["forces"].__setitem__((2, 1, 0), np.nan),
            r"frame 2, atom 1: forces are not finite",
        ),
        (lambda a: [a.pop(k) for k in ("nuclear_charges", "coords")], r"neither the rMD17 layout"),
    ],
    ids=[
        "missing-coords",
        "forces-shape",
        "energies-shape",
        "coords-shape",
        "charges-dtype",
        "nan",
        "layout",
    ],
)
def test_malformed_npz_names_the_key_and_expected_shape(tmp_path, change, expected):
    arrays = rmd17_arrays()
    arrays.pop("old_energies")
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataFormatError, match=f"bad.npz[:,] {expected}"):
        read_configurations(tmp_path / "bad.npz")


def test_npz_errors_for_absent_configured_key_and_broken_archive(tmp_path):
    np.savez(tmp_path / "ok.npz", **rmd17_arrays())
    with pytest.raises(DataFormatError, match=r"ok.npz: key 'REF_energy' is missing"):
        read_configurations(tmp_path / "ok.npz", DatasetKeys(energy_key="REF_energy"))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataFormatError, match="broken.npz: not a readable npz archive"):
        read_configurations(tmp_path / "broken.npz")


# --- errors: HDF5 -------------------------------------------------------------------------------


def test_hdf5_with_wrong_format_or_schema_is_rejected(tmp_path):
    path = write_hdf5(sample_configurations(), tmp_path / "good.h5")
    cases = {
        "format": (
            lambda f: f.attrs.__setitem__("format", "mace"),
            r"attribute 'format' is 'mace', expected 'equimd-hdf5'",
        ),
        "version": (lambda f: f.attrs.__setitem__("version", 7), r"attribute 'version' is 7"),
        "missing": (lambda f: f.__delitem__("stress"), r"missing dataset\(s\) 'stress'"),
        "shape": (
            lambda f: (f.__delitem__("cell"), f.create_dataset("cell", data=np.zeros((3, 9)))),
            r"dataset 'cell' has shape \(3, 9\), expected \(F=3, 3, 3\)",
        ),
        "ptr": (
            lambda f: f["ptr"].__setitem__(3, 8),
            r"dataset 'ptr' must rise from 0 to the number of atoms \(9\)",
        ),
        "dtype": (
            lambda f: (f.__delitem__("pbc"), f.create_dataset("pbc", data=np.zeros((3, 3)))),
            r"dataset 'pbc' has the wrong dtype float64",
        ),
    }
    for name, (damage, expected) in cases.items():
        broken = tmp_path / f"{name}.h5"
        broken.write_bytes(path.read_bytes())
        with h5py.File(broken, "a") as handle:
            damage(handle)
        with pytest.raises(DataFormatError, match=f"{name}.h5: {expected}"):
            read_configurations(broken)
    write(tmp_path, "text.h5", "not hdf5")
    with pytest.raises(DataFormatError, match="text.h5: not an HDF5 file"):
        HDF5Dataset(tmp_path / "text.h5")


def test_hdf5_required_labels(tmp_path):
    path = write_hdf5(sample_configurations(), tmp_path / "data.h5")
    with pytest.raises(
        DataFormatError, match=r"data.h5, frame 2: no energy, but require_energy is set"
    ):
        read_configurations(path, DatasetKeys(require_energy=True))


# --- fuzzing ------------------------------------------------------------------------------------

SYMBOLS = ["H", "C", "O", "Si", "Cu"]
NUMBERS = {"H": 1, "C": 6, "O": 8, "Si": 14, "Cu": 29}
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def fmt(value: float) -> str:
    return repr(float(value))


@st.composite
def extxyz_frames(draw) -> tuple[list[str], list[tuple], Configuration]:
    """One valid frame: its lines, the role of each line, and the Configuration it encodes."""
    n = draw(st.integers(1, 4))
    symbols = draw(st.lists(st.sampled_from(SYMBOLS), min_size=n, max_size=n))
    positions = np.array(draw(st.lists(finite, min_size=3 * n, max_size=3 * n))).reshape(n, 3)
    has_cell = draw(st.booleans())
    cell = (
        np.array(draw(st.lists(finite, min_size=9, max_size=9))).reshape(3, 3)
        if has_cell
        else np.zeros((3, 3))
    )
    pbc_key = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=3, max_size=3)))
    pbc = np.array(pbc_key if pbc_key is not None else [has_cell] * 3)
    energy = draw(st.one_of(st.none(), finite))
    forces = (
        np.array(draw(st.lists(finite, min_size=3 * n, max_size=3 * n))).reshape(n, 3)
        if draw(st.booleans())
        else None
    )
    stress = None
    if draw(st.booleans()):
        upper = draw(st.lists(finite, min_size=6, max_size=6))
        stress = np.array(
            [
                [upper[0], upper[5], upper[4]],
                [upper[5], upper[1], upper[3]],
                [upper[4], upper[3], upper[2]],
            ]
        )
    tags = (
        draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)) if draw(st.booleans()) else None
    )
    space = draw(st.sampled_from([" ", "  ", "\t", "   "]))

    comment = []
    if has_cell:
        comment.append('Lattice="' + " ".join(fmt(v) for v in cell.reshape(-1)) + '"')
    columns = (
        ["species:S:1", "pos:R:3"]
        + (["forces:R:3"] if forces is not None else [])
        + (["tags:I:1"] if tags is not None else [])
    )
    comment.append("Properties=" + ":".join(columns))
    if energy is not None:
        comment.append(f"energy={fmt(energy)}")
    if stress is not None:
        comment.append('stress="' + " ".join(fmt(v) for v in stress.reshape(-1)) + '"')
    if draw(st.booleans()):
        comment.append("config_type=fuzz")
    if pbc_key is not None:
        comment.append('pbc="' + " ".join("T" if p else "F" for p in pbc_key) + '"')
    kinds = (
        ["S", "R", "R", "R"]
        + (["R"] * 3 if forces is not None else [])
        + (["I"] if tags is not None else [])
    )
    lines, roles = [str(n), " ".join(comment)], [("count",), ("comment",)]
    for atom in range(n):
        tokens = [symbols[atom].upper() if draw(st.booleans()) else symbols[atom]]
        tokens += [fmt(v) for v in positions[atom]]
        tokens += [fmt(v) for v in forces[atom]] if forces is not None else []
        tokens += [str(tags[atom])] if tags is not None else []
        lines.append(space.join(tokens) + draw(st.sampled_from(["", " "])))
        roles.append(("atom", kinds))
    config = Configuration(
        positions=positions,
        numbers=[NUMBERS[s] for s in symbols],
        cell=cell,
        pbc=pbc,
        energy=energy,
        forces=forces,
        stress=stress,
    )
    return lines, roles, config


@st.composite
def extxyz_files(draw) -> tuple[list[str], list[tuple], list[Configuration]]:
    frames = draw(st.lists(extxyz_frames(), min_size=1, max_size=4))
    lines, roles, configs = [], [], []
    for frame, (frame_lines, frame_roles, config) in enumerate(frames):
        lines += frame_lines
        roles += [(frame, *role) for role in frame_roles]
        configs.append(config)
    return lines, roles, configs


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_text(text: str, name: str = "fuzz.xyz") -> tuple[Path, list[Configuration] | Exception]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_text(text)
        try:
            return path, read_configurations(path)
        except Exception as error:  # noqa: BLE001 - the caller checks the type
            return path, error


@FUZZ
@given(extxyz_files(), st.sampled_from(["\n", ""]))
def test_fuzz_valid_extxyz_reads_back_exactly(file, final_newline):
    lines, _, configs = file
    path, result = read_text("\n".join(lines) + final_newline)
    assert not isinstance(result, Exception), result
    assert_same_configurations(result, configs)
    assert [c.source for c in result] == [f"{path}, frame {k}" for k in range(len(configs))]


JUNK = ["abc", "1.2.3", "--1", "1e", "0x1g", "NaNa", "1,5"]


@st.composite
def corruptions(draw):
    """A valid file broken in one way; returns (text, the line the error must name or None)."""
    lines, roles, _ = draw(extxyz_files())
    lines = list(lines)
    kind = draw(
        st.sampled_from(
            [
                "count_value",
                "count_text",
                "delete_line",
                "token",
                "non_finite",
                "truncate",
                "columns",
                "blank_line",
                "species",
            ]
        )
    )
    counts = [i for i, role in enumerate(roles) if role[1] == "count"]
    atoms = [i for i, role in enumerate(roles) if role[1] == "atom"]
    line = None
    if kind == "count_value":
        i = draw(st.sampled_from(counts))
        n = int(lines[i])
        lines[i] = str(draw(st.sampled_from([m for m in (0, -1, n - 1, n + 1, n + 2) if m != n])))
        if int(lines[i]) <= 0:
            line = i + 1
    elif kind == "count_text":
        i = draw(st.sampled_from(counts))
        lines[i] = draw(st.sampled_from(["abc", "2.5", "3 4", "", "two"]))
        line = i + 1
    elif kind == "delete_line":
        del lines[draw(st.integers(0, len(lines) - 1))]
    elif kind == "token":
        i = draw(st.sampled_from(atoms))
        tokens = lines[i].split()
        kinds = roles[i][2]
        column = draw(st.sampled_from([c for c, k in enumerate(kinds) if k in "RI"]))
        tokens[column] = draw(st.sampled_from(JUNK + (["1.5"] if kinds[column] == "I" else [])))
        lines[i], line = " ".join(tokens), i + 1
    elif kind == "non_finite":
        i = draw(st.sampled_from(atoms))
        tokens = lines[i].split()
        column = draw(st.sampled_from([c for c, k in enumerate(roles[i][2][:7]) if k == "R"]))
        tokens[column] = draw(st.sampled_from(["nan", "inf", "-inf", "NaN"]))
        lines[i], line = " ".join(tokens), i + 1
    elif kind == "truncate":
        frame_start = draw(st.sampled_from(counts))
        n = int(lines[frame_start])
        lines = lines[
            : frame_start + 1 + draw(st.integers(0, n))
        ]  # count line, maybe comment, < n atoms
    elif kind == "columns":
        i = draw(st.sampled_from(atoms))
        lines[i] = lines[i] + " 1.0" if draw(st.booleans()) else lines[i].rsplit(maxsplit=1)[0]
        line = i + 1
    elif kind == "blank_line":
        lines.insert(draw(st.integers(0, len(lines) - 1)), "")
    elif kind == "species":
        i = draw(st.sampled_from(atoms))
        tokens = lines[i].split()
        tokens[0] = draw(st.sampled_from(["Xq", "1", "Hh", "?"]))
        lines[i], line = " ".join(tokens), i + 1
    return "\n".join(lines) + "\n", line


@FUZZ
@given(corruptions())
def test_fuzz_corrupted_extxyz_raises_data_format_error(case):
    text, line = case
    path, result = read_text(text)
    assert isinstance(result, DataFormatError), f"expected DataFormatError, got {result!r}\n{text}"
    message = str(result)
    assert str(path) in message and "line " in message, message
    assert "frame " in message or "blank line" in message, message
    if line is not None:
        assert f"line {line}" in message, (message, text)


def test_extxyz_config_type_is_read_and_written_back(tmp_path):
    """The GAP/mlearn `config_type` label survives read → write → read (evaluate groups by it);
    a frame without one has None."""
    path = tmp_path / "typed.xyz"
    path.write_text(
        '1\nProperties=species:S:1:pos:R:3 energy=-1.0 config_type=Surface pbc="F F F"\nH 0 0 0\n'
        '1\nProperties=species:S:1:pos:R:3 energy=-2.0 pbc="F F F"\nH 0 0 1\n'
    )
    keys = DatasetKeys(require_forces=False)
    configs = read_configurations(path, keys)
    assert [c.config_type for c in configs] == ["Surface", None]
    write_extxyz(configs, tmp_path / "again.xyz")
    assert [c.config_type for c in read_configurations(tmp_path / "again.xyz", keys)] == ["Surface", None]
