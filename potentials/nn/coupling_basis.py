"""The coupling bases of MACE's product basis (Batatia et al. 2022, eq. 10): generalized
Clebsch–Gordan bases U^{Lν} in mace-torch's layout and sign convention, their folding onto the
symmetric monomials of the input components, and the pruning of monomials that cannot couple.
`contraction.SymmetricContraction` evaluates the product basis with them.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
from e3nn import o3
from torch import Tensor

# Sorted (l1 ≤ l2 ≤ l3) triples where e3nn 0.4.4's o3.wigner_3j = −(e3nn 0.6's), measured for
# every triple with l ≤ 11 (e3nn 0.4.4 has no symbols beyond l = 11). Both versions obey the
# same permutation rule (odd permutation: factor (−1)^(l1+l2+l3)), so the sign of any
# permutation of a triple follows from its sorted form.
E3NN_044_FLIPPED_TRIPLES = frozenset(
    [(1, ell, ell) for ell in range(2, 12)]
    + [(3, ell, ell + 2) for ell in range(4, 10)]
    + [(4, ell, ell + 1) for ell in range(4, 11)]
    + [(5, 5, 5), (5, 6, 10), (5, 7, 11)]
    + [(5, ell, ell) for ell in range(6, 12)]
    + [(6, 6, 9), (6, 7, 10), (6, 8, 11), (7, 7, 9), (7, 8, 10), (7, 9, 11)]
    + [(8, 8, 9), (8, 9, 10), (8, 10, 11), (9, 9, 9), (9, 10, 10), (9, 11, 11)]
)


@functools.cache
def _wigner_3j_float64(l1: int, l2: int, l3: int) -> Tensor:
    symbol = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
    if tuple(sorted((l1, l2, l3))) in E3NN_044_FLIPPED_TRIPLES:
        symbol = -symbol
    return symbol


def wigner_3j(l1: int, l2: int, l3: int) -> Tensor:
    """Real Wigner 3j symbol [2l1+1, 2l2+1, 2l3+1] (float64) in e3nn 0.4.4's sign convention."""
    return _wigner_3j_float64(l1, l2, l3).clone()




def _natural_parity_irreps(lmax: int) -> list[o3.Irrep]:
    return [o3.Irrep(ell, (-1) ** ell) for ell in range(lmax + 1)]


def _coupling_paths(
    irreps: o3.Irreps,
    order: int,
    keep: o3.Irrep | None = None,
    filter_ir_mid: list[o3.Irrep] | None = None,
) -> list[tuple[o3.Irrep, np.ndarray]]:
    """All couplings of `order` copies of `irreps` (left to right), component normalised.

    Returns (irrep, C) pairs, C: float64 [ir.dim, d, ..., d] (order times d = irreps.dim),
    ordered as mace does: by irrep (stable), each irrep's paths in the order they are
    generated (left-path order, then input irrep, then output l). `keep` drops other irreps
    at the last step only (intermediate couplings are all needed); `filter_ir_mid` restricts
    every step (mace does this for order 4). NumPy: thousands of tiny products, which torch's
    thread pool makes slow on a busy machine.
    """
    dim = irreps.dim
    paths = []
    if order == 1:
        identity = np.eye(dim)
        for slice_, (mul, ir) in zip(irreps.slices(), irreps, strict=True):
            for u in range(mul):
                start = slice_.start + u * ir.dim
                paths.append((ir, identity[start : start + ir.dim]))
    else:
        for ir_left, c_left in _coupling_paths(irreps, order - 1, None, filter_ir_mid):
            c_left = c_left.reshape(ir_left.dim, -1)  # [left, d^(order-1)]
            for slice_, (mul, ir) in zip(irreps.slices(), irreps, strict=True):
                for ir_out in ir_left * ir:
                    if filter_ir_mid is not None and ir_out not in filter_ir_mid:
                        continue
                    if keep is not None and ir_out != keep:
                        continue
                    # component normalisation: sqrt(2 l_out + 1) per coupling
                    cg = wigner_3j(ir_out.l, ir_left.l, ir.l).numpy() * math.sqrt(ir_out.dim)
                    coupled = np.einsum("lp,olr->opr", c_left, cg)  # [out, d^(order-1), r]
                    for u in range(mul):
                        full = np.zeros((ir_out.dim, c_left.shape[1], dim))
                        start = slice_.start + u * ir.dim
                        full[:, :, start : start + ir.dim] = coupled
                        paths.append((ir_out, full.reshape(ir_out.dim, *([dim] * order))))
    if keep is not None:
        paths = [(ir, c) for ir, c in paths if ir == keep]
    return sorted(paths, key=lambda path: path[0])  # stable: keeps generation order per irrep


def coupling_basis(irreps_in: o3.Irreps | str, ir_out: o3.Irrep | str, order: int) -> Tensor:
    """Generalized CG basis U for `order` copies of `irreps_in` coupled to `ir_out`.

    Returns float64 [ir_out.dim, d, ..., d, num_paths] (order times d = irreps_in.dim): the
    layout of mace-torch's `U_matrix_<order>` with the leading axis kept for scalars too (mace
    squeezes it). num_paths may be 0.
    """
    irreps_in, ir_out = o3.Irreps(irreps_in), o3.Irrep(ir_out)
    filter_ir_mid = _natural_parity_irreps(11) if order == 4 else None  # as mace-torch
    paths = _coupling_paths(irreps_in, order, keep=ir_out, filter_ir_mid=filter_ir_mid)
    shape = (ir_out.dim, *([irreps_in.dim] * order))
    if not paths:
        return torch.zeros(*shape, 0, dtype=torch.float64)
    return torch.from_numpy(np.stack([c for _, c in paths], axis=-1))


def monomials(dim: int, order: int) -> Tensor:
    """Sorted index multisets a_1 ≤ ... ≤ a_order, lexicographic: [C(dim+order-1, order), order]."""
    combos = list(itertools.combinations_with_replacement(range(dim), order))
    return torch.tensor(combos, dtype=torch.long).reshape(len(combos), order)


def fold_coupling_basis(basis: Tensor, dim: int, order: int) -> Tensor:
    """U [M, d, ..., d, K] (or mace's [d, ..., d, K] for scalars) → [n_monomials, M, K].

    Sums U over all orderings of each index multiset, so that
    Σ_{a_1..a_ν} U_{m a k} Π A_{a_j} = Σ_n folded_{n m k} Π_{a ∈ monomial n} A_a.
    """
    if basis.dim() == order + 1:
        basis = basis.unsqueeze(0)
    num_m, num_paths = basis.shape[0], basis.shape[-1]
    grids = torch.meshgrid(*([torch.arange(dim)] * order), indexing="ij")
    tuples = torch.stack([g.reshape(-1) for g in grids], dim=1).sort(dim=1).values
    monomial_codes = _monomial_codes(monomials(dim, order), dim)  # increasing
    index = torch.searchsorted(monomial_codes, _monomial_codes(tuples, dim))
    flat = basis.reshape(num_m, dim**order, num_paths).transpose(0, 1)
    flat = flat.reshape(dim**order, num_m * num_paths)
    folded = torch.zeros(len(monomial_codes), num_m * num_paths, dtype=basis.dtype)
    folded.index_add_(0, index, flat)
    return folded.reshape(len(monomial_codes), num_m, num_paths)


def _monomial_codes(monomial: Tensor, dim: int) -> Tensor:
    """Base-dim code of each sorted index tuple [n, order] → [n], increasing with row order."""
    order = monomial.shape[1]
    return (monomial * dim ** torch.arange(order - 1, -1, -1)).sum(1)


def prune_monomials(folded_bases: list[Tensor], dim: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Keep only the monomials that matter: rows of the folded bases that are not zero, and
    the lower-order monomials they are built from.

    folded_bases[ν-1]: [C(d+ν-1, ν), columns_ν] over all monomials of order ν. Returns, per
    order, (parent, last, basis): kept monomial n of order ν = kept monomial parent[n] of order
    ν-1 times component last[n]; basis [n_kept, columns_ν]. Order 1 keeps all d components.
    Most monomials cannot couple to low-l outputs (parity and triangle rules): for
    0e+1o+2e+3o inputs and a 0e output 77 of 816 order-3 monomials remain.
    """
    correlation = len(folded_bases)
    kept: list[Tensor] = [torch.empty(0, dtype=torch.long)] * correlation
    required = torch.zeros(0, dtype=torch.long)  # rows of this order needed by the next
    for order in range(correlation, 0, -1):
        basis = folded_bases[order - 1]
        rows = torch.zeros(basis.shape[0], dtype=torch.bool)
        if order == 1:
            rows[:] = True
        elif basis.numel() > 0 and basis.abs().max() > 0:
            # folding cancels antisymmetric parts to rounding noise: a relative threshold
            rows = basis.abs().amax(dim=1) > 1e-12 * basis.abs().max()
        rows[required] = True
        kept[order - 1] = rows.nonzero().squeeze(1)
        if order > 1:
            current = monomials(dim, order)[kept[order - 1]]
            below = _monomial_codes(monomials(dim, order - 1), dim)
            required = torch.searchsorted(below, _monomial_codes(current[:, :-1], dim))
    out = []
    for order in range(1, correlation + 1):
        basis = folded_bases[order - 1][kept[order - 1]]
        if order == 1:
            parent = torch.zeros(0, dtype=torch.long)
            last = torch.arange(dim)
        else:
            current = monomials(dim, order)[kept[order - 1]]
            full_parent = torch.searchsorted(
                _monomial_codes(monomials(dim, order - 1), dim),
                _monomial_codes(current[:, :-1], dim),
            )
            parent = torch.searchsorted(kept[order - 2], full_parent)
            last = current[:, -1].clone()
        out.append((parent, last, basis))
    return out
