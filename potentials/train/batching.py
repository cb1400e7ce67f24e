"""Labelled batches: an `AtomicGraph` whose labels are zero-filled where a frame lacks one, plus
masks saying which labels are real (so frames with and without stress can share a batch)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import AtomicGraph, collate, configuration_to_graph, graph_to


class LabelledBatch(NamedTuple):
    """B structures, N atoms.

    graph:       AtomicGraph with energy [B] eV, forces [N, 3] eV/Å, stress [B, 3, 3] eV/Å³
                 (zeros where the frame has no such label)
    energy_mask: [B] bool, frame has an energy
    forces_mask: [N] bool, atom's frame has forces
    stress_mask: [B] bool, frame has a stress
    num_atoms:   [B] atoms per structure (in the float dtype, for per-atom energies)
    """

    graph: AtomicGraph
    energy_mask: Tensor
    forces_mask: Tensor
    stress_mask: Tensor
    num_atoms: Tensor

    @property
    def has_forces(self) -> bool:
        return bool(self.forces_mask.any())

    @property
    def has_stress(self) -> bool:
        return bool(self.stress_mask.any())


def labelled_graph(config: Configuration, r_max: float, dtype: torch.dtype) -> LabelledBatch:
    """One structure as a `LabelledBatch` (neighbor list by matscipy, cutoff `r_max` Å)."""
    graph = configuration_to_graph(config, r_max, dtype)
    n = config.n_atoms
    graph = graph._replace(
        energy=graph.energy if graph.energy is not None else torch.zeros(1, dtype=dtype),
        forces=graph.forces if graph.forces is not None else torch.zeros((n, 3), dtype=dtype),
        stress=graph.stress if graph.stress is not None else torch.zeros((1, 3, 3), dtype=dtype),
    )
    return LabelledBatch(
        graph=graph,
        energy_mask=torch.tensor([config.energy is not None]),
        forces_mask=torch.full((n,), config.forces is not None),
        stress_mask=torch.tensor([config.stress is not None]),
        num_atoms=torch.tensor([float(n)], dtype=dtype),
    )


def collate_labelled(items: list[LabelledBatch]) -> LabelledBatch:
    """Concatenate labelled graphs into one batch."""
    if len(items) == 1:
        return items[0]
    return LabelledBatch(
        graph=collate([item.graph for item in items]),
        energy_mask=torch.cat([item.energy_mask for item in items]),
        forces_mask=torch.cat([item.forces_mask for item in items]),
        stress_mask=torch.cat([item.stress_mask for item in items]),
        num_atoms=torch.cat([item.num_atoms for item in items]),
    )


def batch_to(batch: LabelledBatch, device: torch.device | str, dtype: torch.dtype) -> LabelledBatch:
    """Move a batch to `device`, floating tensors cast to `dtype`."""
    return LabelledBatch(
        graph=graph_to(batch.graph, device, dtype),
        energy_mask=batch.energy_mask.to(device),
        forces_mask=batch.forces_mask.to(device),
        stress_mask=batch.stress_mask.to(device),
        num_atoms=batch.num_atoms.to(device=device, dtype=dtype),
    )


def batch_indices(
    num_items: int, batch_size: int, generator: torch.Generator | None = None
) -> list[list[int]]:
    """Split range(num_items) into batches; shuffled with `generator` if given (the last
    batch may be smaller)."""
    if generator is None:
        order = list(range(num_items))
    else:
        order = torch.randperm(num_items, generator=generator).tolist()
    return [order[start : start + batch_size] for start in range(0, num_items, batch_size)]
