"""Local frames for the frame-based invariant models (GNN-LF, ClofNet, ComENet), built so that
energies stay smooth and finite at the degenerate geometries MD visits.

A frame model projects vectors onto per-atom (or per-edge) axes built from the neighbours. The
textbook constructions normalise those axes (v / |v|) and pick "the nearest neighbour" (argmin):
both break at degeneracies. Here:

* **Soft normalisation.** `smooth_normalize(v, ε) = v / sqrt(|v|² + ε²)`: equal to v/|v| up to
  O(ε²/|v|²) when |v| ≫ ε, and going to zero smoothly (with bounded derivatives) as v → 0. An axis
  that becomes undefined (collinear neighbours, a single neighbour, a linear molecule, an atom
  without neighbours) therefore shrinks to zero instead of jumping or producing 0/0: every
  projection on it fades out continuously.
* **Soft reference neighbours** (`SoftReferenceNeighbours`, the smooth stand-in for ComENet's
  nearest / second-nearest neighbour f_i, s_i). With u(r) the polynomial cutoff envelope and w a
  width (Å), for the neighbours k of atom i:

      g_ik = u(r_ik) · exp(−r_ik / w − m_i)               m_i = max_k(−r_ik / w), no gradient
      p_ik = g_ik / (Σ_k g_ik + δ)                         soft nearest       (→ one-hot argmin)
      q_ik = h_ik / (Σ_k h_ik + δ),  h_ik ∝ g_ik (1 − p_ik)²   soft second nearest (→ one-hot 2nd)
      f_i = Σ_k p_ik r_ik,   s_i = Σ_k q_ik r_ik            r_ik = x_k − x_i (Å)

  In h_ik, 1 − p_ik is taken as Σ_{k'≠k} g_ik' / Σ_k' g_ik' (without δ, which would cap how
  strongly the nearest neighbour is excluded). m_i (and the like shift of h_ik, whose largest
  term is 1) only keeps the exponentials in range: it enters the result through δ = 1e-12
  alone, for any width. As
  w → 0 with distinct distances, f_i and s_i become the vectors to the nearest and second-nearest
  neighbours (the paper's rule); when two neighbours are (nearly) equidistant, both get the same
  weight and f_i moves continuously between them as they swap (the hard argmin jumps). A
  neighbour crossing the cutoff enters with weight u(r) → 0. Tie-breaking rule: none is needed,
  equidistant neighbours share the weight equally.
* **Frame from two references** (`frame_from_references`): e_z = ŝn(f), e_y = ŝn(e_z × ŝn(s)),
  e_x = e_y × e_z (rows of a [N, 3, 3] tensor). e_y is a cross product of two polar vectors, so
  projections on it change sign under a reflection: frames built this way are SE(3), not O(3).
* **Learned vector frames** (`vector_frame`, GNN-LF): F un-normalised vectors per atom,
  v_i = Σ_k w_ik r̂_ik with learned edge weights w_ik ∈ R^F; degenerate frames are simply small.

Everything is TorchScript/AOTInductor-safe: no data-dependent branches, scatters through
`equimd.potentials.nn.scatter`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from equimd.potentials.nn.radial import PolynomialCutoff
from equimd.potentials.nn.scatter import scatter_sum


def _largest_per_atom(logits: Tensor, centers: Tensor, num_nodes: int) -> Tensor:
    """max_k logits_ik per atom [N], without gradient (0 for an atom without edges): a shift that
    keeps exponentials in range and cancels in the normalised weights (up to δ)."""
    lowest = torch.full((num_nodes,), -torch.inf, dtype=logits.dtype, device=logits.device)
    largest = lowest.scatter_reduce(0, centers, logits.detach(), reduce="amax", include_self=True)
    return torch.where(torch.isfinite(largest), largest, torch.zeros_like(largest))


def smooth_normalize(vectors: Tensor, eps: float) -> Tensor:
    """v / sqrt(|v|² + ε²): [..., 3] → [..., 3], |result| < 1, → 0 smoothly at v = 0."""
    return vectors / torch.sqrt((vectors * vectors).sum(dim=-1, keepdim=True) + eps * eps)


def frame_from_references(
    first: Tensor, second: Tensor, eps_length: float, eps_angle: float
) -> Tensor:
    """Soft orthonormal frame [N, 3, 3] (rows e_x, e_y, e_z) from two reference vectors [N, 3] Å.

    e_z = ŝn(first) (ε = eps_length Å), e_y = ŝn(e_z × ŝn(second)) (dimensionless ε = eps_angle),
    e_x = e_y × e_z. Degenerate references give shorter (ultimately zero) axes, never NaN.
    """
    e_z = smooth_normalize(first, eps_length)  # [N, 3]
    e_y = smooth_normalize(
        torch.cross(e_z, smooth_normalize(second, eps_length), dim=-1), eps_angle
    )
    e_x = torch.cross(e_y, e_z, dim=-1)
    return torch.stack([e_x, e_y, e_z], dim=1)  # [N, 3 axes, 3]


def project_on_frames(frames: Tensor, vectors: Tensor) -> Tensor:
    """Components of `vectors` [E, 3] on `frames` [E, 3, 3] (rows are axes): [E, 3]."""
    return (frames * vectors.unsqueeze(1)).sum(dim=-1)


def vector_frame(
    edge_weights: Tensor, unit_vectors: Tensor, centers: Tensor, num_nodes: int
) -> Tensor:
    """GNN-LF frame v_i = Σ_k w_ik ⊗ r̂_ik: edge_weights [E, F], unit_vectors [E, 3] → [N, 3, F]."""
    return scatter_sum(unit_vectors.unsqueeze(-1) * edge_weights.unsqueeze(1), centers, num_nodes)


def smooth_dihedral(
    axis: Tensor, first: Tensor, second: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """Soft (cos τ, sin τ) [E] of the dihedral between `first` and `second` [E, 3] about the unit
    `axis` [E, 3]: n1 = ŝn(axis × ŝn(first)), n2 = ŝn(axis × ŝn(second)) (dimensionless ε),
    cos = n1·n2, sin = (n1 × n2)·axis. Both fade to 0 where either plane is undefined."""
    n_first = smooth_normalize(torch.cross(axis, smooth_normalize(first, eps), dim=-1), eps)
    n_second = smooth_normalize(torch.cross(axis, smooth_normalize(second, eps), dim=-1), eps)
    cosine = (n_first * n_second).sum(dim=-1)
    sine = (torch.cross(n_first, n_second, dim=-1) * axis).sum(dim=-1)
    return cosine, sine


class SoftReferenceNeighbours(nn.Module):
    """Smooth nearest / second-nearest neighbour vectors of every atom (module docstring).

    forward(lengths [E] Å, vectors [E, 3] Å from the centre atom to the neighbour, centers [E],
    num_nodes) → (g [E] unnormalised weights, normalizers [N] = Σ_k g_ik + δ, log_shift [N] = m_i,
    first [N, 3] = f_i, second [N, 3] = s_i). `edge_weight_at` gives p for either end of an edge.
    """

    def __init__(
        self, r_max: float, width: float, polynomial_p: int = 6, delta: float = 1e-12
    ) -> None:
        super().__init__()
        if not width > 0.0:
            raise ValueError(f"reference width must be positive (Å), got {width}")
        self.width = float(width)
        self.delta = float(delta)
        self.cutoff = PolynomialCutoff(r_max, polynomial_p)

    def forward(
        self, lengths: Tensor, vectors: Tensor, centers: Tensor, num_nodes: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        logits = -lengths / self.width  # [E]
        envelope = self.cutoff(lengths)  # [E] u(r_ik)
        log_shift = _largest_per_atom(logits, centers, num_nodes)  # [N] m_i
        weights = envelope * torch.exp(logits - log_shift[centers])  # [E] g_ik ≤ 1
        sums = scatter_sum(weights, centers, num_nodes)  # [N] Σ_k g_ik
        normalizers = sums + self.delta  # [N]
        nearest = weights / normalizers[centers]  # [E] p_ik
        # (1 − p_ik) in the second-nearest weights is taken without δ, as Σ_{k' ≠ k} g_ik' / Σ_k' g_ik'
        # (δ would cap how strongly the nearest neighbour is excluded). The difference rounds to 0
        # for a neighbour far nearer than all others: the relative floor keeps the log finite and
        # still suppresses that neighbour by exp(−2·345) in float64 (exp(−2·34.5) in float32), so
        # the hard limit holds while r_2nd − r_1st < 690 w (69 w in float32); `tiny` keeps the log
        # and its gradient finite when everything underflows (one neighbour at the cutoff).
        floor, tiny = (1e-150, 1e-300) if lengths.dtype == torch.float64 else (1e-15, 1e-37)
        totals = sums[centers]  # [E]
        rest = torch.maximum(totals - weights, totals * floor) + tiny
        second_logits = logits + 2.0 * (torch.log(rest) - torch.log(totals + tiny))  # [E]
        second_shift = _largest_per_atom(second_logits, centers, num_nodes)
        second_weights = envelope * torch.exp(second_logits - second_shift[centers])  # [E]
        second = (
            second_weights / (scatter_sum(second_weights, centers, num_nodes) + self.delta)[centers]
        )
        first_vectors = scatter_sum(
            nearest.unsqueeze(-1) * vectors, centers, num_nodes
        )  # [N, 3] f_i
        second_vectors = scatter_sum(
            second.unsqueeze(-1) * vectors, centers, num_nodes
        )  # [N, 3] s_i
        return weights, normalizers, log_shift, first_vectors, second_vectors

    def edge_weight_at(
        self, lengths: Tensor, atoms: Tensor, normalizers: Tensor, log_shift: Tensor
    ) -> Tensor:
        """p [E]: the soft-nearest weight that an edge of length r has among the neighbours of
        `atoms` [E] (either end of the edge: the reverse edge has the same length)."""
        weights = self.cutoff(lengths) * torch.exp(-lengths / self.width - log_shift[atoms])
        return weights / normalizers[atoms]


__all__ = [
    "SoftReferenceNeighbours",
    "frame_from_references",
    "project_on_frames",
    "smooth_dihedral",
    "smooth_normalize",
    "vector_frame",
]
