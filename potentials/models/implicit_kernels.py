"""Steerable point-convolution potential with implicit kernels (Zhdanov, Hoffmann & Cesa,
"Implicit Convolutional Kernels for Steerable CNNs", NeurIPS 2023; reference code
maxxxzdn/implicit-steerable-kernels, its QM9 model `SteerableCNN_QM9`), as a local, smooth
potential.

Implicit kernel (`equimd.potentials.nn.implicit_kernel`): for an edge j → i with r_ij and
invariant attributes z_ij = [φ(|r_ij|), onehot(Z_i), onehot(Z_j), (h_i⁰, h_j⁰)],
    K(r_ij, z_ij) = Σ_J f_J(z_ij) · C Y_J(r̂_ij)        f: MLP of invariants, C: Clebsch-Gordan
    Conv(h)_i = Σ_j f_cut(r_ij) K(r_ij, z_ij) h_j / √⟨n⟩ + b
Embedding:
    h_i = W onehot(Z_i)                                 (scalars; l > 0 channels start at zero)
Residual blocks t = 1..num_layers (the paper's ResidualBlock):
    y = σ(Conv₁(h)) ;  h ← σ(Conv₂(y) + h)              σ: gated non-linearity
Invariant map and readout (the paper's InvariantMap and final MLP, applied per atom):
    s_i = Conv_inv(h)_i  (num_inv_features scalars)
    e_i = W₃ SiLU(W₂ SiLU(s_i) + b₂) + b₃ ;   E_i = E0[Z_i] + scale · e_i + shift
Hidden features: num_features × (0e + 1o + 2e + ... up to L); kernels use Y_J for J ≤ 2L.

Deviations from the paper, for molecular dynamics (docs/architectures/implicit_kernels.md):
the kernel MLP acts on invariants and the angular part is the closed form f · Y_J (the paper's
escnn MLP acts on r itself, but every O(3)-equivariant map of one vector is of this form);
the paper's Gaussian radial shell becomes the polynomial envelope f_cut (the kernel vanishes
smoothly at r_max); the gated non-linearity replaces escnn's Fourier ELU on the sphere, SiLU
the ELU of the kernel MLP and readout; no batch normalisation (it couples atoms across the
batch); the readout MLP is applied to each atom and the energies summed (mean pooling is not
extensive); the message sum is divided by √⟨n⟩.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph, edge_vectors
from equimd.potentials.models.base import Potential, register_model
from equimd.potentials.nn.gate import equivariant_gate
from equimd.potentials.nn.implicit_kernel import ImplicitKernelConvolution
from equimd.potentials.nn.linear import linear
from equimd.potentials.nn.radial import BesselBasis, PolynomialCutoff
from equimd.potentials.nn.species import one_hot


def sphere_irreps(num_features: int, L: int) -> o3.Irreps:  # noqa: N803 - the paper's name
    """num_features × (0e + 1o + ... up to L): band-limited functions on the sphere."""
    return (o3.Irreps.spherical_harmonics(L) * num_features).sort().irreps.simplify()


class ImplicitConv(nn.Module):
    """One implicit-kernel convolution, building its kernel invariants (edge radial features,
    species pair and, if `node_scalars`, the scalar channels of both atoms' features)."""

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_edge_invariants: int,
        node_scalars: bool,
        kernel_n_layers: int,
        kernel_n_channels: int,
        avg_num_neighbors: float,
    ) -> None:
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        scalar_columns = [
            column
            for (_, ir), block in zip(irreps_in, irreps_in.slices(), strict=True)
            if ir == o3.Irrep("0e") and node_scalars
            for column in range(block.start, block.stop)
        ]
        self.register_buffer(
            "scalar_columns", torch.tensor(scalar_columns, dtype=torch.long), persistent=False
        )
        self.node_scalars = bool(scalar_columns)
        self.convolution = ImplicitKernelConvolution(
            irreps_in,
            irreps_out,
            irreps_sh,
            num_edge_invariants + 2 * len(scalar_columns),
            kernel_n_layers,
            kernel_n_channels,
            avg_num_neighbors,
        )
        self.irreps_out = self.convolution.irreps_out

    def forward(
        self,
        features: Tensor,
        edge_sh: Tensor,
        edge_invariants: Tensor,
        edge_cutoff: Tensor,
        sender: Tensor,
        receiver: Tensor,
    ) -> Tensor:
        if self.node_scalars:  # resolved when scripting
            scalars = features.index_select(1, self.scalar_columns)  # [N, S]
            edge_invariants = torch.cat(
                [edge_invariants, scalars[receiver], scalars[sender]], dim=-1
            )  # [E, B + 2·species + 2·S]
        return self.convolution(features, edge_sh, edge_invariants, edge_cutoff, sender, receiver)


class ResidualBlock(nn.Module):
    """h ← σ(Conv₂(σ(Conv₁(h))) + h): two implicit convolutions and gates; the gates of the
    second gate come from Conv₂ alone (h is added to its scalars and gated channels)."""

    def __init__(self, irreps_hidden: o3.Irreps, irreps_sh: o3.Irreps, **conv_options) -> None:
        super().__init__()
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e")
        self.gate_1 = equivariant_gate(scalars, gates, gated)
        self.gate_2 = equivariant_gate(scalars, gates, gated)
        irreps_gate = self.gate_1.irreps_in
        self.conv_1 = ImplicitConv(irreps_hidden, irreps_gate, irreps_sh, **conv_options)
        self.conv_2 = ImplicitConv(irreps_hidden, irreps_gate, irreps_sh, **conv_options)
        # h [N, hidden] @ residual_projection → the gate layout (scalars, zero gates, gated)
        layout = {
            ir: block for (_, ir), block in zip(irreps_gate, irreps_gate.slices(), strict=True)
        }
        projection = torch.zeros(irreps_hidden.dim, irreps_gate.dim)
        for (mul, ir), block in zip(irreps_hidden, irreps_hidden.slices(), strict=True):
            start = layout[ir].start  # scalars first in their block, gates after them
            for offset in range(mul * ir.dim):
                projection[block.start + offset, start + offset] = 1.0
        self.register_buffer("residual_projection", projection, persistent=False)

    def forward(
        self,
        features: Tensor,
        edge_sh: Tensor,
        edge_invariants: Tensor,
        edge_cutoff: Tensor,
        sender: Tensor,
        receiver: Tensor,
    ) -> Tensor:
        edges = (edge_sh, edge_invariants, edge_cutoff, sender, receiver)
        hidden = self.gate_1(self.conv_1(features, *edges))  # [N, hidden]
        out = self.conv_2(hidden, *edges) + torch.mm(features, self.residual_projection)
        return self.gate_2(out)  # [N, hidden]


@register_model(
    "implicit_kernels",
    test_hyperparameters=dict(
        num_features=3,
        L=1,
        num_layers=2,
        num_inv_features=4,
        kernel_n_layers=2,
        kernel_n_channels=6,
        num_bessel=4,
        avg_num_neighbors=8.0,
    ),
)
class ImplicitKernelPotential(Potential):
    """Implicit-steerable-kernel point-convolution potential. Hyperparameter names follow the
    reference's QM9 script (num_layers, num_features, num_inv_features, L, kernel_n_layers,
    kernel_n_channels)."""

    # polar vectors, Y_J of parity (-1)^J, parity-respecting CG paths and gates: rotations and
    # reflections
    equivariance = "O(3)"

    def __init__(
        self,
        species: list[int],
        r_max: float = 5.0,
        num_layers: int = 4,
        num_features: int = 8,
        num_inv_features: int = 32,
        L: int = 1,  # noqa: N803 - the reference's name
        kernel_n_layers: int = 3,
        kernel_n_channels: int = 8,
        kernel_node_scalars: bool = True,
        num_bessel: int = 8,
        polynomial_p: int = 6,
        avg_num_neighbors: float = 1.0,
    ) -> None:
        """num_features: channels per degree l ≤ L of the hidden features; num_inv_features:
        scalars of the invariant map; kernel_n_layers/kernel_n_channels: depth and width of
        each kernel MLP; kernel_node_scalars: the kernels also see the scalar features of both
        atoms (besides φ(r) and the species pair); r_max Å; num_bessel/polynomial_p: radial
        features and envelope; avg_num_neighbors: normaliser (√) of the message sums."""
        super().__init__(
            species,
            r_max,
            dict(
                num_layers=num_layers,
                num_features=num_features,
                num_inv_features=num_inv_features,
                L=L,
                kernel_n_layers=kernel_n_layers,
                kernel_n_channels=kernel_n_channels,
                kernel_node_scalars=kernel_node_scalars,
                num_bessel=num_bessel,
                polynomial_p=polynomial_p,
                avg_num_neighbors=float(avg_num_neighbors),
            ),
        )
        irreps_hidden = sphere_irreps(num_features, L)
        irreps_sh = o3.Irreps.spherical_harmonics(2 * L)
        self.irreps_hidden = irreps_hidden
        self.spherical_harmonics = o3.SphericalHarmonics(
            irreps_sh, normalize=True, normalization="component"
        )
        self.radial_basis = BesselBasis(r_max, num_bessel)
        self.cutoff = PolynomialCutoff(r_max, polynomial_p)
        conv_options = dict(
            num_edge_invariants=num_bessel + 2 * self.num_species,
            node_scalars=kernel_node_scalars,
            kernel_n_layers=kernel_n_layers,
            kernel_n_channels=kernel_n_channels,
            avg_num_neighbors=avg_num_neighbors,
        )
        self.embedding = linear(o3.Irreps(f"{self.num_species}x0e"), irreps_hidden)
        self.residual_blocks = nn.ModuleList(
            ResidualBlock(irreps_hidden, irreps_sh, **conv_options) for _ in range(num_layers)
        )
        irreps_invariant = o3.Irreps(f"{num_inv_features}x0e")
        self.invariant_map = ImplicitConv(
            irreps_hidden, irreps_invariant, irreps_sh, **conv_options
        )
        self.readout = nn.Sequential(
            nn.SiLU(),
            nn.Linear(num_inv_features, num_inv_features),
            nn.SiLU(),
            nn.Linear(num_inv_features, 1),
        )

    def forward(self, graph: AtomicGraph) -> Tensor:
        species = self.species_index(graph.numbers)  # [N]
        dtype = graph.positions.dtype
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        vectors = edge_vectors(graph)  # [E, 3] Å, sender → receiver
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)  # [E, 1] Å
        edge_cutoff = self.cutoff(lengths)  # [E, 1]
        node_attrs = one_hot(species, self.num_species, dtype)  # [N, S]
        edge_invariants = torch.cat(
            [self.radial_basis(lengths), node_attrs[receiver], node_attrs[sender]], dim=-1
        )  # [E, num_bessel + 2S]
        edge_sh = self.spherical_harmonics(vectors)  # [E, (2L+1)²]
        edges = (edge_sh, edge_invariants, edge_cutoff, sender, receiver)

        features = self.embedding(node_attrs)  # [N, hidden]
        for block in self.residual_blocks:
            features = block(features, *edges)  # [N, hidden]
        invariants = self.invariant_map(features, *edges)  # [N, num_inv_features]
        energy = self.readout(invariants).squeeze(-1)  # [N]
        return self.scale_shift(energy, species)
