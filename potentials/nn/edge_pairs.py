"""The two directions of every pair in a full neighbour list, for sharing per-pair work.

A full list holds each pair twice, (i, j, S) and its reverse (j, i, -S), with exactly opposite
edge vectors (x_j - x_i + S·cell = -(x_i - x_j - S·cell) in floating point), hence the same
length. Whatever depends on the length alone and on the two elements symmetrically (a radial
basis, the radial MLP, the per-edge weights it makes) is the same function of the positions
and cell for both directions, so computing it once per pair and using it for both edges gives
the same energy, forces, stress and parameter gradients, for half the work.

    pair_rows(edge_index, edge_shift, num_nodes, share) -> (first, pair_of_edge) or (None, None)
    rows_of(values [E, ...], first) -> values [P, ...] (or as they are without pairs)
    edge_pairs(edge_index [2, E], edge_shift [E, 3], num_nodes) -> (first [P], pair_of_edge [E])
        or None when the list is not made of such pairs (LAMMPS' per-rank lists with ghost
        atoms, a half list, a duplicated edge, a tracer with symbolic sizes)

first[p] is the lower-numbered edge of pair p; pair_of_edge[e] the pair of edge e (so
pair_of_edge[first] = arange(P)). One sort of E keys (two for an unsorted list); O(E log E).
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from equimd.potentials.nn.shapes import is_symbolic_size

EdgePairs = Tuple[Tensor, Tensor]  # (first [P], pair_of_edge [E])

# Keys (sender, receiver, shift) are packed into one int64; beyond this the list is not paired
# (a cell needing shifts of hundreds of images with millions of atoms), and callers compute
# per edge as before.
_KEY_LIMIT = 4.0e18


def edge_pairs(
    edge_index: Tensor, edge_shift: Tensor, num_nodes: int, key_limit: float = _KEY_LIMIT
) -> Optional[EdgePairs]:
    """(first, pair_of_edge) of a list whose edges come in reverse pairs; None otherwise
    (see the module docstring). `key_limit`: TorchScript reads the module constant this way."""
    num_edges = edge_index.shape[1]
    if is_symbolic_size(num_edges) or num_edges == 0 or num_edges % 2 == 1:
        return None
    sender, receiver = edge_index[0], edge_index[1]
    shift = torch.round(edge_shift).to(torch.long)  # integer-valued in the float dtype
    reach = int(shift.abs().max())
    extent = 2 * reach + 1
    if float(num_nodes) * float(num_nodes) * float(extent) ** 3 >= key_limit:
        return None
    image = ((shift[:, 0] + reach) * extent + shift[:, 1] + reach) * extent + shift[:, 2] + reach
    mirror = ((reach - shift[:, 0]) * extent + reach - shift[:, 1]) * extent + reach - shift[:, 2]
    images = extent * extent * extent
    key = (sender * num_nodes + receiver) * images + image  # [E] (i, j, S)
    reverse_key = (receiver * num_nodes + sender) * images + mirror  # [E] key of (j, i, -S)
    if bool((key[1:] > key[:-1]).all()):  # sorted and unique, as equimd's lists are
        sorted_keys, by_key = key, torch.arange(num_edges, device=key.device)
    else:
        sorted_keys, by_key = torch.sort(key)
        if bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            return None  # a duplicated edge
    sorted_reverse, by_reverse = torch.sort(reverse_key)
    if not torch.equal(sorted_keys, sorted_reverse):
        return None  # some edge has no reverse
    # edge by_key[m] has key sorted_keys[m] = the reverse key of edge by_reverse[m]
    reverse = torch.empty_like(by_key).index_copy_(0, by_reverse, by_key)  # [E]
    edges = torch.arange(num_edges, device=key.device)
    first = (edges < reverse).nonzero().view(-1)  # [P]
    if 2 * first.shape[0] != num_edges:
        return None  # an edge (i, i, 0), its own reverse: not a neighbour list's
    pairs = torch.arange(first.shape[0], device=key.device)
    pair_of_edge = torch.empty_like(edges).index_copy_(0, first, pairs)
    pair_of_edge = pair_of_edge.index_copy_(0, reverse.index_select(0, first), pairs)
    return first, pair_of_edge


def pair_rows(
    edge_index: Tensor, edge_shift: Tensor, num_nodes: int, share: bool
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(first [P], pair_of_edge [E]) when `share` and the list is made of reverse pairs: the
    edges per-pair quantities are computed for, and each edge's row among them; else
    (None, None): per edge."""
    if not share:
        return None, None
    pairs = edge_pairs(edge_index, edge_shift, num_nodes)
    if pairs is None:
        return None, None
    return pairs[0], pairs[1]


def rows_of(values: Tensor, first: Optional[Tensor]) -> Tensor:
    """`values` [E, ...] at the pairs' first edges ([P, ...]), or as they are without pairs."""
    return values if first is None else values.index_select(0, first)
