"""Graph indices for the peer benchmark workers, built beforehand with NumPy (never timed).

The parity fixture scripts (`make_dimenetpp_fixtures.py`, `make_gemnet_fixtures.py`) build
triplets and reverse edges with Python double loops over the edges: right for a few dozen
atoms, hopeless for Cu 2048 (~86k edges, ~3.5M triplets). The functions here build the same
index arrays, in the same order, by sorting and repeating; the workers hand them to the
fixture scripts' evaluation code in place of the loops. Imports NumPy and ASE only, so every
peer venv can use it; never imports equimd.

Edges are ASE's ``neighbor_list("ijS")``: sender i, receiver j, lattice shift S (periodic
images included, both directions), as in the fixture scripts.
"""

from __future__ import annotations

import numpy as np


def neighbor_graph(atoms, r_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sender [E], receiver [E], shift [E, 3] int): ASE's "ijS" neighbor list within r_max."""
    from ase.neighborlist import neighbor_list

    sender, receiver, shift = neighbor_list("ijS", atoms, r_max)
    return sender, receiver, shift


def edge_pairs(
    key_first: np.ndarray, key_second: np.ndarray, num_nodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (a, b) of edges with key_first[a] == key_second[b].

    Ordered by b, then by a (ascending): the order of the fixture scripts' loops
    ``for b in edges: for a in edges: if key_first[a] == key_second[b]``.
    Returns (first [P], second [P]) int64 edge indices.
    """
    order = np.argsort(key_first, kind="stable")  # edges grouped by key, ascending index
    degree = np.bincount(key_first, minlength=num_nodes)
    start = np.cumsum(degree) - degree
    counts = degree[key_second]  # [E] partners of each b
    second = np.repeat(np.arange(len(key_second)), counts)
    group_start = np.repeat(np.cumsum(counts) - counts, counts)
    offset = np.arange(len(second)) - group_start
    first = order[start[key_second[second]] + offset]
    return first.astype(np.int64), second.astype(np.int64)


def dimenet_triplets(
    sender: np.ndarray, receiver: np.ndarray, shift: np.ndarray, num_nodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(edge_kj, edge_ji): every pair k→j, j→i but the exact reverse edge (k = i, S_kj = −S_ji),
    as `make_dimenetpp_fixtures.triplets_by_loops`."""
    kj, ji = edge_pairs(receiver, sender, num_nodes)
    reverse = (sender[kj] == receiver[ji]) & np.all(shift[kj] == -shift[ji], axis=1)
    return kj[~reverse], ji[~reverse]


def gemnet_triplets(
    receiver: np.ndarray, num_nodes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(id3_ba, id3_ca, ragged): distinct edges b→a, c→a into one atom a, and the index of
    each triplet among those of its edge ca, as `make_gemnet_fixtures.interaction_graph`."""
    ba, ca = edge_pairs(receiver, receiver, num_nodes)
    keep = ba != ca
    ba, ca = ba[keep], ca[keep]
    counts = np.bincount(ca, minlength=len(receiver))
    ragged = np.arange(len(ca)) - np.repeat(np.cumsum(counts) - counts, counts)
    return ba, ca, ragged.astype(np.int64)


def reverse_edges(sender: np.ndarray, receiver: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """id_swap [E]: the index of the edge (t, s, −S) for every edge (s, t, S)."""
    edge_of = {
        (s, t, *sh): e
        for e, (s, t, sh) in enumerate(
            zip(sender.tolist(), receiver.tolist(), shift.tolist(), strict=True)
        )
    }
    return np.array(
        [
            edge_of[(t, s, *(-v for v in sh))]
            for s, t, sh in zip(sender.tolist(), receiver.tolist(), shift.tolist(), strict=True)
        ],
        dtype=np.int64,
    )
