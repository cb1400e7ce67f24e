"""Crystal graphs of the k nearest neighbours (CGCNN, ALIGNN, Matformer), selected inside the
model from the radius neighbour list, and the fixed lattice self-connections of Matformer.

The reference construction (YKQ98/Matformer `graphs.py`: `nearest_neighbor_edges_submit` with
`use_canonize=True, use_lattice=True`, then `build_undirected_edgedata`), restated on a
directed neighbour list that holds every periodic image within r_max, each pair both ways:

- d_k(i): the distance from atom i to its k-th nearest neighbour (periodic images of all atoms,
  its own included; ties count once each). Atom i keeps every neighbour at r ≤ d_k(i) (all
  ties at the k-th distance).
- The pairs are made undirected: the edge i–j (through one image) is in the graph if either end
  keeps it, i.e. if r_ij ≤ max(d_k(i), d_k(j)), and then once in each direction.
- An atom's own images: the reference stores image n of atom i and image −n (found at the
  same distance) as two undirected pairs, so each directed self-image edge appears twice:
  multiplicity 2.
- Lattice self-connections: for each atom, the six cell vectors a, b, c, a+b, a+c, b+c, each
  in both directions (12 directed self-edges of multiplicity 1), whatever their length, unless
  that image is already one of the kept neighbours (then it is counted only there).

Ties are taken within `tolerance` (Å), above float32 rounding of an 8 Å distance (~5e-7 Å),
so that equal distances of a perfect crystal tie in any dtype. An atom with fewer than k
neighbours within r_max keeps all of them (the reference enlarges its search radius instead:
choose r_max so that this does not happen — 8 Å, the reference's, holds ≥ 12 neighbours in
any solid). The selection is piecewise constant in the positions, so an energy on this graph
is discontinuous where two neighbours swap rank (docs/architectures/matformer.md).
Cost: one stable sort of the E edges by length and receiver, O(E log E).
"""

from typing import Tuple

import torch
from torch import Tensor

from equimd.potentials.nn.edge_slots import incoming_edge_offsets


def kth_neighbor_distance(lengths: Tensor, receiver: Tensor, num_atoms: int, k: int) -> Tensor:
    """d_k [N] Å: each atom's distance to its k-th nearest incoming edge; +inf where an atom
    has fewer than k. lengths [E] Å, receiver [E]."""
    by_length = torch.sort(lengths.detach(), stable=True)[1]  # [E]
    order, degree, start = incoming_edge_offsets(receiver[by_length], num_atoms)
    sorted_lengths = lengths.detach()[by_length[order]]  # [E] grouped by atom, ascending
    has_k = degree >= k  # [N]
    slot = torch.where(has_k, start + (k - 1), torch.zeros_like(start))  # [N]
    if sorted_lengths.shape[0] == 0:
        return torch.full((num_atoms,), float("inf"), dtype=lengths.dtype, device=lengths.device)
    kth = sorted_lengths[slot]  # [N]
    return torch.where(has_k, kth, torch.full_like(kth, float("inf")))


def nearest_neighbor_edges(
    lengths: Tensor, sender: Tensor, receiver: Tensor, kth: Tensor, tolerance: float
) -> Tuple[Tensor, Tensor]:
    """The edges of the undirected k-NN graph: (kept [E'] edge indices, multiplicity [E'],
    2 for an atom's own images, else 1). kth [N] from `kth_neighbor_distance`."""
    threshold = torch.maximum(kth[sender], kth[receiver]) + tolerance  # [E]
    kept = torch.nonzero(lengths.detach() <= threshold).squeeze(-1)  # [E']
    self_image = sender[kept] == receiver[kept]  # [E']
    multiplicity = self_image.to(lengths.dtype) + 1.0  # [E']
    return kept, multiplicity


def lattice_self_connections(
    cell: Tensor, pbc: Tensor, batch: Tensor, kth: Tensor, r_max: float, tolerance: float
) -> Tuple[Tensor, Tensor]:
    """Matformer's lattice self-connections: (atom [L], vector [L, 3] Å), the edges i → i at
    ±a, ±b, ±c, ±(a+b), ±(a+c), ±(b+c) of each atom's structure, along periodic directions only,
    less those already among the atom's k nearest neighbours (length ≤ d_k(i) within r_max).
    Differentiable in the cell. cell [B, 3, 3], pbc [B, 3], batch [N], kth [N]."""
    # n of the lattice self-connections n·cell: a, b, c, a+b, a+c, b+c (and their negatives)
    half = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=cell.dtype, device=cell.device
    )  # [6, 3]
    shifts = torch.cat([half, -half], dim=0)  # [12, 3]
    vectors = torch.einsum("sk,bkx->bsx", shifts, cell)  # [B, 12, 3]
    along_pbc = ~((shifts != 0).unsqueeze(0) & ~pbc.unsqueeze(1)).any(dim=-1)  # [B, 12]
    lengths = torch.linalg.norm(vectors.detach(), dim=-1)  # [B, 12]
    atom_lengths = lengths[batch]  # [N, 12]
    in_knn = (atom_lengths <= kth.unsqueeze(-1) + tolerance) & (atom_lengths < r_max)  # [N, 12]
    keep = along_pbc[batch] & ~in_knn  # [N, 12]
    index = torch.nonzero(keep)  # [L, 2]: (atom, which shift)
    atom = index[:, 0]  # [L]
    return atom, vectors[batch[atom], index[:, 1]]  # [L], [L, 3]
