"""`AtomicGraph`: the one graph type used by training, evaluation and the deployed models.

Edge convention (same as matscipy's ``neighbour_list("ijS")`` and mace-torch):
``edge_index[0]`` is the sender i, ``edge_index[1]`` the receiver j, and the edge vector is

    r_ij = x_j - x_i + edge_shift_ij @ cell[batch[i]]        (Å)

Messages flow from sender to receiver and are summed on the receiver. Neighbor lists are
symmetric, so every pair appears in both directions.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from equimd.potentials.data.configuration import Configuration


class AtomicGraph(NamedTuple):
    """A batch of B structures with N atoms and E directed edges in total.

    positions:  [N, 3] Å
    numbers:    [N] int64 atomic numbers
    edge_index: [2, E] int64 (sender, receiver)
    edge_shift: [E, 3] integer lattice shifts (stored in the float dtype)
    cell:       [B, 3, 3] Å, rows are lattice vectors
    pbc:        [B, 3] bool
    batch:      [N] int64 structure index of each atom
    ptr:        [B + 1] int64 atom offsets
    energy:     [B] eV (target, optional)
    forces:     [N, 3] eV/Å (target, optional)
    stress:     [B, 3, 3] eV/Å³ (target, optional; ASE sign)
    """

    positions: Tensor
    numbers: Tensor
    edge_index: Tensor
    edge_shift: Tensor
    cell: Tensor
    pbc: Tensor
    batch: Tensor
    ptr: Tensor
    energy: Optional[Tensor] = None
    forces: Optional[Tensor] = None
    stress: Optional[Tensor] = None


def edge_vectors(graph: AtomicGraph) -> Tensor:
    """r_ij = x_j - x_i + shift_ij @ cell, [E, 3] Å (differentiable in positions and cell)."""
    sender = graph.edge_index[0]
    receiver = graph.edge_index[1]
    cell_per_edge = graph.cell[graph.batch[sender]]
    shift = torch.bmm(graph.edge_shift.unsqueeze(1), cell_per_edge).squeeze(1)
    return graph.positions[receiver] - graph.positions[sender] + shift


def num_structures(graph: AtomicGraph) -> int:
    return graph.ptr.shape[0] - 1


def graph_to(graph: AtomicGraph, device: torch.device | str, dtype: torch.dtype) -> AtomicGraph:
    """Move a graph to a device, casting floating tensors to `dtype`."""

    def move(t: Optional[Tensor]) -> Optional[Tensor]:
        if t is None:
            return None
        if t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    return AtomicGraph(*(move(t) for t in graph))


def configuration_to_graph(
    config: Configuration, r_max: float, dtype: torch.dtype = torch.float64
) -> AtomicGraph:
    """Single-structure graph with a matscipy neighbor list (CPU preprocessing path).

    Raises `equimd.potentials.data.neighbors.CellError` naming `config.source` (file and frame) and
    the cell vectors at fault if a periodic direction has a zero, non-finite or linearly
    dependent cell vector.
    """
    from equimd.potentials.data.neighbors import neighbor_list

    sender, receiver, shift = neighbor_list(
        config.positions, config.cell, config.pbc, r_max, source=config.source
    )
    n = config.n_atoms

    def maybe(x, shape) -> Optional[Tensor]:
        if x is None:
            return None
        return torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(shape), dtype=dtype)

    return AtomicGraph(
        positions=torch.as_tensor(config.positions, dtype=dtype),
        numbers=torch.as_tensor(config.numbers, dtype=torch.long),
        edge_index=torch.as_tensor(np.stack([sender, receiver]), dtype=torch.long),
        edge_shift=torch.as_tensor(shift, dtype=dtype),
        cell=torch.as_tensor(config.cell, dtype=dtype).unsqueeze(0),
        pbc=torch.as_tensor(config.pbc, dtype=torch.bool).unsqueeze(0),
        batch=torch.zeros(n, dtype=torch.long),
        ptr=torch.tensor([0, n], dtype=torch.long),
        energy=maybe(config.energy, (1,)),
        forces=maybe(config.forces, (n, 3)),
        stress=maybe(config.stress, (1, 3, 3)),
    )


def collate(graphs: list[AtomicGraph]) -> AtomicGraph:
    """Concatenate single- or multi-structure graphs into one batch."""
    if len(graphs) == 1:
        return graphs[0]
    positions, numbers, edge_index, edge_shift, cell, pbc, batch, ptr = ([] for _ in range(8))
    energy, forces, stress = [], [], []
    atom_offset = 0
    structure_offset = 0
    ptr.append(torch.zeros(1, dtype=torch.long))
    for g in graphs:
        n = g.positions.shape[0]
        positions.append(g.positions)
        numbers.append(g.numbers)
        edge_index.append(g.edge_index + atom_offset)
        edge_shift.append(g.edge_shift)
        cell.append(g.cell)
        pbc.append(g.pbc)
        batch.append(g.batch + structure_offset)
        ptr.append(g.ptr[1:] + atom_offset)
        energy.append(g.energy)
        forces.append(g.forces)
        stress.append(g.stress)
        atom_offset += n
        structure_offset += g.cell.shape[0]

    def cat_optional(items: list[Optional[Tensor]]) -> Optional[Tensor]:
        if any(t is None for t in items):
            return None
        return torch.cat(items)  # type: ignore[arg-type]

    return AtomicGraph(
        positions=torch.cat(positions),
        numbers=torch.cat(numbers),
        edge_index=torch.cat(edge_index, dim=1),
        edge_shift=torch.cat(edge_shift),
        cell=torch.cat(cell),
        pbc=torch.cat(pbc),
        batch=torch.cat(batch),
        ptr=torch.cat(ptr),
        energy=cat_optional(energy),
        forces=cat_optional(forces),
        stress=cat_optional(stress),
    )
