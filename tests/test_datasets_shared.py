"""Every reference dataset in ../shared/data reads through `read_configurations` with the keys
and units its SOURCE.md documents, and the counts, labels and magnitudes match SOURCE.md.

The per-dataset keys here are the ones in the table of docs/data.md; keep the two in step.
Skipped when the shared data folder is absent.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import units
from ase.data import atomic_numbers

from equimd.potentials.data import (
    Configuration,
    DatasetKeys,
    read_configurations,
    read_isolated_atom_energies,
)

SHARED = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()


def elements(*symbols: str) -> frozenset[int]:
    return frozenset(atomic_numbers[s] for s in symbols)


@dataclass(frozen=True)
class FileSpec:
    """What SOURCE.md says about one file (labels: present on every frame, or on none)."""

    frames: int
    atoms: tuple[int, ...]  # the allowed atom counts, or (min, max) when `atom_range`
    elements: frozenset[int]  # atomic numbers
    energy: bool = True
    forces: bool = True
    stress: bool | int = False  # True: every frame; an int: that many frames
    atom_range: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    keys: DatasetKeys
    periodic: bool
    files: dict[str, FileSpec] = field(default_factory=dict)


def molecule(frames: int, atoms: int, species: frozenset[int], forces: bool = True) -> FileSpec:
    return FileSpec(frames, (atoms,), species, forces=forces)


def isolated(frames: int, species: frozenset[int]) -> FileSpec:
    """Single-atom frames with energies only (E0 references)."""
    return FileSpec(frames, (1,), species, forces=False)


RMD17_ATOMS = {  # molecule: (atoms, elements), from rmd17/SOURCE.md
    "aspirin": (21, elements("H", "C", "O")),
    "azobenzene": (24, elements("H", "C", "N")),
    "benzene": (12, elements("H", "C")),
    "ethanol": (9, elements("H", "C", "O")),
    "malonaldehyde": (9, elements("H", "C", "O")),
    "naphthalene": (18, elements("H", "C")),
    "paracetamol": (20, elements("H", "C", "N", "O")),
    "salicylic": (16, elements("H", "C", "O")),
    "toluene": (15, elements("H", "C")),
    "uracil": (12, elements("H", "C", "N", "O")),
}
ZUO = {  # file: (configs, min atoms, max atoms, stress), from zuo2020_mlearn/SOURCE.md
    "Cu_train": (262, 6, 108, False),
    "Cu_test": (31, 20, 108, True),
    "Ge_train": (228, 12, 64, True),
    "Ge_test": (25, 40, 64, True),
    "Li_train": (241, 2, 84, False),
    "Li_test": (29, 2, 54, False),
    "Mo_train": (194, 2, 54, True),
    "Mo_test": (23, 24, 54, True),
    "Ni_train": (263, 6, 108, False),
    "Ni_test": (31, 12, 108, True),
    "Si_train": (214, 12, 96, True),
    "Si_test": (25, 24, 64, True),
}

DATASETS: dict[str, DatasetSpec] = {
    "rmd17": DatasetSpec(
        DatasetKeys(energy_unit="kcal/mol"),  # kcal/mol and kcal/mol/Å
        periodic=False,
        files={
            f"rmd17_{name}_{split}_01.npz": molecule(1000, atoms, species)
            for name, (atoms, species) in RMD17_ATOMS.items()
            for split in ("train", "test")
        },
    ),
    "3bpa": DatasetSpec(
        DatasetKeys(),
        periodic=False,
        files={
            "train_300K.xyz": molecule(500, 27, elements("H", "C", "N", "O")),
            "train_mixedT.xyz": molecule(500, 27, elements("H", "C", "N", "O")),
            "iso_atoms.xyz": isolated(4, elements("H", "C", "N", "O")),
        },
    ),
    "acac": DatasetSpec(
        DatasetKeys(),
        periodic=False,
        files={
            "train_300K.xyz": molecule(500, 15, elements("H", "C", "O")),
            "test_MD_300K.xyz": molecule(650, 15, elements("H", "C", "O")),
            "test_dihedral.xyz": molecule(45, 15, elements("H", "C", "O"), forces=False),
            "isolated_atoms.xyz": isolated(3, elements("H", "C", "O")),
        },
    ),
    "ethanol_botnet_ood": DatasetSpec(
        DatasetKeys(),
        periodic=False,
        files={
            "test_H_removal.xyz": molecule(60, 9, elements("H", "C", "O"), forces=False),
            "test_dimers.xyz": FileSpec(429, (2,), elements("H", "C", "O"), forces=False),
            "test_norm_mode_874.xyz": molecule(37, 9, elements("H", "C", "O"), forces=False),
            "test_norm_mode_3005.xyz": molecule(18, 9, elements("H", "C", "O"), forces=False),
            "isolated_atoms.xyz": isolated(4, elements("H", "C", "N", "O")),
        },
    ),
    "water_rpbe_d3": DatasetSpec(
        DatasetKeys(),
        periodic=True,
        files={"test-H2O_RPBE-D3.xyz": FileSpec(50, (192,), elements("H", "O"))},
    ),
    "zuo2020_mlearn": DatasetSpec(
        DatasetKeys(),  # `stress` is already ASE sign, eV/Å³
        periodic=True,
        files={
            f"{name}.xyz": FileSpec(
                frames,
                (low, high),
                elements(name[:2]),
                stress=stress,
                atom_range=True,
            )
            for name, (frames, low, high, stress) in ZUO.items()
        },
    ),
    "si_gap18_tiny": DatasetSpec(
        DatasetKeys(energy_key="dft_energy", forces_key="dft_force", virial_key="dft_virial"),
        periodic=True,
        files={"Si_tiny.xyz": FileSpec(53, (1, 2, 64), elements("Si"), stress=52)},
    ),
    "tial_ace_tutorial": DatasetSpec(
        DatasetKeys(forces_key="force", virial_key="virial"),
        periodic=True,
        files={"TiAl_tutorial.xyz": FileSpec(329, (2, 54, 128), elements("Ti", "Al"), stress=True)},
    ),
}


def dataset_folders() -> list:
    if not SHARED.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{SHARED} not found"))]
    return sorted(p.name for p in SHARED.iterdir() if p.is_dir())


@functools.cache
def load(folder: str, name: str, stress_key: str | None = None) -> tuple[Configuration, ...]:
    """The file read with its documented keys (optionally another stress key), cached."""
    keys = DATASETS[folder].keys
    if stress_key is not None:
        keys = DatasetKeys(**{**keys.__dict__, "stress_key": stress_key})
    return tuple(read_configurations(SHARED / folder / name, keys))


@functools.cache
def botnet_e0s() -> dict[int, float]:
    """Isolated H, C, N, O energies (eV) at the rMD17 level of theory (PBE/def2-SVP)."""
    return read_isolated_atom_energies(SHARED / "ethanol_botnet_ood" / "isolated_atoms.xyz")


@pytest.mark.parametrize("folder", dataset_folders())
def test_dataset_reads_as_documented(folder):
    assert folder in DATASETS, f"{folder}: no entry in DATASETS (read its SOURCE.md and add one)"
    spec = DATASETS[folder]
    on_disk = {p.name for p in (SHARED / folder).iterdir() if p.name != "SOURCE.md"}
    assert on_disk == set(spec.files), "every file of the folder is checked"
    for name, expected in spec.files.items():
        configs = load(folder, name)
        where = f"{folder}/{name}"
        assert len(configs) == expected.frames, where
        atoms = [c.n_atoms for c in configs]
        if expected.atom_range:
            assert (min(atoms), max(atoms)) == expected.atoms, where
        else:
            assert set(atoms) <= set(expected.atoms), where
        species = set(np.concatenate([c.numbers for c in configs]).tolist())
        assert species == expected.elements, where
        for frame, config in enumerate(configs):
            here = f"{where}, frame {frame}"
            assert config.source == f"{SHARED / folder / name}, frame {frame}"
            assert config.pbc.all() if spec.periodic else not config.pbc.any(), here
            assert (config.energy is not None) == expected.energy, here
            assert (config.forces is not None) == expected.forces, here
            if config.energy is not None:
                assert np.isfinite(config.energy), here
            if config.forces is not None:
                assert (
                    config.forces.shape == (config.n_atoms, 3) and np.isfinite(config.forces).all()
                )
            if config.stress is not None:
                assert config.stress.shape == (3, 3) and np.isfinite(config.stress).all(), here
                assert np.allclose(config.stress, config.stress.T), here
                assert np.abs(config.stress).max() < 1.0, f"{here}: |stress| > 160 GPa"
            assert np.isfinite(config.positions).all(), here
        with_stress = sum(c.stress is not None for c in configs)
        wanted = (
            expected.stress
            if not isinstance(expected.stress, bool)
            else (len(configs) if expected.stress else 0)
        )
        assert with_stress == wanted, where


# --- units and dataset-specific facts from SOURCE.md ------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found")


@needs_shared
def test_rmd17_is_converted_from_kcal_per_mol_to_ev():
    """Atomization energies per atom (against the isolated atoms at the same level of theory)
    of organic molecules are a few eV; the raw kcal/mol numbers would be ~23 times larger."""
    e0s = botnet_e0s()
    for name in DATASETS["rmd17"].files:
        configs = load("rmd17", name)
        reference = sum(e0s[z] for z in configs[0].numbers.tolist())
        per_atom = np.mean([c.energy for c in configs]) - reference
        per_atom /= configs[0].n_atoms
        assert -9.0 < per_atom < -3.0, (name, per_atom)
        force_rms = np.sqrt(np.mean(np.concatenate([c.forces for c in configs]) ** 2))
        assert 0.3 < force_rms < 3.0, (name, force_rms)  # eV/Å (kcal/mol/Å would be ~30)
    raw = np.load(SHARED / "rmd17" / "rmd17_ethanol_train_01.npz")
    ethanol = load("rmd17", "rmd17_ethanol_train_01.npz")
    kcal_per_mol = units.kcal / units.mol
    assert ethanol[7].energy == pytest.approx(raw["energies"][7] * kcal_per_mol, rel=1e-14)
    assert np.allclose(ethanol[7].forces, raw["forces"][7] * kcal_per_mol, rtol=1e-14)


@needs_shared
def test_rmd17_ethanol_in_ev_matches_botnet_ethanol():
    """BOTNet's ethanol probes are rMD17 ethanol at the same level of theory, in eV (SOURCE.md):
    300 K MD frames lie a little above the normal-mode scan through the minimum."""
    md = np.array([c.energy for c in load("rmd17", "rmd17_ethanol_train_01.npz")])
    scan = np.array([c.energy for c in load("ethanol_botnet_ood", "test_norm_mode_874.xyz")])
    assert scan.min() < md.min() < scan.min() + 0.5
    assert abs(md.mean() - scan.mean()) < 2.0


@needs_shared
def test_3bpa_mixed_temperature_set_shares_31_frames_with_300K():
    at_300K = {c.energy for c in load("3bpa", "train_300K.xyz")}
    shared = [c for c in load("3bpa", "train_mixedT.xyz") if c.energy in at_300K]
    assert len(shared) == 31


@needs_shared
@pytest.mark.parametrize("folder", ["3bpa", "acac", "ethanol_botnet_ood"])
def test_molecules_carry_a_dummy_50_angstrom_box_without_pbc(folder):
    for name, spec in DATASETS[folder].files.items():
        box = np.zeros((3, 3)) if spec.atoms == (1,) else np.eye(3) * 50.0  # atoms: no Lattice
        for config in load(folder, name):
            assert np.array_equal(config.cell, box) and not config.pbc.any(), name


@needs_shared
def test_isolated_atom_files_give_e0s_for_their_elements():
    for folder, name in [
        ("3bpa", "iso_atoms.xyz"),
        ("acac", "isolated_atoms.xyz"),
        ("ethanol_botnet_ood", "isolated_atoms.xyz"),
    ]:
        e0s = read_isolated_atom_energies(SHARED / folder / name)
        assert set(e0s) == DATASETS[folder].files[name].elements
        assert -15.0 < e0s[atomic_numbers["H"]] < -13.0  # a hydrogen atom is about -13.6 eV in DFT
    si = read_isolated_atom_energies(
        SHARED / "si_gap18_tiny" / "Si_tiny.xyz", DATASETS["si_gap18_tiny"].keys
    )
    assert si == {atomic_numbers["Si"]: -158.54496821}  # SOURCE.md


@needs_shared
def test_si_tiny_stress_is_minus_dft_virial_over_volume():
    configs = load("si_gap18_tiny", "Si_tiny.xyz")
    frames = ase.io.read(SHARED / "si_gap18_tiny" / "Si_tiny.xyz", ":")
    for config, atoms in zip(configs, frames, strict=True):
        assert config.energy == atoms.info["dft_energy"]
        assert np.array_equal(config.forces, atoms.arrays["dft_force"])
        if "dft_virial" in atoms.info:
            virial = np.asarray(atoms.info["dft_virial"]).reshape(3, 3)
            assert np.allclose(config.stress, -virial / atoms.get_volume(), rtol=1e-12, atol=0)
    assert Counter(c.n_atoms for c in configs) == {2: 50, 64: 2, 1: 1}  # dia + bt, liq, atom


@needs_shared
def test_tial_forces_come_from_the_force_array_and_stress_from_the_virial():
    configs = load("tial_ace_tutorial", "TiAl_tutorial.xyz")
    frames = ase.io.read(SHARED / "tial_ace_tutorial" / "TiAl_tutorial.xyz", ":")
    for config, atoms in zip(configs[:20], frames[:20], strict=True):
        assert np.array_equal(config.forces, atoms.arrays["force"])
        assert np.allclose(config.stress, -atoms.info["virial"] / atoms.get_volume(), rtol=1e-12)
    mean_per_atom = np.mean([c.energy / c.n_atoms for c in configs])
    assert mean_per_atom == pytest.approx(-851, abs=1.0)  # SOURCE.md: about -851 eV/atom
    assert Counter(c.n_atoms for c in configs) == {2: 315, 54: 9, 128: 5}


@needs_shared
def test_water_matches_documented_statistics():
    configs = load("water_rpbe_d3", "test-H2O_RPBE-D3.xyz")
    assert np.mean([c.energy for c in configs]) / 64 == pytest.approx(-14.64, abs=0.005)
    force_rms = np.sqrt(np.mean(np.concatenate([c.forces for c in configs]) ** 2))
    assert force_rms == pytest.approx(0.83, abs=0.005)
    for config in configs:
        assert np.array_equal(config.cell, np.eye(3) * 12.429)
        assert Counter(config.numbers.tolist()) == {
            atomic_numbers["H"]: 128,
            atomic_numbers["O"]: 64,
        }


@needs_shared
def test_zuo_stress_is_minus_a_tenth_gpa_times_raw_kbar():
    """SOURCE.md: stress = -0.1 GPa x virial_stress_kbar; the diagonal is order-independent."""
    for name, (_, _, _, has_stress) in ZUO.items():
        if not has_stress:
            continue
        configs = load("zuo2020_mlearn", f"{name}.xyz")
        raw = load("zuo2020_mlearn", f"{name}.xyz", stress_key="virial_stress_kbar")
        for config, kbar in zip(configs, raw, strict=True):
            expected = -0.1 * units.GPa * np.diag(kbar.stress)
            assert np.allclose(np.diag(config.stress), expected, rtol=1e-6, atol=1e-12), name
