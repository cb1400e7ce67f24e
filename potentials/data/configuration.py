"""`Configuration`: one labelled atomic structure as read from a file (NumPy, eV/Å units)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Configuration:
    """One structure with optional ab initio labels, always in eV / Å.

    positions: [n_atoms, 3] Å
    numbers:   [n_atoms] atomic numbers
    cell:      [3, 3] Å, rows are lattice vectors (zeros for a molecule without a box)
    pbc:       [3] bool
    energy:    total energy, eV (None if unlabelled)
    forces:    [n_atoms, 3] eV/Å (None if unlabelled)
    stress:    [3, 3] eV/Å³, ASE sign convention: stress = (1/V) dE/dstrain = -virial/V
    source:    where it came from, e.g. "train.xyz, frame 12" (used in error messages)
    config_type: structure-type label (extxyz info `config_type`, the GAP/mlearn convention:
               "Bulk", "Surface", "Vacancy", ...), None if the file gives none; `equimd
               evaluate` breaks its errors down by it
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    source: str = "<memory>"
    config_type: str | None = None

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.asarray(self.pbc, dtype=bool).reshape(3)
        if len(self.numbers) != len(self.positions):
            raise ValueError(
                f"{self.source}: {len(self.numbers)} atomic numbers but "
                f"{len(self.positions)} positions"
            )
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
            if self.forces.shape != self.positions.shape:
                raise ValueError(
                    f"{self.source}: forces have shape {self.forces.shape}, "
                    f"expected {self.positions.shape}"
                )
        if self.stress is not None:
            self.stress = voigt_to_matrix(np.asarray(self.stress, dtype=np.float64), self.source)
        if self.energy is not None:
            self.energy = float(self.energy)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))

    @classmethod
    def from_atoms(cls, atoms, source: str = "<ase.Atoms>") -> Configuration:
        """Unlabelled configuration from an `ase.Atoms`."""
        return cls(
            positions=atoms.get_positions(),
            numbers=atoms.get_atomic_numbers(),
            cell=np.asarray(atoms.get_cell()),
            pbc=atoms.get_pbc(),
            source=source,
        )

    def to_atoms(self):
        """`ase.Atoms` with the same geometry (labels are not attached)."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)


def voigt_to_matrix(stress: np.ndarray, source: str = "<memory>") -> np.ndarray:
    """Stress as a symmetric [3, 3] matrix from 9 values, or 6 Voigt values in ASE order
    (xx, yy, zz, yz, xz, xy)."""
    flat = stress.reshape(-1)
    if flat.size == 9:
        return flat.reshape(3, 3)
    if flat.size == 6:
        xx, yy, zz, yz, xz, xy = flat
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise ValueError(f"{source}: stress must have 6 (Voigt) or 9 components, got {flat.size}")
