"""Implicit steerable kernels and the point convolution that uses them (Zhdanov, Hoffmann &
Cesa, "Implicit Convolutional Kernels for Steerable CNNs", NeurIPS 2023, section 3).

A steerable kernel K: R³ × Z → Hom(V_in, V_out) must satisfy K(g·r, z) = ρ_out(g) K(r, z) ρ_in(g)⁻¹
for g ∈ O(3) (z: invariant edge/node attributes). The paper parameterises K implicitly by an
O(3)-equivariant MLP whose output lives in ρ_in* ⊗ ρ_out = ⊕_J V_J and is mapped to a matrix by
the change of basis (Clebsch-Gordan coefficients). An O(3)-equivariant map of one polar vector r
and invariants z into V_J is f_J(|r|, z) · Y_J(r̂) with J of parity (-1)^J (anything else is
zero), so the kernel is exactly

    K(r, z)_{(w, l_out), (u, l_in)} = Σ_J  α_path · f_{(l_in, J, l_out), u, w}(|r|, z) · C^{l_in J l_out} Y_J(r̂)

with f an ordinary MLP of the invariants (`kernel_mlp`) and C the Clebsch-Gordan coefficients;
every channel pair (u, w) and path has its own kernel function ("uvw"). The convolution is

    m_i = Σ_j f_cut(r_ij) K(r_ij, z_ij) h_j / √⟨n⟩ + b          (b on the 0e outputs)

evaluated as an e3nn tensor product of h_j with Y(r̂_ij) with per-edge weights f_cut · f (the
kernel matrix is never formed). α_path = √((2 l_out + 1) / fan_in) (e3nn's normalisation).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.scatter import scatter_sum


def kernel_mlp(
    num_invariants: int, kernel_n_layers: int, kernel_n_channels: int, num_weights: int
) -> nn.Sequential:
    """f: invariants [E, num_invariants] → kernel weights [E, num_weights]; `kernel_n_layers`
    linear layers (the paper's n_layers), `kernel_n_channels` wide, SiLU between them."""
    widths = [num_invariants] + [kernel_n_channels] * (kernel_n_layers - 1) + [num_weights]
    layers: list[nn.Module] = []
    for index in range(len(widths) - 1):
        if index > 0:
            layers.append(nn.SiLU())
        layers.append(nn.Linear(widths[index], widths[index + 1]))
    return nn.Sequential(*layers)


class ImplicitKernelConvolution(nn.Module):
    """Point convolution with an implicit steerable kernel (module docstring).

    features [N, irreps_in.dim], edge_sh [E, irreps_sh.dim], edge_invariants
    [E, num_invariants], edge_cutoff [E, 1], sender/receiver [E] → [N, irreps_out.dim].
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_invariants: int,
        kernel_n_layers: int,
        kernel_n_channels: int,
        avg_num_neighbors: float,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.irreps_sh = o3.Irreps(irreps_sh)
        instructions = [
            (i_in, i_sh, i_out, "uvw", True)
            for i_in, (_, ir_in) in enumerate(self.irreps_in)
            for i_sh, (_, ir_sh) in enumerate(self.irreps_sh)
            for i_out, (_, ir_out) in enumerate(self.irreps_out)
            if ir_out in ir_in * ir_sh
        ]
        reached = {i_out for _, _, i_out, _, _ in instructions}
        if len(reached) != len(self.irreps_out):
            raise ValueError(
                f"ImplicitKernelConvolution: {self.irreps_in} ⊗ {self.irreps_sh} cannot produce "
                f"every irrep of {self.irreps_out}"
            )
        self.tensor_product = o3.TensorProduct(
            self.irreps_in,
            self.irreps_sh,
            self.irreps_out,
            instructions,
            shared_weights=False,
            internal_weights=False,
        )
        self.kernel_mlp = kernel_mlp(
            num_invariants, kernel_n_layers, kernel_n_channels, self.tensor_product.weight_numel
        )
        bias_columns = [
            column
            for (_, ir), block in zip(self.irreps_out, self.irreps_out.slices(), strict=True)
            if ir == o3.Irrep("0e")
            for column in range(block.start, block.stop)
        ]
        projection = torch.zeros(len(bias_columns), self.irreps_out.dim)
        for row, column in enumerate(bias_columns):
            projection[row, column] = 1.0
        self.register_buffer("bias_projection", projection, persistent=False)
        self.bias = nn.Parameter(torch.zeros(len(bias_columns)))
        self.neighbor_normalization = float(avg_num_neighbors) ** -0.5

    def forward(
        self,
        features: Tensor,
        edge_sh: Tensor,
        edge_invariants: Tensor,
        edge_cutoff: Tensor,
        sender: Tensor,
        receiver: Tensor,
    ) -> Tensor:
        weights = self.kernel_mlp(edge_invariants) * edge_cutoff  # [E, weight_numel]
        messages = self.tensor_product(features[sender], edge_sh, weights)  # [E, irreps_out.dim]
        aggregated = scatter_sum(messages, receiver, features.shape[0])  # [N, irreps_out.dim]
        bias = torch.mm(self.bias.unsqueeze(0), self.bias_projection)  # [1, irreps_out.dim]
        return aggregated * self.neighbor_normalization + bias
