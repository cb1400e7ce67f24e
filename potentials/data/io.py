"""Read labelled structures from extxyz, equimd HDF5 and rMD17/sGDML npz files; write extxyz.

Every reader returns `Configuration`s in eV / Å with ASE's stress sign, whatever the file
stores: `DatasetKeys` names the labels and their units. Every problem with a file raises
`DataFormatError` naming the file, the frame, the field and (for text files) the 1-based line.

This module dispatches on the file extension; each format has its own module (`extxyz`,
`hdf5`, `npz`), sharing `keys` (`DatasetKeys`, `DataFormatError`, label checks) and `frames`
(frame selection). See docs/data.md for formats, keys and the error messages.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.extxyz import read_extxyz, write_extxyz
from equimd.potentials.data.hdf5 import read_hdf5, write_hdf5
from equimd.potentials.data.keys import DataFormatError, DatasetKeys
from equimd.potentials.data.npz import read_npz
from equimd.units import ENERGY_UNITS, LENGTH_UNITS

__all__ = [
    "DataFormatError",
    "DatasetKeys",
    "ENERGY_UNITS",
    "LENGTH_UNITS",
    "convert",
    "read_configurations",
    "read_isolated_atom_energies",
    "write_extxyz",
]

EXTXYZ_SUFFIXES = (".xyz", ".extxyz")
HDF5_SUFFIXES = (".h5", ".hdf5")
NPZ_SUFFIXES = (".npz",)


def read_configurations(
    path: str | os.PathLike,
    keys: DatasetKeys | None = None,
    index: str | int | slice | None = None,
) -> list[Configuration]:
    """Labelled structures from `path` in eV / Å, dispatching on the extension:
    .xyz/.extxyz (extended XYZ), .h5/.hdf5 (equimd HDF5), .npz (rMD17 or sGDML layout).

    index: frames to return, ASE style: None or ":" (all), 5, -1, "10:20", "::2", or a slice.
    Each `Configuration.source` is "<path>, frame <k>" with k the frame's index in the file.
    Raises `DataFormatError` for anything wrong in the file, FileNotFoundError if it is absent.
    """
    path = Path(path)
    keys = keys if keys is not None else DatasetKeys()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in EXTXYZ_SUFFIXES:
        return read_extxyz(path, keys, index)
    if suffix in HDF5_SUFFIXES:
        return read_hdf5(path, keys, index)
    if suffix in NPZ_SUFFIXES:
        return read_npz(path, keys, index)
    raise DataFormatError(
        f"{path}: unknown file type {suffix!r}; supported: .xyz/.extxyz (extended XYZ), "
        ".h5/.hdf5 (equimd HDF5), .npz (rMD17/sGDML)"
    )


def read_isolated_atom_energies(
    path: str | os.PathLike, keys: DatasetKeys | None = None
) -> dict[int, float]:
    """Isolated-atom energies (eV) by atomic number, for per-species reference energies (E0s).

    Every single-atom frame of the file (e.g. `iso_atoms.xyz`, or the `config_type=IsolatedAtom`
    frame of a GAP database) is taken as an isolated atom; frames with more atoms are ignored.
    Raises `DataFormatError` if there is no single-atom frame, one lacks an energy, or two
    frames of the same element disagree.
    """
    keys = replace(
        keys if keys is not None else DatasetKeys(),
        forces_key=None,
        stress_key=None,
        virial_key=None,
        require_forces=False,
    )
    energies: dict[int, float] = {}
    origin: dict[int, str] = {}
    for config in read_configurations(path, keys):
        if config.n_atoms != 1:
            continue
        number = int(config.numbers[0])
        if config.energy is None:
            raise DataFormatError(
                f"{config.source}: isolated atom (Z={number}) has no energy under "
                f"{keys.energy_key!r}"
            )
        if number in energies and not np.isclose(
            energies[number], config.energy, rtol=0, atol=1e-8
        ):
            raise DataFormatError(
                f"{config.source}: isolated-atom energy of Z={number} is {config.energy} eV, "
                f"but {origin[number]} gives {energies[number]} eV"
            )
        energies[number] = config.energy
        origin[number] = config.source
    if not energies:
        raise DataFormatError(f"{path}: no single-atom frame, so no isolated-atom energies")
    return energies


def convert(
    in_path: str | os.PathLike, out_path: str | os.PathLike, keys: DatasetKeys | None = None
) -> int:
    """Read `in_path` (any supported format, labels per `keys`) and write `out_path` as equimd
    HDF5 (.h5/.hdf5) or extxyz (.xyz/.extxyz) in eV / Å. Returns the number of frames written."""
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in HDF5_SUFFIXES + EXTXYZ_SUFFIXES:
        raise ValueError(f"{out_path}: cannot write {suffix!r}; use .h5/.hdf5 or .xyz/.extxyz")
    configs = read_configurations(in_path, keys)
    if suffix in HDF5_SUFFIXES:
        write_hdf5(configs, out_path)
    else:
        write_extxyz(configs, out_path)
    return len(configs)
