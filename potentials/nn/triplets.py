"""Triplets of directed edges built inside the model from the neighbor list.

A triplet is a pair of edges that meet at atom j: an incoming edge kj (sender k, receiver j)
and an outgoing edge ji (sender j, receiver i). DimeNet/DimeNet++ and GemNet pass messages
along them with an angular basis of the angle between r_kj and r_ji.

Periodic images: edges are (sender, receiver, lattice shift), so a triplet whose k is the
atom i in another periodic image is a real triplet. Only the exact reverse edge
(k = i and shift_kj = -shift_ji, i.e. r_kj = -r_ji) is not one; it stays in the index
arrays with weight 0 (`TripletIndex.mask`), so that the number of triplets is a single
data-dependent size (the AOTInductor export traces one) and never the result of a mask.

GemNet writes the same triplets as two edges into one atom, b→a and c→a
(`build_receiver_pairs`; ca is the reverse of the DimeNet edge a→c), and needs the reverse
of every edge (`reverse_edges`).

Construction, O(E log E + T) with T = Σ_edges deg_in(sender), no loop over atoms and no
N×N matrix: sort the edges by receiver, count the incoming edges of every atom, and repeat
each edge once per incoming edge of the atom it meets (`torch.repeat_interleave`).

Sums over triplets, Σ_k Y(k→j→i) x_kj per edge ji (`sum_over_triplets`), run as one batched
matmul per atom j on zero-padded [K, ·] tables of j's edges (`nn/edge_slots.py`, `pad_triplets`), K
the largest degree, so that no [T, features] tensor is formed; a scatter over the triplets where
K cannot be read (symbolic shapes) or padding would be wasteful.
"""

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from equimd.potentials.nn.edge_slots import (
    EdgeGroups,
    EdgeSlots,
    edge_slots,
    incoming_edge_offsets,
    no_edge_slots,
)
from equimd.potentials.nn.scatter import scatter_sum
from equimd.potentials.nn.shapes import is_symbolic_size


class TripletIndex(NamedTuple):
    """T triplets k→j→i as edge indices into the graph's E edges.

    edge_kj: [T] int64 incoming edge (sender k, receiver j)
    edge_ji: [T] int64 outgoing edge (sender j, receiver i)
    mask:    [T] 0/1 in the float dtype; 0 where edge_kj is the reverse of edge_ji
    """

    edge_kj: Tensor
    edge_ji: Tensor
    mask: Tensor


def _incoming_edges_at(atom_of_edge: Tensor, by_receiver: EdgeGroups) -> tuple[Tensor, Tensor]:
    """Pair every edge e with every edge whose receiver is atom_of_edge[e]; `by_receiver`:
    `incoming_edge_offsets(receiver, N)`.

    Returns (incoming [T], edge [T]): edge e repeated once per incoming edge of its atom.
    """
    order, degree, start = by_receiver
    per_edge = degree[atom_of_edge]  # [E] pairs of each edge
    edge = torch.repeat_interleave(
        torch.arange(atom_of_edge.shape[0], device=order.device), per_edge
    )
    first = torch.cumsum(per_edge, dim=0) - per_edge  # [E] first pair of each edge
    local = torch.arange(edge.shape[0], device=order.device) - first[edge]  # [T]
    return order[start[atom_of_edge[edge]] + local], edge


def build_triplets(
    edge_index: Tensor, edge_shift: Tensor, num_nodes: int, by_receiver: Optional[EdgeGroups] = None
) -> TripletIndex:
    """All triplets (k→j, j→i) of a neighbor list, the reverse edge masked out.

    edge_index: [2, E] int64 (sender, receiver); edge_shift: [E, 3] lattice shifts (float);
    by_receiver: `incoming_edge_offsets(receiver, num_nodes)` if the caller has it.
    """
    sender, receiver = edge_index[0], edge_index[1]
    if by_receiver is None:
        by_receiver = incoming_edge_offsets(receiver, num_nodes)
    edge_kj, edge_ji = _incoming_edges_at(sender, by_receiver)  # [T], [T]
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


def build_receiver_pairs(
    edge_index: Tensor, num_nodes: int, dtype: torch.dtype, by_receiver: Optional[EdgeGroups] = None
) -> TripletIndex:
    """GemNet's triplets b→a←c: every pair of distinct edges with the same receiver a.

    Returned as TripletIndex(edge_kj = ba, edge_ji = ca, mask): mask is 0 where ba is ca
    itself (b = c through another periodic image is a triplet). by_receiver:
    `incoming_edge_offsets(receiver, num_nodes)` if the caller has it.
    """
    receiver = edge_index[1]
    if by_receiver is None:
        by_receiver = incoming_edge_offsets(receiver, num_nodes)
    edge_ba, edge_ca = _incoming_edges_at(receiver, by_receiver)
    return TripletIndex(edge_ba, edge_ca, (edge_ba != edge_ca).to(dtype))


def triplet_positions(triplets: TripletIndex, incoming: EdgeSlots, outgoing: EdgeSlots) -> Tensor:
    """[T] where `pad_triplets` puts each triplet k→j→i: (slot of ji at j) · K_in + (slot of kj
    at j) in atom j's [K_out, K_in] block, flattened over the atoms. Empty without slots."""
    width_in = incoming.width
    if width_in == 0 or outgoing.width == 0:
        return triplets.edge_kj.new_zeros(0)
    column = incoming.row[triplets.edge_kj] % width_in  # [T] slot of kj at j
    return outgoing.row[triplets.edge_ji] * width_in + column  # [T]


def pad_triplets(
    basis: Tensor, triplets: TripletIndex, incoming: EdgeSlots, outgoing: EdgeSlots,
    position: Optional[Tensor] = None,
) -> Tensor:
    """A triplet basis Y [T, L] as one matrix per atom j for `sum_over_triplets`:
    Y_j [K_out·L, K_in], row (edge ji, l), column edge kj, zero in empty slots →
    [N, K_out·L, K_in]. `incoming` groups the edges kj by j (their receiver), `outgoing` the
    edges ji by j (DimeNet: their sender; GemNet's ca←a pairs: their receiver, the same
    slots); `position`: `triplet_positions` where the caller pads several bases on the same
    triplets. With `no_edge_slots`, Y itself."""
    width_in, width_out = incoming.width, outgoing.width
    if width_in == 0 or width_out == 0:
        return basis
    num_nodes, num_orders = incoming.table.shape[0] // width_in, basis.shape[1]
    if position is None:
        position = triplet_positions(triplets, incoming, outgoing)
    y = basis.new_zeros(num_nodes * width_out * width_in, num_orders).index_copy(0, position, basis)
    y = y.view(num_nodes, width_out, width_in, num_orders).transpose(2, 3)  # [N, K_out, L, K_in]
    return y.reshape(num_nodes, width_out * num_orders, width_in)


def sum_over_triplets(
    basis: Tensor, features: Tensor, triplets: TripletIndex, incoming: EdgeSlots,
    outgoing: EdgeSlots,
) -> Tensor:
    """S[ji, l, :] = Σ_k Y[k→j→i, l] · x[kj]: per-edge sums of a triplet basis times the
    features of the triplets' incoming edges.

    basis: `pad_triplets(Y, triplets, incoming, outgoing)`; features x: [E, F] → [E, L, F].

    With slots, one batched matmul per atom j: S_j [(ji, l), :] = Y_j [K_out·L, K_in] @ X_j
    [K_in, F] (X_j the zero-padded x of the edges into j), which never forms a [T, F] tensor
    (T ≈ E·K triplets; as fairchem's `EfficientInteractionBilinear`, with atoms instead of
    edges as the batch). With `no_edge_slots` (symbolic shapes, where K is data-dependent, or
    very uneven degrees), one scatter of Y_l · x[kj] per l: same numbers.
    """
    num_edges = features.shape[0]
    width_in, width_out = incoming.width, outgoing.width
    if width_in == 0 or width_out == 0:
        x_kj = features[triplets.edge_kj]  # [T, F]
        return torch.stack(
            [
                scatter_sum(basis[:, order : order + 1] * x_kj, triplets.edge_ji, num_edges,
                            keep_source=False)
                for order in range(basis.shape[1])
            ],
            dim=1,
        )  # [E, L, F]
    num_nodes = incoming.table.shape[0] // width_in
    num_orders = basis.shape[1] // width_out
    x = torch.cat([features, features.new_zeros(1, features.shape[1])])[incoming.table]
    summed = torch.bmm(basis, x.view(num_nodes, width_in, -1))  # [N, K_out·L, F]
    return summed.view(num_nodes * width_out, num_orders, -1)[outgoing.row]  # [E, L, F]


def triplet_slots(
    triplets: TripletIndex, sender: Tensor, receiver: Tensor, num_nodes: int, by_receiver: bool,
    groups: Optional[EdgeGroups] = None,
) -> tuple[EdgeSlots, EdgeSlots]:
    """(incoming, outgoing) slots for `pad_triplets`/`sum_over_triplets`: incoming edges by
    receiver; outgoing edges by receiver (`by_receiver`, GemNet's pairs) or by sender (DimeNet).
    `no_edge_slots` while tracing with symbolic shapes (AOTInductor export) and where the
    padded matrices would hold more than 4× the triplets (very uneven degrees). `groups`:
    `incoming_edge_offsets(receiver, num_nodes)`, as given to the triplet builder."""
    none = no_edge_slots(receiver.device)
    num_triplets = triplets.mask.shape[0]
    if is_symbolic_size(num_triplets):
        return none, none
    incoming = edge_slots(receiver, num_nodes, groups)
    outgoing = incoming if by_receiver else edge_slots(sender, num_nodes)
    if num_nodes * incoming.width * outgoing.width > 4 * num_triplets:
        return none, none
    return incoming, outgoing


def _lexicographic_order(keys: list[Tensor]) -> Tensor:
    """Permutation sorting rows by keys[0], then keys[1], ... (stable sorts, last key first)."""
    order = torch.arange(keys[0].shape[0], device=keys[0].device)
    for key in keys[::-1]:
        order = order[torch.sort(key[order], stable=True)[1]]
    return order


def reverse_edges(edge_index: Tensor, edge_shift: Tensor) -> Tensor:
    """reverse[e]: the edge (receiver, sender, -shift) of edge e (sender, receiver, shift).

    The neighbor list is symmetric, so this is a permutation of the E edges. Both the edges
    and their reverses are sorted by (sender, receiver, shift); the k-th of one is the
    reverse of the k-th of the other. edge_index [2, E], edge_shift [E, 3] → [E] int64.
    """
    shift = torch.round(edge_shift).to(torch.long)  # integer lattice shifts
    sender, receiver = edge_index[0], edge_index[1]
    forward = _lexicographic_order([sender, receiver, shift[:, 0], shift[:, 1], shift[:, 2]])
    backward = _lexicographic_order([receiver, sender, -shift[:, 0], -shift[:, 1], -shift[:, 2]])
    return torch.empty_like(forward).scatter_(0, backward, forward)
