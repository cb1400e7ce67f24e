"""Unit factors as named constants, in one place.

equimd works in eV, Å, eV/Å, eV/Å³ and fs everywhere except at the OpenMM boundary (nm, kJ/mol,
ps), where `equimd.md_drivers.openmm` converts with the constants below, and in ASE's own time
and pressure units, which the MD engines (`equimd.md_drivers.engines`) convert. Dataset readers
convert labels to eV/Å with `ENERGY_UNITS` / `LENGTH_UNITS` (ASE's CODATA values, so the
numbers match `ase.units`).

OpenMM constants: 1 eV · N_A = e · N_A / 1000 kJ/mol with the exact SI-2019 values
e = 1.602176634e-19 C and N_A = 6.02214076e23 /mol, as `openmm.unit` computes it
(``(1 * elementary_charge * volt * AVOGADRO_CONSTANT_NA).value_in_unit(kilojoule_per_mole)``).
`ase.units` (CODATA 2014 by default in ASE 3.29) gives 96.48533288 — 8e-9 relative away.
"""

from __future__ import annotations

from ase import units as _ase

EV_TO_KJ_PER_MOL: float = 96.48533212331
"""1 eV in kJ/mol (exact SI-2019 constants, as `openmm.unit` evaluates e · N_A)."""
NM_TO_ANGSTROM: float = 10.0
"""1 nm in Å."""
FORCE_TO_KJ_PER_MOL_NM: float = EV_TO_KJ_PER_MOL * NM_TO_ANGSTROM
"""1 eV/Å in kJ/mol/nm."""
FS_PER_PS: float = 1000.0
"""1 ps in fs."""
ASE_TIME_PER_FS: float = _ase.fs
"""1 fs in ASE's time unit (Å·sqrt(amu/eV))."""
ANGSTROM_TO_NM: float = 0.1
"""1 Å in nm (`x * ANGSTROM_TO_NM` and `x / NM_TO_ANGSTROM` may differ in the last bit: each
call site keeps the operation it has always used, so numbers stay bit-identical)."""
PS_PER_FS: float = 1e-3
"""1 fs in ps (a multiplication, like `ANGSTROM_TO_NM`: not the same bits as `/ FS_PER_PS`)."""
NS_PER_PS: float = 1e-3
"""1 ps in ns."""
SECONDS_PER_DAY: float = 86400.0
"""1 day in s (simulation speed in ns/day)."""
ASE_PRESSURE_PER_BAR: float = _ase.bar
"""1 bar in ASE's pressure unit (eV/Å³)."""
BOLTZMANN_EV_PER_K: float = _ase.kB
"""Boltzmann constant k_B in eV/K (ASE's value)."""

ENERGY_UNITS: dict[str, float] = {
    "ev": 1.0,
    "mev": 1e-3,
    "kcal/mol": _ase.kcal / _ase.mol,
    "kj/mol": _ase.kJ / _ase.mol,
    "hartree": _ase.Hartree,
    "ha": _ase.Hartree,
}
"""Energy unit name (lower case) → value of one unit in eV."""
LENGTH_UNITS: dict[str, float] = {
    "å": 1.0,
    "a": 1.0,
    "ang": 1.0,
    "angstrom": 1.0,
    "bohr": _ase.Bohr,
    "nm": NM_TO_ANGSTROM,
}
"""Length unit name (lower case) → value of one unit in Å."""
