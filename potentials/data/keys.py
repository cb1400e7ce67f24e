"""What every data reader shares: `DataFormatError`, `DatasetKeys` (which labels to read and
their units) and the checks of the labels read (finite values, required labels, a suggestion
for a misspelled key)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from equimd.errors import EquimdError, SettingsError
from equimd.potentials.data.configuration import Configuration
from equimd.units import ENERGY_UNITS, LENGTH_UNITS

__all__ = [
    "DataFormatError", "DatasetKeys", "check_finite", "check_required", "clip", "did_you_mean",
]


class DataFormatError(EquimdError, ValueError):
    """A data file that cannot be read as labelled structures; the message names the file,
    the frame, the field and, for text files, the 1-based line."""


@dataclass
class DatasetKeys:
    """Where the labels live in a file and which units they are in.

    energy_key:   total energy (extxyz info / calculator results; npz array), or None to skip
    forces_key:   per-atom forces (extxyz column / calculator results; npz array), or None
    stress_key:   stress [3, 3] or Voigt [6] with ASE's sign (positive = tensile), or None
    virial_key:   virial [3, 3] or [9] in energy units (GAP's `dft_virial`); used where a
                  frame has no `stress_key`: stress = -virial / volume
    energy_unit:  "eV", "meV", "kcal/mol", "kJ/mol" or "Hartree"
    length_unit:  "Å" (also "A", "Angstrom"), "Bohr" or "nm"
    require_energy, require_forces: raise if a frame lacks the label (else it is left None)

    Forces are converted as energy/length, stress as energy/length³. The keys and units do not
    apply to equimd HDF5 files, which are always eV / Å (the `require_*` flags do).
    """

    energy_key: str | None = "energy"
    forces_key: str | None = "forces"
    stress_key: str | None = "stress"
    virial_key: str | None = None
    energy_unit: str = "eV"
    length_unit: str = "Å"
    require_forces: bool = False
    require_energy: bool = False

    def __post_init__(self) -> None:
        if self.energy_unit.lower() not in ENERGY_UNITS:
            raise SettingsError(
                f"unknown energy_unit {self.energy_unit!r}; supported: "
                "eV, meV, kcal/mol, kJ/mol, Hartree"
            )
        if self.length_unit.lower() not in LENGTH_UNITS:
            raise SettingsError(
                f"unknown length_unit {self.length_unit!r}; supported: Å (A, Angstrom), Bohr, nm"
            )

    @property
    def energy_factor(self) -> float:
        """eV per file energy unit."""
        return ENERGY_UNITS[self.energy_unit.lower()]

    @property
    def length_factor(self) -> float:
        """Å per file length unit."""
        return LENGTH_UNITS[self.length_unit.lower()]

    @property
    def forces_factor(self) -> float:
        """(eV/Å) per file force unit."""
        return self.energy_factor / self.length_factor

    @property
    def stress_factor(self) -> float:
        """(eV/Å³) per file stress unit."""
        return self.energy_factor / self.length_factor**3


def check_finite(
    config: Configuration, where: str, atom_where: Callable[[int], str] | None = None
) -> None:
    """Raise `DataFormatError` naming the field if a value is NaN or infinite; for per-atom
    values the location is `atom_where(atom)` (default: "<where>, atom <i>")."""
    for name, value in (("positions", config.positions), ("forces", config.forces)):
        if value is not None and not np.isfinite(value).all():
            atom = int(np.flatnonzero(~np.isfinite(value).all(axis=1))[0])
            location = atom_where(atom) if atom_where else f"{where}, atom {atom}"
            raise DataFormatError(f"{location}: {name} are not finite: {value[atom]}")
    for name, value in (("cell", config.cell), ("stress", config.stress)):
        if value is not None and not np.isfinite(value).all():
            raise DataFormatError(f"{where}: {name} is not finite: {value.reshape(-1)}")
    if config.energy is not None and not np.isfinite(config.energy):
        raise DataFormatError(f"{where}: energy is not finite: {config.energy}")


def check_required(config: Configuration, keys: DatasetKeys, where: str) -> None:
    """Raise `DataFormatError` at `where` if `keys` requires a label that `config` lacks."""
    if keys.require_energy and config.energy is None:
        raise DataFormatError(f"{where}: no energy, but require_energy is set")
    if keys.require_forces and config.forces is None:
        raise DataFormatError(f"{where}: no forces, but require_forces is set")


def did_you_mean(key: str, candidates: Any) -> str:
    """" (did you mean 'a' or 'b'?)" naming up to three close matches of `key`, else ""."""
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def clip(text: str, limit: int = 80) -> str:
    """`text` without its newline, shortened to `limit` characters for an error message."""
    text = text.rstrip("\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."
