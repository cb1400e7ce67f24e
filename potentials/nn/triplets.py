"""Triplets of directed edges (k→j, j→i) built inside the model from the neighbor list.

A triplet is a pair of edges that meet at atom j: an incoming edge kj (sender k, receiver j)
and an outgoing edge ji (sender j, receiver i). DimeNet/DimeNet++ and GemNet pass messages
along them with an angular basis of the angle between r_kj and r_ji.

Periodic images: edges are (sender, receiver, lattice shift), so a triplet whose k is the
atom i in another periodic image is a real triplet. Only the exact reverse edge
(k = i and shift_kj = -shift_ji, i.e. r_kj = -r_ji) is not one; it stays in the index
arrays with weight 0 (`TripletIndex.mask`), so that the number of triplets is a single
data-dependent size (the AOTInductor export traces one) and never the result of a mask.

Construction, O(E log E + T) with T = Σ_edges deg_in(sender), no loop over atoms and no
N×N matrix: sort the edges by receiver, count the incoming edges of every atom, and repeat
each edge ji once per incoming edge of its sender j (`torch.repeat_interleave`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class TripletIndex(NamedTuple):
    """T triplets k→j→i as edge indices into the graph's E edges.

    edge_kj: [T] int64 incoming edge (sender k, receiver j)
    edge_ji: [T] int64 outgoing edge (sender j, receiver i)
    mask:    [T] 0/1 in the float dtype; 0 where edge_kj is the reverse of edge_ji
    """

    edge_kj: Tensor
    edge_ji: Tensor
    mask: Tensor


def incoming_edge_offsets(receiver: Tensor, num_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Incoming edges grouped by receiver.

    receiver: [E] int64. Returns (order [E], degree [N], start [N]): the edges sorted by
    receiver (stable), the number of incoming edges of each atom, and where each atom's
    group starts in `order`.
    """
    order = torch.sort(receiver, stable=True)[1]  # [E]
    degree = torch.zeros(num_nodes, dtype=torch.long, device=receiver.device)
    degree = degree.scatter_add(0, receiver, torch.ones_like(receiver))  # [N]
    start = torch.cumsum(degree, dim=0) - degree  # [N]
    return order, degree, start


def build_triplets(edge_index: Tensor, edge_shift: Tensor, num_nodes: int) -> TripletIndex:
    """All triplets (k→j, j→i) of a neighbor list, the reverse edge masked out.

    edge_index: [2, E] int64 (sender, receiver); edge_shift: [E, 3] lattice shifts (float).
    """
    sender, receiver = edge_index[0], edge_index[1]
    order, degree, start = incoming_edge_offsets(receiver, num_nodes)
    per_edge = degree[sender]  # [E] triplets that end with edge ji = incoming edges of j
    edge_ji = torch.repeat_interleave(torch.arange(sender.shape[0], device=sender.device), per_edge)
    first = torch.cumsum(per_edge, dim=0) - per_edge  # [E] first triplet of each edge ji
    local = torch.arange(edge_ji.shape[0], device=sender.device) - first[edge_ji]  # [T]
    edge_kj = order[start[sender[edge_ji]] + local]  # [T]
    # exact reverse edge: k = i and r_kj = -r_ji (same atom, opposite lattice shift)
    same_atom = sender[edge_kj] == receiver[edge_ji]
    opposite_shift = (edge_shift[edge_kj] + edge_shift[edge_ji]).abs().sum(dim=-1) < 0.5
    mask = (~(same_atom & opposite_shift)).to(edge_shift.dtype)  # [T]
    return TripletIndex(edge_kj, edge_ji, mask)


def cos_angle(vector_kj: Tensor, vector_ji: Tensor) -> Tensor:
    """cos of the angle between r_kj and r_ji, [T] (smooth, also for collinear triplets).

    This is the DimeNet++/GemNet angle: cos θ = r_ji·r_kj / (|r_ji| |r_kj|), i.e. π minus
    the bond angle k-j-i. Not clamped to [-1, 1]: the angular bases are polynomials in
    cos θ, and a clamp would zero the gradient of a collinear triplet rounded past ±1.
    """
    dot = (vector_kj * vector_ji).sum(dim=-1)
    norms = torch.linalg.norm(vector_kj, dim=-1) * torch.linalg.norm(vector_ji, dim=-1)
    return dot / norms
