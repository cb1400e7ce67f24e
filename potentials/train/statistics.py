"""Training-set statistics set into the model before training.

    E0[Z]              per-species reference energies (eV): least squares of total energies on
                       species counts, or given, or from isolated-atom calculations
    avg_num_neighbors  mean number of neighbors within r_max (normalises message sums)
    scale              RMS of the force components (eV/Å); the network then predicts O(1)
                       numbers (MACE/NequIP convention)
    shift              mean per-atom residual energy E/N − Σ E0/N after the E0s (eV/atom)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from equimd.checks import atomic_number, symbol
from equimd.errors import EquimdError
from equimd.potentials.data.configuration import Configuration


class StatisticsError(EquimdError, ValueError):
    """Statistics that cannot be computed from the data given (e.g. a species without E0)."""


@dataclass
class DataStatistics:
    """species: atomic numbers in model order; e0: eV per species (same order);
    avg_num_neighbors: neighbors per atom; scale: eV/Å; shift: eV/atom."""

    species: list[int]
    e0: list[float]
    avg_num_neighbors: float
    scale: float
    shift: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DataStatistics:
        return cls(**values)

    def describe(self) -> str:
        e0 = ", ".join(f"{symbol(z)} {e:.4f}" for z, e in zip(self.species, self.e0, strict=True))
        return (
            f"E0s (eV): {e0}; avg_num_neighbors {self.avg_num_neighbors:.2f}; "
            f"scale {self.scale:.4f} eV/Å; shift {self.shift:.4f} eV/atom"
        )


def species_of(configs: Sequence[Configuration]) -> list[int]:
    """Sorted atomic numbers present in `configs`."""
    present: set[int] = set()
    for config in configs:
        present.update(int(z) for z in np.unique(config.numbers))
    return sorted(present)


def species_counts(configs: Sequence[Configuration], species: list[int]) -> np.ndarray:
    """[n_frames, n_species] number of atoms of each species per frame."""
    column = {z: i for i, z in enumerate(species)}
    counts = np.zeros((len(configs), len(species)))
    for row, config in enumerate(configs):
        for z, count in zip(*np.unique(config.numbers, return_counts=True), strict=True):
            counts[row, column[int(z)]] = count
    return counts


def least_squares_e0s(configs: Sequence[Configuration], species: list[int]) -> list[float]:
    """E0 (eV) per species minimising Σ_frames (E − Σ_Z n_Z E0[Z])².

    Frames without an energy are skipped. When species counts are collinear (e.g. every frame
    is the same molecule) the minimum-norm solution is returned: it still reproduces the mean
    energy, which is all the model needs.
    """
    labelled = [c for c in configs if c.energy is not None]
    if not labelled:
        raise StatisticsError("cannot fit E0s by least squares: no frame has an energy")
    counts = species_counts(labelled, species)
    energies = np.array([c.energy for c in labelled])
    e0, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return [float(e) for e in e0]


def e0s_from_mapping(mapping: dict, species: list[int], source: str) -> list[float]:
    """E0 list in model order from {symbol or Z: eV}; every species must be present."""
    by_number = {atomic_number(k) if isinstance(k, str) else int(k): float(v) for k, v in mapping.items()}
    missing = [symbol(z) for z in species if z not in by_number]
    if missing:
        raise StatisticsError(
            f"{source}: no E0 for {', '.join(missing)} (given for "
            f"{', '.join(symbol(z) for z in sorted(by_number))})"
        )
    return [by_number[z] for z in species]


def average_num_neighbors(num_edges: int, num_atoms: int) -> float:
    """Directed edges per atom (each atom receives this many messages on average)."""
    if num_atoms == 0:
        raise StatisticsError("cannot compute avg_num_neighbors of an empty training set")
    return max(num_edges / num_atoms, 1.0)


def force_rms(configs: Sequence[Configuration]) -> float | None:
    """RMS of all force components (eV/Å), or None if no frame has forces."""
    forces = [c.forces.reshape(-1) for c in configs if c.forces is not None]
    if not forces:
        return None
    return float(np.sqrt(np.mean(np.concatenate(forces) ** 2)))


def residual_energies_per_atom(
    configs: Sequence[Configuration], species: list[int], e0: list[float]
) -> np.ndarray:
    """(E − Σ_Z n_Z E0[Z]) / N per frame with an energy (eV/atom)."""
    labelled = [c for c in configs if c.energy is not None]
    if not labelled:
        return np.zeros(0)
    counts = species_counts(labelled, species)
    energies = np.array([c.energy for c in labelled])
    return (energies - counts @ np.asarray(e0)) / counts.sum(axis=1)


def compute_statistics(
    configs: Sequence[Configuration],
    species: list[int],
    e0: list[float],
    num_edges: int,
) -> DataStatistics:
    """Scale, shift and avg_num_neighbors of a training set for given E0s.

    num_edges: total directed edges of the training graphs (at the model's r_max).
    """
    residuals = residual_energies_per_atom(configs, species, e0)
    shift = float(residuals.mean()) if residuals.size else 0.0
    scale = force_rms(configs)
    if scale is None or scale < 1e-8:
        scale = float(residuals.std()) if residuals.size > 1 else 1.0
    if scale < 1e-8:
        scale = 1.0
    num_atoms = sum(c.n_atoms for c in configs)
    return DataStatistics(
        species=list(species),
        e0=list(e0),
        avg_num_neighbors=average_num_neighbors(num_edges, num_atoms),
        scale=scale,
        shift=shift,
    )
