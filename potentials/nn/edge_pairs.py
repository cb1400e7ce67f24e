"""The two directions of every pair in a full neighbour list, for sharing per-pair work.

A full list holds each pair twice, (i, j, S) and its reverse (j, i, -S), with exactly opposite
edge vectors (x_j - x_i + S·cell = -(x_i - x_j - S·cell) in floating point), hence the same
length. Whatever depends on the length alone and on the two elements symmetrically (a radial
basis, the radial MLP, the per-edge weights it makes) is the same function of the positions
and cell for both directions, so computing it once per pair and using it for both edges gives
the same energy, forces, stress and parameter gradients, for half the work.

Models put the edges in pair order, each edge followed by its reverse (edges 2p and 2p + 1 are
pair p), so per-pair rows are every other edge's (`first_of_pairs`) and an edge's pair row is
its index // 2: consumers broadcast [P, ...] over the two directions instead of gathering.

    pair_order(edge_index [2, E], edge_shift [E, 3], num_nodes) -> order [E] or None
    in_pair_order(edge_index, edge_vectors [E, 3], edge_shift, num_nodes, share)
        -> (edge_index, edge_vectors, paired): the edges in pair order when `share` and the
           list is made of pairs, else as they are (paired False)
    first_of_pairs(values [E, ...], paired) -> values [P, ...] (or as they are without pairs)
    per_edge(values [P, ...], num_edges) -> values [E, ...] (each row twice; as they are when
        they already have a row per edge)
    reflection_signs(irreps_sh) -> [D]: (-1)^l of each spherical-harmonic component
    harmonics_per_edge(first [P, D], signs [D], paired) -> [E, D]: Y of both edges of each
        pair from Y of its first edge, Y_l(-r) = (-1)^l Y_l(r)

`pair_order` is None when the list is not made of reverse pairs (LAMMPS' per-rank lists with
ghost atoms, a half list, a duplicated edge, an edge (i, i, 0)) or under a tracer with symbolic
sizes; one sort of E keys (two for an unsorted list), O(E log E).
"""

from typing import Optional, Tuple

import torch
from e3nn import o3
from torch import Tensor

from equimd.potentials.nn.shapes import is_symbolic_size

# Keys (sender, receiver, shift) are packed into one int64; beyond this the list is not paired
# (a cell needing shifts of hundreds of images with millions of atoms), and callers compute
# per edge as before.
_KEY_LIMIT = 4.0e18


def pair_order(
    edge_index: Tensor, edge_shift: Tensor, num_nodes: int, key_limit: float = _KEY_LIMIT
) -> Optional[Tensor]:
    """The edges in pair order, [E]: order[2p] is the lower-numbered edge of pair p and
    order[2p + 1] its reverse; None when the list is not made of reverse pairs (module
    docstring). `key_limit`: TorchScript reads the module constant this way."""
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
    first = (torch.arange(num_edges, device=key.device) < reverse).nonzero().view(-1)  # [P]
    if 2 * first.shape[0] != num_edges:
        return None  # an edge (i, i, 0), its own reverse: not a neighbour list's
    return torch.stack([first, reverse.index_select(0, first)], dim=1).view(-1)


def in_pair_order(
    edge_index: Tensor, edge_vectors: Tensor, edge_shift: Tensor, num_nodes: int, share: bool
) -> Tuple[Tensor, Tensor, bool]:
    """(edge_index [2, E], edge_vectors [E, 3], paired): in pair order (`pair_order`) when
    `share` and the list is made of reverse pairs, else as given with paired False. A model
    that computes its edge quantities from the returned vectors and index gives the same energy
    (a sum over edges does not depend on their order)."""
    if not share:
        return edge_index, edge_vectors, False
    order = pair_order(edge_index, edge_shift, num_nodes)
    if order is None:
        return edge_index, edge_vectors, False
    return edge_index.index_select(1, order), edge_vectors.index_select(0, order), True


def first_of_pairs(values: Tensor, paired: bool) -> Tensor:
    """`values` [E, ...] (edges in pair order) at each pair's first edge, [P, ...]; as they
    are when not paired."""
    return values[::2] if paired else values


def per_edge(values: Tensor, num_edges: int) -> Tensor:
    """Per-pair rows [P, ...] → [E, ...] with row p at edges 2p and 2p + 1 (pair order); rows
    that are already per edge are returned as they are."""
    if values.shape[0] == num_edges:
        return values
    return values.unsqueeze(1).expand([values.shape[0], 2] + list(values.shape[1:])).reshape(
        [num_edges] + list(values.shape[1:])
    )


def reflection_signs(irreps_sh: o3.Irreps) -> Tensor:
    """(-1)^l for each component of spherical harmonics with these degrees, [irreps_sh.dim]:
    how their values change under r -> -r, whatever parity the irreps are labelled with."""
    return torch.cat([torch.full((mul * ir.dim,), (-1.0) ** ir.l) for mul, ir in irreps_sh])


def harmonics_per_edge(first: Tensor, signs: Tensor, paired: bool) -> Tensor:
    """Spherical harmonics of every edge, [E, D], from those of each pair's first edge [P, D]
    (edges in pair order; as they are when not paired). The reverse edge's vector is exactly
    the negated vector and Y_l(-r) = (-1)^l Y_l(r): e3nn's harmonics are odd or even
    polynomials of the normalised vector, so the reverse rows are the bits their own
    evaluation gives (tests/test_edge_pairs.py), for half the evaluation."""
    if not paired:
        return first
    return torch.stack([first, first * signs], dim=1).view(2 * first.shape[0], first.shape[1])
