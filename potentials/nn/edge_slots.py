"""The edges of every atom as rows of a zero-padded [N, K] table (K the largest degree).

Sums over the edges of one atom — a receiver's incoming messages, a triplet's edges meeting at
j — run as one batched matmul per atom on such tables instead of a scatter: no [E, features]
message tensor is formed (the fused convolution's scalar path, `convolution/fused.py`; the
triplet sums of DimeNet++ and GemNet, `triplets.py`).

    incoming_edge_offsets(atom_of_edge, N) → (order, degree, start)   edges grouped by atom
    edge_ranks(atom_of_edge, order, start) → rank [E]                 slot of an edge at its atom
    edge_slots(atom_of_edge, N)            → EdgeSlots(row, table, K)

O(E log E) (one stable sort); within an atom, slots follow the edge order.
"""

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

EdgeGroups = Tuple[Tensor, Tensor, Tensor]  # `incoming_edge_offsets`: (order, degree, start)


class EdgeSlots(NamedTuple):
    """The edges of every atom (by one end: their receiver, or their sender) as rows of a
    [N, K] table, K the largest number of such edges of one atom.

    row:   [E] int64, atom(e) · K + the slot of edge e among its atom's edges
    table: [N·K] int64, the edge in each slot; E (one past the last edge) in empty slots
    width: K; 0 for "no layout" (`no_edge_slots`, and a graph without edges)
    """

    row: Tensor
    table: Tensor
    width: int


def incoming_edge_offsets(receiver: Tensor, num_nodes: int) -> EdgeGroups:
    """Edges grouped by the atom `receiver` [E] int64 names (their receiver, or their sender).

    Returns (order [E], degree [N], start [N]): the edges sorted by that atom (stable), the
    number of edges of each atom, and where each atom's group starts in `order`.
    """
    order = torch.sort(receiver, stable=True)[1]  # [E]
    degree = torch.zeros(num_nodes, dtype=torch.long, device=receiver.device)
    degree = degree.scatter_add(0, receiver, torch.ones_like(receiver))  # [N]
    start = torch.cumsum(degree, dim=0) - degree  # [N]
    return order, degree, start


def edge_ranks(atom_of_edge: Tensor, order: Tensor, start: Tensor) -> Tensor:
    """[E] the slot of each edge among its atom's edges (0, 1, ... in `order`), from
    `incoming_edge_offsets(atom_of_edge, N)`'s order and start."""
    edges = torch.arange(atom_of_edge.shape[0], device=atom_of_edge.device)
    return torch.empty_like(order).index_copy_(0, order, edges - start[atom_of_edge[order]])


def edge_slots(
    atom_of_edge: Tensor, num_nodes: int, groups: Optional[EdgeGroups] = None
) -> EdgeSlots:
    """`EdgeSlots` of the edges grouped by `atom_of_edge` [E] (the receivers or the senders).
    `groups`: `incoming_edge_offsets(atom_of_edge, num_nodes)` where the caller has it already
    (the triplet builders sort by receiver too), so that the edges are sorted once."""
    num_edges = atom_of_edge.shape[0]
    if groups is None:
        groups = incoming_edge_offsets(atom_of_edge, num_nodes)
    order, degree, start = groups
    width = int(degree.max()) if num_edges > 0 else 0
    row = atom_of_edge * width + edge_ranks(atom_of_edge, order, start)  # [E]
    edges = torch.arange(num_edges, device=atom_of_edge.device)
    table = torch.full((num_nodes * width,), num_edges, dtype=torch.long, device=atom_of_edge.device)
    return EdgeSlots(row, table.index_copy_(0, row, edges), width)


def no_edge_slots(device: torch.device) -> EdgeSlots:
    """The empty layout: callers fall back to a scatter."""
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return EdgeSlots(empty, empty, 0)
