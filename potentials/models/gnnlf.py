"""GNN-LF: a scalar message-passing network on projections onto learned local frames.

Wang & Zhang, "Graph Neural Network With Local Frame for Molecular Potential Energy Surface",
LoG 2022; reference code github.com/GraphPKU/GNN-LF (MD17 model). Notation:
atom i receives from its neighbours j; r̂_ij the unit vector from i to j, d_ij its length (Å).

    s_i      = Emb(z_i)                                                      embedding
    ρ_ij     = W_ef · e(d_ij) · u(d_ij)                                      radial filter [F]
    s_i     ← s_i + Σ_j ρ_ij ⊙ LN(Emb'(z_j))                                 neighbour embedding
    v_i      = Σ_j (φ(s_j) ⊙ ρ_ij) ⊗ r̂_ij          ∈ R^{3×F}                 local frame (s2v)
    P_ij     = [v_i · r̂_ij ,  (W_q v_j) · (W_k v_i)] · u(d_ij)                coordinate and
                                                                             frame-frame projections
    M_ij     = ρ_ij ⊙ MLP_dir(P_ij)                                           filter (shared by layers)
    s_i     ← s_i + Σ_j M_ij ⊙ φ_l(s_j),  l = 1..num_mplayer                 interactions
    e_i      = w_out · s_i                                                   readout
    E_i      = E0[Z_i] + scale · e_i + shift

e(d) is the Bessel basis, u(d) the polynomial cutoff envelope, φ = Linear → LayerNorm (no affine)
→ SiLU; every sum over neighbours is divided by avg_num_neighbors (1 = the paper).

Frames and degeneracy: the frame v_i is a sum of F learned combinations of neighbour
directions and is never normalised, so a degenerate frame (collinear or symmetric neighbours,
a single neighbour, CO2, an isolated atom) is simply short or zero: the projections P_ij are
smooth polynomials in the unit edge vectors, finite with finite gradients everywhere (this is
the paper's answer to frame degeneracy: the frame-frame projection keeps information when the
coordinate projection vanishes). No neighbour is selected, so there is no tie to break.

Equivariance: only inner products of polar vectors enter, so the energy is invariant under
rotations *and* reflections: O(3).

Deviations from the reference code: the Bessel basis × polynomial envelope of equimd replaces
the exp-normal basis and cosine cutoff, message sums are divided by avg_num_neighbors (1.0 by
default: identical), and the per-atom readout is the linear layer of the reference followed by
equimd's E0/scale/shift. Cost: O(E · F²) for the filter MLP and O(E · F) per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.local_frames import vector_frame
from equimd.potentials.nn.radial import RadialEmbedding
from equimd.potentials.nn.scatter import scatter_sum


def _feature_transform(hid_dim: int) -> nn.Module:
    """φ: Linear → LayerNorm (no affine) → SiLU (the reference's lin1 with ln and tail act)."""
    return nn.Sequential(
        nn.Linear(hid_dim, hid_dim), nn.LayerNorm(hid_dim, elementwise_affine=False), nn.SiLU()
    )


class FrameProjectionFilter(nn.Module):
    """The layer-shared filter M_ij [E, F] from the frames v [N, 3, F] and the edges."""

    def __init__(self, hid_dim: int) -> None:
        super().__init__()
        self.frame_transform = _feature_transform(hid_dim)  # φ in v_i = Σ φ(s_j) ρ_ij r̂_ij
        self.q_proj = nn.Linear(hid_dim, hid_dim, bias=False)
        self.k_proj = nn.Linear(hid_dim, hid_dim, bias=False)
        self.dir_proj = nn.Sequential(
            nn.Linear(2 * hid_dim, 2 * hid_dim), nn.SiLU(), nn.Linear(2 * hid_dim, hid_dim)
        )

    def forward(
        self,
        node_features: Tensor,
        radial_filter: Tensor,
        directions: Tensor,
        envelope: Tensor,
        centers: Tensor,
        neighbours: Tensor,
        inv_avg_num_neighbors: float,
    ) -> Tensor:
        num_nodes = node_features.shape[0]
        weights = self.frame_transform(node_features)[neighbours] * radial_filter  # [E, F]
        frames = (
            vector_frame(weights, directions, centers, num_nodes) * inv_avg_num_neighbors
        )  # [N, 3, F]
        coordinate_projection = (frames[centers] * directions.unsqueeze(-1)).sum(dim=1)  # [E, F]
        frame_projection = (self.q_proj(frames[neighbours]) * self.k_proj(frames[centers])).sum(
            dim=1
        )
        projections = (
            torch.cat([coordinate_projection, frame_projection], dim=-1) * envelope
        )  # [E, 2F]
        return radial_filter * self.dir_proj(projections)  # [E, F]


@register_model("gnnlf", test_hyperparameters={"hid_dim": 8, "num_mplayer": 2, "ef_dim": 4})
class GNNLF(Potential):
    """forward(graph) -> [N] eV. Hyperparameters named as in the reference code: hid_dim (F),
    num_mplayer (interactions), ef_dim (radial basis size); r_max in Å."""

    equivariance = "O(3)"

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        hid_dim: int = 256,
        num_mplayer: int = 6,
        ef_dim: int = 32,
        polynomial_p: int = 6,
        avg_num_neighbors: float = 1.0,
    ) -> None:
        super().__init__(
            species,
            r_max,
            dict(
                hid_dim=hid_dim,
                num_mplayer=num_mplayer,
                ef_dim=ef_dim,
                polynomial_p=polynomial_p,
                avg_num_neighbors=avg_num_neighbors,
            ),
        )
        self.inv_avg_num_neighbors = 1.0 / float(avg_num_neighbors)
        self.embedding = nn.Embedding(self.num_species, hid_dim)
        self.neighbour_embedding = nn.Embedding(self.num_species, hid_dim)
        self.neighbour_norm = nn.LayerNorm(hid_dim, elementwise_affine=False)
        self.radial_embedding = RadialEmbedding(r_max, ef_dim, polynomial_p)
        self.ef_proj = nn.Sequential(nn.Linear(ef_dim, hid_dim), nn.SiLU())
        self.filter = FrameProjectionFilter(hid_dim)
        self.interactions = nn.ModuleList([_feature_transform(hid_dim) for _ in range(num_mplayer)])
        self.output_module = nn.Linear(hid_dim, 1)

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        num_nodes = species.shape[0]
        neighbours, centers = graph.edge_index[0], graph.edge_index[1]  # messages j → i
        vectors = -edge_vectors(graph)  # [E, 3] Å, from the receiving atom i to its neighbour j
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)  # [E, 1]
        directions = vectors / lengths  # [E, 3] r̂_ij
        envelope = self.radial_embedding.cutoff_fn(lengths)  # [E, 1] u(d_ij)
        bessel = self.radial_embedding.bessel_fn(lengths)  # [E, ef_dim] e(d_ij)
        radial_filter = self.ef_proj(bessel) * envelope  # [E, F] ρ_ij

        features = self.embedding(species)  # [N, F] s_i
        neighbour_features = self.neighbour_norm(self.neighbour_embedding(species))  # [N, F]
        neighbour_sum = scatter_sum(
            radial_filter * neighbour_features[neighbours], centers, num_nodes
        )
        features = features + neighbour_sum * self.inv_avg_num_neighbors

        edge_filter = self.filter(
            features,
            radial_filter,
            directions,
            envelope,
            centers,
            neighbours,
            self.inv_avg_num_neighbors,
        )  # [E, F] M_ij
        for interaction in self.interactions:
            messages = edge_filter * interaction(features)[neighbours]  # [E, F]
            features = (
                features + scatter_sum(messages, centers, num_nodes) * self.inv_avg_num_neighbors
            )
        energy = self.output_module(features).squeeze(-1)  # [N]
        return self.scale_shift(energy, species)
