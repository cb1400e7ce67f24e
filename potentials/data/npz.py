"""rMD17 and sGDML npz archives: one molecule, many frames, read into `Configuration`s in
eV / Å (labels and units per `DatasetKeys`; sGDML's declared units are checked against them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.frames import select_frames
from equimd.potentials.data.keys import DataFormatError, DatasetKeys, check_finite, did_you_mean
from equimd.units import ENERGY_UNITS, LENGTH_UNITS

__all__ = ["read_npz"]

# layout name -> (atomic numbers, positions, energy, forces)
_NPZ_LAYOUTS = {
    "rMD17": ("nuclear_charges", "coords", "energies", "forces"),
    "sGDML": ("z", "R", "E", "F"),
}


def read_npz(
    path: Path, keys: DatasetKeys, index: str | int | slice | None
) -> list[Configuration]:
    """The frames of an rMD17 or sGDML npz archive picked by the ASE-style `index`, in eV / Å
    (labels and units per `keys`; a periodic cell if the archive has a `lattice`)."""
    import zipfile

    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataFormatError(f"{path}: not a readable npz archive ({error})") from error
    with archive:
        names = set(archive.files)
        layout = next(
            (
                name
                for name, fields in _NPZ_LAYOUTS.items()
                if fields[0] in names or fields[1] in names
            ),
            None,
        )
        if layout is None:
            raise DataFormatError(
                f"{path}: neither the rMD17 layout (nuclear_charges, coords, energies, forces) "
                f"nor the sGDML layout (z, R, E, F); keys present: {', '.join(sorted(names))}"
            )
        z_key, r_key, e_key, f_key = _NPZ_LAYOUTS[layout]

        def load(key: str) -> np.ndarray:
            if key not in names:
                raise DataFormatError(
                    f"{path}: {layout} npz without {key!r}; keys present: "
                    f"{', '.join(sorted(names))}{did_you_mean(key, names)}"
                )
            try:
                return archive[key]
            except ValueError as error:  # object arrays need pickle, which we refuse
                raise DataFormatError(f"{path}: cannot load {key!r} ({error})") from error

        def label_key(chosen: str | None, default_name: str, layout_name: str) -> str | None:
            """The file's key for a label: the configured one if present, else the layout's
            (only when the configured key is the default)."""
            if chosen is None:
                return None
            if chosen in names:
                return chosen
            if chosen == default_name and layout_name in names:
                return layout_name
            if chosen != default_name:
                raise DataFormatError(
                    f"{path}: key {chosen!r} is missing; keys present: "
                    f"{', '.join(sorted(names))}{did_you_mean(chosen, names)}"
                )
            return None

        _check_npz_units(path, archive, names, keys)
        numbers = load(z_key)
        coords = load(r_key)
        energy_name = label_key(keys.energy_key, "energy", e_key)
        forces_name = label_key(keys.forces_key, "forces", f_key)
        energies = load(energy_name) if energy_name else None
        forces = load(forces_name) if forces_name else None
        lattice = load("lattice") if "lattice" in names else None

    if numbers.ndim != 1 or numbers.dtype.kind not in "iu":
        raise DataFormatError(
            f"{path}: {z_key!r} has shape {numbers.shape} and dtype {numbers.dtype}, expected "
            "integer atomic numbers of shape (n_atoms,)"
        )
    n_atoms = numbers.shape[0]
    _expect_shape(path, r_key, coords, (None, n_atoms, 3), "(n_frames, n_atoms, 3)")
    n_frames = coords.shape[0]
    if energies is not None:
        if energies.shape == (n_frames, 1):
            energies = energies[:, 0]
        _expect_shape(path, energy_name, energies, (n_frames,), "(n_frames,)")
    if forces is not None:
        _expect_shape(path, forces_name, forces, (n_frames, n_atoms, 3), "(n_frames, n_atoms, 3)")
    if keys.require_energy and energies is None:
        raise DataFormatError(f"{path}: no energies ({e_key!r}), but require_energy is set")
    if keys.require_forces and forces is None:
        raise DataFormatError(f"{path}: no forces ({f_key!r}), but require_forces is set")
    cell, pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
    if lattice is not None:
        _expect_shape(path, "lattice", lattice, (3, 3), "(3, 3)")
        cell, pbc = lattice * keys.length_factor, np.ones(3, dtype=bool)

    configs = []
    for frame in select_frames(n_frames, index, path):
        source = f"{path}, frame {frame}"
        config = Configuration(
            positions=coords[frame] * keys.length_factor,
            numbers=numbers,
            cell=cell,
            pbc=pbc,
            energy=None if energies is None else energies[frame] * keys.energy_factor,
            forces=None if forces is None else forces[frame] * keys.forces_factor,
            source=source,
        )
        check_finite(config, source)
        configs.append(config)
    return configs


def _expect_shape(
    path: Path, key: str | None, array: np.ndarray, shape: tuple[int | None, ...], described: str
) -> None:
    matches = array.ndim == len(shape) and all(
        want is None or have == want for have, want in zip(array.shape, shape, strict=True)
    )
    if not matches or array.dtype.kind not in "iuf":
        expected = tuple("n_frames" if s is None else s for s in shape)
        raise DataFormatError(
            f"{path}: {key!r} has shape {array.shape} (dtype {array.dtype}), expected "
            f"{described} = {expected}"
        )


def _check_npz_units(path: Path, archive, names: set[str], keys: DatasetKeys) -> None:
    """sGDML files record their units (`e_unit`, `r_unit`): refuse a mismatch with `keys`."""
    for key, table, configured, field in (
        ("e_unit", ENERGY_UNITS, keys.energy_unit, "energy_unit"),
        ("r_unit", LENGTH_UNITS, keys.length_unit, "length_unit"),
    ):
        if key not in names:
            continue
        declared = str(archive[key])
        if declared.lower() in table and table[declared.lower()] != table[configured.lower()]:
            raise DataFormatError(
                f"{path}: the file declares {key}={declared!r} but DatasetKeys.{field} is "
                f"{configured!r}; set {field}={declared!r}"
            )

