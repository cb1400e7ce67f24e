"""ClofNet: message passing on scalars from complete local (edge) frames, with vector states
updated by frame back-transformation.

Du, Zhang, Du, Meng, Chen, Zheng, Shao, Liu, "SE(3) Equivariant Graph Neural Networks with Complete
Local Frames", ICML 2022 (arXiv:2110.14811); reference code github.com/mouthful/ClofNet.
Notation: atom i receives from its neighbours j; r_ij = x_j − x_i (Å), d_ij = |r_ij|;
ŝn(v) = v / sqrt(|v|² + ε²) (`equimd.potentials.nn.local_frames.smooth_normalize`).

    h_i⁰ = Emb(z_i)                                                     scalar state  [F]
    c_i⁰ = (1/n̄) Σ_j u(d_ij) r_ij                                       vector state  [3] Å
    per layer l = 1..n_layers:
      a_ij = r̂_ij,  b_ij = ŝn(a_ij × ŝn(c_i)),  c_ij = a_ij × b_ij       complete edge frame
      σ_ij = [c_i · (a, b, c)_ij ,  c_j · (a, b, c)_ij]   ∈ R^6          scalarisation
      m_ij = φ_e(h_i, h_j, e(d_ij), σ_ij) · u(d_ij)                     edge message  [F]
      c_i ← c_i + (1/n̄) Σ_j [a_ij b_ij c_ij] φ_x(m_ij) u(d_ij)           back-transformation
      h_i ← h_i + φ_h(h_i, (1/n̄) Σ_j m_ij)                              node update
    e_i = φ_out(h_i),   E_i = E0[Z_i] + scale · e_i + shift

e(d) Bessel basis × polynomial cutoff envelope u(d), n̄ = avg_num_neighbors, φ two-layer SiLU MLPs.

Deviation from the paper (made local for MD): the paper's frame uses coordinates relative to the
molecule's centre of mass, b_ij ∝ x_i × x_j, which is neither local nor defined for periodic
cells. Here each atom carries a vector state c_i that starts as its (envelope-weighted) offset to
the local centroid of its neighbours, so "x_i, x_j relative to a common centre" becomes
"−c_i and r_ij − c_i relative to atom i's local centroid", whose cross product is r_ij × c_i:
the same frame construction, relative to a local centre, and updated layer by layer as the
paper updates coordinates. Outputs are energies only (forces come from their gradient).

Frame degeneracy: b_ij is soft-normalised, so when c_i is zero (an isolated or symmetric
environment, CO2's carbon) or parallel to r_ij (collinear neighbours, a single neighbour), b_ij
and c_ij shrink smoothly to zero and the projections on them fade out: energies, forces and
training gradients stay finite and continuous. No neighbour is selected: no tie to break.

Equivariance: b_ij is a cross product of polar vectors (axial), so σ_ij contains triple products
(c_j · b_ij) that change sign under a reflection: the energy is invariant under rotations and
translations only, SE(3). Cost: O(E · F²) per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.local_frames import project_on_frames, smooth_normalize
from equimd.potentials.nn.radial import RadialEmbedding
from equimd.potentials.nn.scatter import scatter_sum


def _mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.SiLU(), nn.Linear(hidden, dim_out))


def complete_edge_frames(directions: Tensor, vector_states: Tensor, eps: float) -> Tensor:
    """Edge frames [E, 3, 3] (rows a, b, c) from unit edge vectors [E, 3] and the centre atoms'
    vector states [E, 3] Å: a = r̂, b = ŝn(a × ŝn(c_i)), c = a × b (ε = eps, Å then 1)."""
    normal = smooth_normalize(
        torch.cross(directions, smooth_normalize(vector_states, eps), dim=-1), eps
    )
    return torch.stack([directions, normal, torch.cross(directions, normal, dim=-1)], dim=1)


class ClofLayer(nn.Module):
    """One ClofNet layer: scalarise on edge frames, message, back-transform, update."""

    def __init__(
        self, hidden_nf: int, num_radial: int, frame_eps: float, update_vectors: bool
    ) -> None:
        super().__init__()
        self.frame_eps = frame_eps
        self.update_vectors = update_vectors  # False in the last layer: nothing reads c_i after it
        self.edge_mlp = _mlp(2 * hidden_nf + num_radial + 6, hidden_nf, hidden_nf)  # φ_e
        self.coord_mlp = _mlp(hidden_nf, hidden_nf, 3) if update_vectors else nn.Identity()  # φ_x
        self.node_mlp = _mlp(2 * hidden_nf, hidden_nf, hidden_nf)  # φ_h

    def forward(
        self,
        scalars: Tensor,
        vector_states: Tensor,
        radial: Tensor,
        envelope: Tensor,
        directions: Tensor,
        centers: Tensor,
        neighbours: Tensor,
        inv_avg_num_neighbors: float,
    ) -> tuple[Tensor, Tensor]:
        num_nodes = scalars.shape[0]
        frames = complete_edge_frames(
            directions, vector_states[centers], self.frame_eps
        )  # [E, 3, 3]
        invariants = torch.cat(
            [
                project_on_frames(frames, vector_states[centers]),
                project_on_frames(frames, vector_states[neighbours]),
            ],
            dim=-1,
        )  # [E, 6] σ_ij
        edge_input = torch.cat([scalars[centers], scalars[neighbours], radial, invariants], dim=-1)
        messages = self.edge_mlp(edge_input) * envelope  # [E, F] m_ij
        if self.update_vectors:
            coefficients = self.coord_mlp(messages) * envelope  # [E, 3], → 0 at the cutoff
            displacements = (coefficients.unsqueeze(-1) * frames).sum(dim=1)  # [E, 3] Å
            vector_states = (
                vector_states
                + scatter_sum(displacements, centers, num_nodes) * inv_avg_num_neighbors
            )
        aggregated = scatter_sum(messages, centers, num_nodes) * inv_avg_num_neighbors  # [N, F]
        scalars = scalars + self.node_mlp(torch.cat([scalars, aggregated], dim=-1))
        return scalars, vector_states


@register_model(
    "clofnet",
    test_hyperparameters={"hidden_nf": 8, "n_layers": 2, "num_radial": 4, "frame_eps": 0.5},
)
class ClofNet(Potential):
    """forward(graph) -> [N] eV. hidden_nf and n_layers as in the reference code; num_radial
    Bessel functions; frame_eps (Å for vector states, dimensionless for axes) the soft
    normalisation of the frame axes; avg_num_neighbors n̄."""

    equivariance = "SE(3)"

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        hidden_nf: int = 64,
        n_layers: int = 4,
        num_radial: int = 8,
        polynomial_p: int = 6,
        frame_eps: float = 0.1,
        avg_num_neighbors: float = 1.0,
    ) -> None:
        super().__init__(
            species,
            r_max,
            dict(
                hidden_nf=hidden_nf,
                n_layers=n_layers,
                num_radial=num_radial,
                polynomial_p=polynomial_p,
                frame_eps=frame_eps,
                avg_num_neighbors=avg_num_neighbors,
            ),
        )
        self.inv_avg_num_neighbors = 1.0 / float(avg_num_neighbors)
        self.embedding = nn.Embedding(self.num_species, hidden_nf)
        self.radial_embedding = RadialEmbedding(r_max, num_radial, polynomial_p)
        self.layers = nn.ModuleList(
            [
                ClofLayer(hidden_nf, num_radial, float(frame_eps), layer + 1 < n_layers)
                for layer in range(n_layers)
            ]
        )
        self.readout = _mlp(hidden_nf, hidden_nf, 1)

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        num_nodes = species.shape[0]
        neighbours, centers = graph.edge_index[0], graph.edge_index[1]  # messages j → i
        vectors = -edge_vectors(graph)  # [E, 3] Å, r_ij from the receiving atom i to j
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)  # [E, 1]
        directions = vectors / lengths  # [E, 3]
        envelope = self.radial_embedding.cutoff_fn(lengths)  # [E, 1]
        radial = self.radial_embedding(lengths)  # [E, num_radial]

        scalars = self.embedding(species)  # [N, F] h_i
        vector_states = (
            scatter_sum(envelope * vectors, centers, num_nodes) * self.inv_avg_num_neighbors
        )  # [N, 3] c_i
        for layer in self.layers:
            scalars, vector_states = layer(
                scalars,
                vector_states,
                radial,
                envelope,
                directions,
                centers,
                neighbours,
                self.inv_avg_num_neighbors,
            )
        energy = self.readout(scalars).squeeze(-1)  # [N]
        return self.scale_shift(energy, species)
