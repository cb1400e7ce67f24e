"""ComENet: complete and efficient message passing on 1-hop geometry (d, θ, φ, τ).

Wang, Liu, Lin, Liu, Ji, "ComENet: Towards Complete and Efficient Message Passing for 3D
Molecular Graphs", NeurIPS 2022 (arXiv:2206.08515); reference code: dive-into-graphs (DIG),
`dig.threedgraph.method.ComENet`. Notation: atom i receives from its neighbours j; r_ij = x_j − x_i
(Å), d_ij = |r_ij|, r̂_ij = r_ij / d_ij; f_i, s_i the nearest and second-nearest neighbour of i.

    local frame of i: z ∥ f_i, x–z plane ∋ s_i         (θ_ij, φ_ij) = polar/azimuthal angle of r̂_ij
    rotation angle τ_ij: dihedral about r̂_ij between i's reference (f_i, or s_i if f_i = j) and
                         j's reference (f_j, or s_j if f_j = i)
    F1_ij = e(d_ij) ⊗ Y_lm(θ_ij, φ_ij),  l < num_spherical          [num_radial · num_spherical²]
    F2_ij = e(d_ij) ⊗ [1, cos mτ_ij, sin mτ_ij]_{m=1..num_spherical−1}  [num_radial · (2 num_spherical−1)]
    x_i = SiLU(Emb(z_i))
    per interaction (DIG's SimpleInteractionBlock):
      x_i  = SiLU(W x_i)
      h_k,i = SiLU(W_k (W_rel,k Σ_j (A_k F_k,ij) ⊙ x_j / n̄ + b_k + W_root,k x_i)),  k = 1, 2
      h_i  = W_cat [h_1,i, h_2,i] + x_i;   h_i ← SiLU(W h_i) + h_i  (num_output_layers times)
      x_i  = W_final LayerNorm(h_i)
    e_i = w_out · SiLU(W ... SiLU(W x_i)),   E_i = E0[Z_i] + scale · e_i + shift

A_k is DIG's two-layer linear map without bias (so F ∝ the cutoff envelope reaches every
message), e(d) the Bessel basis × polynomial envelope, n̄ = avg_num_neighbors.

Changes from the paper and DIG, all for MD (a smooth, local, extensive energy):

* **Smooth reference neighbours.** argmin selection of f_i, s_i jumps when two neighbours swap
  order (the energy is discontinuous). f_i, s_i are replaced by the soft-min weighted vectors of
  `equimd.potentials.nn.local_frames.SoftReferenceNeighbours` (width `reference_width`, Å): they
  equal the paper's vectors when the neighbour distances differ by many widths, and interpolate
  continuously through a swap (equidistant neighbours share the weight: that is the tie-breaking
  rule). The "f_i = j → use s_i" rule of τ becomes ref_i = f_i − p_ij r_ij + p_ij s_i with p_ij
  the soft weight of j among i's neighbours (the paper's rule when p_ij ∈ {0, 1}).
* **Smooth angles.** The frame axes are soft-normalised (ε = `frame_eps`), and the angle
  features are the polynomials Y_lm of the direction's frame components and cos mτ, sin mτ of the
  soft (cos τ, sin τ) of `smooth_dihedral`: no atan2, no branch. Where an angle is undefined
  (collinear neighbours, a single neighbour, CO2, an isolated atom) its features fade to zero
  continuously instead of being set arbitrarily. DIG folds φ and τ into [0, π] (τ < 0 → τ + π),
  which is discontinuous at τ = 0; the Fourier features here are smooth and keep τ's sign.
* **Local normalisation.** DIG's GraphNorm normalises over all atoms of a molecule (energies
  would be neither local nor extensive): replaced by a per-atom LayerNorm.
* **Radial basis.** equimd's Bessel basis with a polynomial envelope (DIG's spherical Bessel
  functions have no envelope: forces jump at the cutoff); one radial basis for all l, so the
  default `num_radial` is 16 where DIG's 3 are per l (3 radial functions alone leave the
  energy too smooth in the bond lengths to fit forces: docs/architectures/comenet.md).

Equivariance: φ and τ are signed (e_y = e_z × s is axial), so mirror images have different
energies: SE(3). Cost: O(N + E) geometry (soft references are sums over each atom's edges),
O(E · H · middle_channels) filters and O(N · H²) node updates per interaction.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.local_frames import (
    SoftReferenceNeighbours,
    frame_from_references,
    project_on_frames,
    smooth_dihedral,
)
from equimd.potentials.nn.radial import RadialEmbedding
from equimd.potentials.nn.scatter import scatter_sum


def _outer(radial: Tensor, angular: Tensor) -> Tensor:
    """[E, R] ⊗ [E, A] → [E, R · A] (radial index slow)."""
    return (radial.unsqueeze(-1) * angular.unsqueeze(1)).flatten(1)


def fourier_features(cosine: Tensor, sine: Tensor, num_harmonics: int) -> Tensor:
    """[1, Re z^m, Im z^m]_{m=1..num_harmonics} of z = cos τ + i sin τ: [E] → [E, 2M + 1]
    (cos mτ, sin mτ on the unit circle; polynomials, so smooth where |z| < 1 too)."""
    real, imaginary = torch.ones_like(cosine), torch.zeros_like(cosine)
    features = [real]
    for _ in range(num_harmonics):
        real, imaginary = real * cosine - imaginary * sine, real * sine + imaginary * cosine
        features.append(real)
        features.append(imaginary)
    return torch.stack(features, dim=-1)


class ComENetGeometry(nn.Module):
    """Edge features F1 [E, R·L²] (d, θ, φ) and F2 [E, R·(2L−1)] (d, τ) of ComENet."""

    def __init__(
        self,
        r_max: float,
        num_radial: int,
        num_spherical: int,
        reference_width: float,
        frame_eps: float,
        polynomial_p: int,
    ) -> None:
        super().__init__()
        self.frame_eps = float(frame_eps)
        self.num_harmonics = num_spherical - 1
        self.references = SoftReferenceNeighbours(r_max, reference_width, polynomial_p)
        self.radial_embedding = RadialEmbedding(r_max, num_radial, polynomial_p)
        self.spherical_harmonics = o3.SphericalHarmonics(
            list(range(num_spherical)), normalize=False, normalization="component"
        )

    def forward(
        self, vectors: Tensor, centers: Tensor, neighbours: Tensor, num_nodes: int
    ) -> tuple[Tensor, Tensor]:
        lengths = torch.linalg.norm(vectors, dim=-1)  # [E] Å
        directions = vectors / lengths.unsqueeze(-1)  # [E, 3] r̂_ij
        weights, normalizers, log_shift, first, second = self.references(
            lengths, vectors, centers, num_nodes
        )
        frames = frame_from_references(first, second, self.frame_eps, self.frame_eps)  # [N, 3, 3]
        local_direction = project_on_frames(
            frames[centers], directions
        )  # [E, 3] (x, y, z) in i's frame
        radial = self.radial_embedding(lengths.unsqueeze(-1))  # [E, R]
        feature1 = _outer(radial, self.spherical_harmonics(local_direction))  # [E, R·L²]

        weight_at_center = weights / normalizers[centers]  # [E] p_ij: j among i's neighbours
        weight_at_neighbour = self.references.edge_weight_at(
            lengths, neighbours, normalizers, log_shift
        )  # p_ji
        center_reference = first[centers] + weight_at_center.unsqueeze(-1) * (
            second[centers] - vectors
        )
        neighbour_reference = first[neighbours] + weight_at_neighbour.unsqueeze(-1) * (
            second[neighbours] + vectors
        )
        cosine, sine = smooth_dihedral(
            directions, center_reference, neighbour_reference, self.frame_eps
        )  # [E] τ
        feature2 = _outer(
            radial, fourier_features(cosine, sine, self.num_harmonics)
        )  # [E, R·(2L−1)]
        return feature1, feature2


class TwoLayerLinear(nn.Module):
    """DIG's TwoLayerLinear (no bias, no activation): [E, in] → [E, out]."""

    def __init__(self, dim_in: int, middle: int, dim_out: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim_in, middle, bias=False)
        self.lin2 = nn.Linear(middle, dim_out, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        return self.lin2(self.lin1(features))


class EdgeGraphConv(nn.Module):
    """out_i = W_rel Σ_j w_ij ⊙ x_j / n̄ + b + W_root x_i (DIG's EdgeGraphConv, add aggregation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lin_rel = nn.Linear(channels, channels)
        self.lin_root = nn.Linear(channels, channels, bias=False)

    def forward(
        self,
        features: Tensor,
        edge_weights: Tensor,
        centers: Tensor,
        neighbours: Tensor,
        inv_avg_num_neighbors: float,
    ) -> Tensor:
        aggregated = scatter_sum(
            edge_weights * features[neighbours], centers, features.shape[0]
        )  # [N, H]
        return self.lin_rel(aggregated * inv_avg_num_neighbors) + self.lin_root(features)


class SimpleInteractionBlock(nn.Module):
    """One ComENet interaction (module docstring), LayerNorm in place of GraphNorm."""

    def __init__(
        self,
        hidden_channels: int,
        middle_channels: int,
        feature1_dim: int,
        feature2_dim: int,
        num_output_layers: int,
    ) -> None:
        super().__init__()
        self.lin = nn.Linear(hidden_channels, hidden_channels)
        self.lin_feature1 = TwoLayerLinear(feature1_dim, middle_channels, hidden_channels)
        self.lin_feature2 = TwoLayerLinear(feature2_dim, middle_channels, hidden_channels)
        self.conv1 = EdgeGraphConv(hidden_channels)
        self.conv2 = EdgeGraphConv(hidden_channels)
        self.lin1 = nn.Linear(hidden_channels, hidden_channels)
        self.lin2 = nn.Linear(hidden_channels, hidden_channels)
        self.lin_cat = nn.Linear(2 * hidden_channels, hidden_channels)
        self.lins = nn.ModuleList(
            [nn.Linear(hidden_channels, hidden_channels) for _ in range(num_output_layers)]
        )
        self.norm = nn.LayerNorm(hidden_channels)
        self.final = nn.Linear(hidden_channels, hidden_channels)
        self.act = nn.SiLU()

    def forward(
        self,
        features: Tensor,
        feature1: Tensor,
        feature2: Tensor,
        centers: Tensor,
        neighbours: Tensor,
        inv_avg_num_neighbors: float,
    ) -> Tensor:
        features = self.act(self.lin(features))  # [N, H]
        weights1 = self.lin_feature1(feature1)  # [E, H]
        weights2 = self.lin_feature2(feature2)  # [E, H]
        h1 = self.act(
            self.lin1(self.conv1(features, weights1, centers, neighbours, inv_avg_num_neighbors))
        )
        h2 = self.act(
            self.lin2(self.conv2(features, weights2, centers, neighbours, inv_avg_num_neighbors))
        )
        h = self.lin_cat(torch.cat([h1, h2], dim=-1)) + features
        for lin in self.lins:
            h = self.act(lin(h)) + h
        return self.final(self.norm(h))


@register_model(
    "comenet",
    test_hyperparameters={
        "hidden_channels": 8,
        "middle_channels": 4,
        "num_radial": 3,
        "num_spherical": 3,
        "num_layers": 2,
        "num_output_layers": 1,
        "reference_width": 0.25,
        "frame_eps": 0.25,
    },
)
class ComENet(Potential):
    """forward(graph) -> [N] eV. Hyperparameter names as DIG's ComENet (cutoff → r_max, Å);
    reference_width (Å) the soft-min width of the reference neighbours; frame_eps the soft
    normalisation (Å for reference vectors, dimensionless for axes)."""

    equivariance = "SE(3)"

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        hidden_channels: int = 256,
        middle_channels: int = 64,
        num_radial: int = 16,
        num_spherical: int = 2,
        num_layers: int = 4,
        num_output_layers: int = 3,
        reference_width: float = 0.5,
        frame_eps: float = 0.1,
        polynomial_p: int = 6,
        avg_num_neighbors: float = 1.0,
    ) -> None:
        super().__init__(
            species,
            r_max,
            dict(
                hidden_channels=hidden_channels,
                middle_channels=middle_channels,
                num_radial=num_radial,
                num_spherical=num_spherical,
                num_layers=num_layers,
                num_output_layers=num_output_layers,
                reference_width=reference_width,
                frame_eps=frame_eps,
                polynomial_p=polynomial_p,
                avg_num_neighbors=avg_num_neighbors,
            ),
        )
        self.inv_avg_num_neighbors = 1.0 / float(avg_num_neighbors)
        self.geometry = ComENetGeometry(
            r_max, num_radial, num_spherical, reference_width, frame_eps, polynomial_p
        )
        self.embedding = nn.Embedding(self.num_species, hidden_channels)
        feature1_dim, feature2_dim = (
            num_radial * num_spherical**2,
            num_radial * (2 * num_spherical - 1),
        )
        self.interaction_blocks = nn.ModuleList(
            [
                SimpleInteractionBlock(
                    hidden_channels, middle_channels, feature1_dim, feature2_dim, num_output_layers
                )
                for _ in range(num_layers)
            ]
        )
        self.lins = nn.ModuleList(
            [nn.Linear(hidden_channels, hidden_channels) for _ in range(num_output_layers)]
        )
        self.lin_out = nn.Linear(hidden_channels, 1)
        self.act = nn.SiLU()

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        num_nodes = species.shape[0]
        neighbours, centers = graph.edge_index[0], graph.edge_index[1]  # messages j → i
        vectors = -edge_vectors(graph)  # [E, 3] Å, r_ij from the receiving atom i to j
        feature1, feature2 = self.geometry(vectors, centers, neighbours, num_nodes)

        features = self.act(self.embedding(species))  # [N, H]
        for block in self.interaction_blocks:
            features = block(
                features, feature1, feature2, centers, neighbours, self.inv_avg_num_neighbors
            )
        for lin in self.lins:
            features = self.act(lin(features))
        energy = self.lin_out(features).squeeze(-1)  # [N]
        return self.scale_shift(energy, species)
