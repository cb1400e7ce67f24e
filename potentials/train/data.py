"""Training data: read the frames, split train/validation, pick species and E0s, and turn
every frame into a labelled graph once (cached in memory for the whole run)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from equimd.checks import atomic_number, symbol
from equimd.errors import EquimdError
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.train.batching import LabelledBatch, labelled_graph
from equimd.potentials.train.config import DataConfig
from equimd.potentials.train.statistics import (
    StatisticsError,
    e0s_from_mapping,
    least_squares_e0s,
    species_of,
)


class DataError(EquimdError, ValueError):
    """Training data that cannot be used (empty split, element outside the model's species)."""


@dataclass
class Split:
    """Training and validation frames; `*_indices` locate them in their source files."""

    train: list[Configuration]
    valid: list[Configuration]
    train_indices: list[int]
    valid_indices: list[int]


def dataset_keys(data: DataConfig):
    """The `DatasetKeys` (label names and units) of a data section: every `DatasetKeys` field
    that the section has (energy_key, ..., length_unit)."""
    from dataclasses import fields

    from equimd.potentials.data.io import DatasetKeys

    shared = {f.name for f in fields(DatasetKeys)} & {f.name for f in fields(data)}
    return DatasetKeys(**{name: getattr(data, name) for name in shared})


def read_split(data: DataConfig, seed: int) -> Split:
    """Read the frames and split them.

    Without `data.valid`, a random `valid_fraction` of the training frames (at least one) is
    held out, drawn with a generator seeded by `seed` (independent of every other RNG).
    """
    from equimd.potentials.data.io import read_configurations

    keys = dataset_keys(data)
    frames = read_configurations(data.train, keys, data.train_index)
    if data.max_frames is not None:
        frames = frames[: data.max_frames]
    if data.valid is not None:
        valid = read_configurations(data.valid, keys, data.valid_index)
        split = Split(frames, valid, list(range(len(frames))), list(range(len(valid))))
    else:
        if len(frames) < 2:
            raise DataError(f"{data.train}: {len(frames)} frame(s), too few to hold out validation")
        num_valid = min(max(1, round(data.valid_fraction * len(frames))), len(frames) - 1)
        order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed)).tolist()
        valid_indices, train_indices = sorted(order[:num_valid]), sorted(order[num_valid:])
        split = Split(
            [frames[i] for i in train_indices], [frames[i] for i in valid_indices],
            train_indices, valid_indices,
        )
    if not split.train:
        raise DataError(f"{data.train}: no training frames (index {data.train_index!r})")
    if not split.valid:
        raise DataError(f"{data.valid}: no validation frames (index {data.valid_index!r})")
    return split


def model_species(configured: list[str] | None, split: Split) -> list[int]:
    """Atomic numbers the model will know: the configured list, else those in the data.
    Raises `DataError` naming the first frame/atom whose element is not configured."""
    from equimd.checks import check_species
    from equimd.errors import UnknownElementError

    if configured is None:
        return species_of(split.train + split.valid)
    species = [atomic_number(name) for name in configured]
    for config in split.train + split.valid:
        try:
            check_species(config.numbers, species, config.source)
        except UnknownElementError as error:
            raise DataError(f"{error} (model.species in the config)") from error
    return species


def resolve_e0s(data: DataConfig, train: Sequence[Configuration], species: list[int]) -> list[float]:
    """E0 per species (eV, model order) as asked by `data.e0s`."""
    if isinstance(data.e0s, dict):
        return e0s_from_mapping(data.e0s, species, "data.e0s")
    if data.e0s.startswith("isolated:"):
        from equimd.potentials.data.io import read_isolated_atom_energies

        path = data.e0s.removeprefix("isolated:")
        return e0s_from_mapping(read_isolated_atom_energies(path, dataset_keys(data)), species, path)
    present = set(species_of(train))
    absent = [symbol(z) for z in species if z not in present]
    if absent:
        raise StatisticsError(
            f"cannot fit E0s by least squares for {', '.join(absent)}: not in the training "
            "frames; give data.e0s explicitly"
        )
    if all(config.energy is None for config in train):
        files = sorted({config.source.split(", frame")[0] for config in train})
        raise StatisticsError(
            f"{', '.join(files)}: cannot fit E0s by least squares: no training frame has an "
            f"energy under the key {data.energy_key!r}; set data.energy_key to the file's energy "
            "key, or give data.e0s explicitly ({Cu: -3.7, ...} or isolated:FILE)"
        )
    return least_squares_e0s(train, species)


def build_graphs(
    configs: Sequence[Configuration], r_max: float, dtype: torch.dtype
) -> list[LabelledBatch]:
    """One labelled graph per frame (matscipy neighbor list at cutoff `r_max` Å)."""
    return [labelled_graph(config, r_max, dtype) for config in configs]


def count_edges(graphs: Sequence[LabelledBatch]) -> int:
    return int(sum(item.graph.edge_index.shape[1] for item in graphs))


def label_summary(configs: Sequence[Configuration]) -> str:
    """'950 frames (19950 atoms); energy 950, forces 950, stress 0'."""
    atoms = int(np.sum([c.n_atoms for c in configs]))
    energy = sum(c.energy is not None for c in configs)
    forces = sum(c.forces is not None for c in configs)
    stress = sum(c.stress is not None for c in configs)
    return f"{len(configs)} frames ({atoms} atoms); energy {energy}, forces {forces}, stress {stress}"
