"""MACE's blocks (Batatia et al., NeurIPS 2022): interaction, equivariant product, readouts.

One MACE layer t maps node features h^(t) [N, irreps_node.dim] to h^(t+1):

    A_i   = W_lin · Σ_{j ∈ N(i)} R(r_ji) ⊙ (W_up h_j) ⊗ Y(r̂_ji) / avg_num_neighbors    (eq. 8-9)
    B_i   = SymmetricContraction(A_i, z_i)                     product basis, ν ≤ correlation (eq. 10)
    h_i'  = W_prod · B_i  (+ W_sc · (h_i ⊗ onehot(z_i)) in the residual variant)      (eq. 11)
    e_i^t = readout_t(h_i')                                     linear, or MLP in the last layer

The numbers are those of mace-torch's `RealAgnosticInteractionBlock`,
`RealAgnosticResidualInteractionBlock`, `EquivariantProductBasisBlock`, `LinearReadoutBlock`
and `NonLinearReadoutBlock` (same e3nn weight layouts, so mace-torch weights copy verbatim:
`equimd.potentials.models.mace_import`). The convolution is the shared `EdgeConvolution` (any
backend, chosen with `apply_convolution_backend`), the radial MLP the shared `radial_mlp`, the
product basis the shared `SymmetricContraction`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.contraction import SymmetricContraction
from equimd.potentials.nn.convolution import EdgeConvolution
from equimd.potentials.nn.edge_pairs import per_edge
from equimd.potentials.nn.radial import radial_mlp

# mace-torch's names, indexed by residual + 2 · density
INTERACTION_CLASSES = (
    "RealAgnosticInteractionBlock",
    "RealAgnosticResidualInteractionBlock",
    "RealAgnosticDensityInteractionBlock",
    "RealAgnosticDensityResidualInteractionBlock",
)
GATES = {"silu": torch.nn.functional.silu, "tanh": torch.tanh, "abs": torch.abs, None: None}


def interaction_irreps(num_features: int, max_ell: int, both_parities: bool = False) -> o3.Irreps:
    """Irreps of the messages A_i: num_features × (0e + 1o + 2e + ... up to max_ell), natural
    parity; with `both_parities` every l in both parities (0e + 0o + 1e + 1o + ...), sorted."""
    irreps = [
        (num_features, (ell, parity))
        for ell in range(max_ell + 1)
        for parity in ((1, -1) if both_parities else ((-1) ** ell,))
    ]
    return o3.Irreps(irreps).sort().irreps


class InteractionBlock(nn.Module):
    """Message A_i from the neighbours' features (mace-torch `RealAgnostic*InteractionBlock`).

    Non-residual (`residual=False`, mace's `RealAgnosticInteractionBlock`): the message is
    mixed with the element, A_i ← W_sc · (A_i ⊗ onehot(z_i)), and no self-connection is returned.
    `density=True` (`RealAgnosticDensity[Residual]InteractionBlock`): messages are normalised
    by 1 + Σ_j tanh(density_fn(R(r_ij)))² per receiver instead of avg_num_neighbors.
    Residual (`RealAgnosticResidualInteractionBlock`): the self-connection
    sc_i = W_sc · (h_i ⊗ onehot(z_i)) → irreps_skip is returned for the product block to add.

    forward(node_features [N, irreps_node.dim], node_attrs [N, num_elements] one-hot,
            edge_sh [E, irreps_sh.dim], edge_radial [E, num_radial] (Bessel × envelope),
            edge_index [2, E] (sender, receiver), edge_cutoff: optional [E, 1] envelope that
            multiplies the radial-MLP weights (mace's apply_cutoff=False))
        -> (message [N, irreps_target.dim], self_connection [N, irreps_skip.dim] or None)
    """

    def __init__(
        self,
        irreps_node: o3.Irreps | str,
        irreps_attrs: o3.Irreps | str,
        irreps_sh: o3.Irreps | str,
        irreps_target: o3.Irreps | str,
        irreps_skip: o3.Irreps | str,
        num_radial: int,
        radial_hidden: list[int],
        avg_num_neighbors: float,
        residual: bool,
        density: bool = False,
    ) -> None:
        super().__init__()
        self.irreps_node = o3.Irreps(irreps_node)
        self.irreps_target = o3.Irreps(irreps_target)
        irreps_attrs = o3.Irreps(irreps_attrs)
        self.residual = bool(residual)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.mace_class = INTERACTION_CLASSES[int(self.residual) + 2 * int(density)]
        # density-normalised variants (RealAgnosticDensity*): the message is divided by
        # 1 + Σ_j tanh(w · R(r_ij))², a learned neighbour count, instead of avg_num_neighbors
        self.density_fn: Optional[nn.Module] = radial_mlp(num_radial, [], 1) if density else None

        self.linear_up = o3.Linear(self.irreps_node, self.irreps_node)
        self.convolution = EdgeConvolution(self.irreps_node, o3.Irreps(irreps_sh), self.irreps_target)
        self.radial_weights = radial_mlp(
            num_radial, list(radial_hidden), self.convolution.weight_numel
        )
        # The convolution's outputs are sorted, not simplified (e.g. 64x0e+64x0e+64x1o+...);
        # simplified irreps have the same memory layout and the same flat weight layout.
        self.linear = o3.Linear(self.convolution.irreps_out.simplify(), self.irreps_target)
        if self.residual:
            self.irreps_skip = o3.Irreps(irreps_skip)
            self.skip_tp = o3.FullyConnectedTensorProduct(
                self.irreps_node, irreps_attrs, self.irreps_skip
            )
        else:
            self.irreps_skip = self.irreps_target
            self.skip_tp = o3.FullyConnectedTensorProduct(
                self.irreps_target, irreps_attrs, self.irreps_target
            )

    def forward(
        self,
        node_features: Tensor,
        node_attrs: Tensor,
        edge_sh: Tensor,
        edge_radial: Tensor,
        edge_index: Tensor,
        edge_cutoff: Optional[Tensor] = None,
        paired: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """edge_radial, edge_cutoff: per edge, or with `paired` per pair of the edges in pair
        order (`equimd.potentials.nn.edge_pairs`; edges 2p and 2p + 1 take row p)."""
        self_connection: Optional[Tensor] = None
        if self.residual:
            self_connection = self.skip_tp(node_features, node_attrs)
        features = self.linear_up(node_features)
        # the radial weights [E, weight_numel] = hidden @ last_weight, times the envelope (on
        # the MLP's last hidden layer: the same numbers); the convolution forms them per chunk
        hidden, last_weight = self.radial_weights.last_layer(edge_radial, edge_cutoff)
        message = self.convolution.aggregate_radial(
            features, edge_sh, hidden, last_weight, edge_index[0], edge_index[1],
            node_features.shape[0], paired,
        )
        density_fn = self.density_fn
        if density_fn is not None:
            edge_density = torch.tanh(density_fn(edge_radial) ** 2)  # [E or P, 1]
            if edge_cutoff is not None:
                edge_density = edge_density * edge_cutoff
            edge_density = per_edge(edge_density, edge_index.shape[1])  # [E, 1]
            density = torch.zeros(
                node_features.shape[0], 1, dtype=edge_density.dtype, device=edge_density.device
            ).index_add(0, edge_index[1], edge_density)
            message = self.linear(message) / (density + 1)
        else:
            message = self.linear(message) / self.avg_num_neighbors
        if not self.residual:
            message = self.skip_tp(message, node_attrs)
        return message, self_connection


class ProductBlock(nn.Module):
    """Equivariant product basis and update (mace-torch `EquivariantProductBasisBlock`).

    forward(message [N, irreps_in.dim], species [N] int64 element index,
            self_connection: optional [N, irreps_out.dim])
        -> h' = W · SymmetricContraction(message, species) (+ self_connection), [N, irreps_out.dim]
    """

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        correlation: int,
        num_elements: int,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.symmetric_contraction = SymmetricContraction(
            self.irreps_in, self.irreps_out, correlation, num_elements
        )
        self.linear = o3.Linear(self.irreps_out, self.irreps_out)

    def forward(
        self, message: Tensor, species: Tensor, self_connection: Optional[Tensor] = None
    ) -> Tensor:
        updated = self.linear(self.symmetric_contraction(message, species))
        if self_connection is not None:
            updated = updated + self_connection
        return updated


class LinearReadout(nn.Module):
    """e_i = W · h_i (scalar channels only): [N, irreps_in.dim] → [N] (mace `LinearReadoutBlock`)."""

    def __init__(self, irreps_in: o3.Irreps | str) -> None:
        super().__init__()
        self.linear = o3.Linear(o3.Irreps(irreps_in), o3.Irreps("1x0e"))

    def forward(self, node_features: Tensor) -> Tensor:
        return self.linear(node_features).squeeze(-1)


class NonLinearReadout(nn.Module):
    """e_i = W₂ · φ(W₁ · h_i): [N, irreps_in.dim] → [N] (mace `NonLinearReadoutBlock`).

    irreps_mlp: hidden scalars (mace's `MLP_irreps`, e.g. 16x0e); φ: `gate` (normalised to unit
    second moment, e3nn `Activation`).
    """

    def __init__(
        self, irreps_in: o3.Irreps | str, irreps_mlp: o3.Irreps | str, gate: Optional[str] = "silu"
    ) -> None:
        super().__init__()
        irreps_mlp = o3.Irreps(irreps_mlp)
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}; available: {list(GATES)}")
        self.linear_1 = o3.Linear(o3.Irreps(irreps_in), irreps_mlp)
        self.activation = e3nn_nn.Activation(irreps_mlp, [GATES[gate]] * len(irreps_mlp))
        self.linear_2 = o3.Linear(irreps_mlp, o3.Irreps("1x0e"))

    def forward(self, node_features: Tensor) -> Tensor:
        return self.linear_2(self.activation(self.linear_1(node_features))).squeeze(-1)
