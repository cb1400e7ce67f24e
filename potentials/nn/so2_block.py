"""eSCN's SO(2) convolution of edge-frame coefficients (Passaro & Zitnick, ICML 2023, sec. 4).

In the frame of an edge (R r̂ = ŷ, `equimd.potentials.nn.wigner`), an SO(3)-equivariant
convolution with a filter symmetric about the edge becomes, order by order, an SO(2) one:
coefficients of order m (m = −l..l) only mix with orders ±m, and a rotation about the edge by
φ turns the pair (x_{+m}, x_{−m}) by mφ, i.e. multiplies the complex number x_{+m} + i x_{−m}
by e^{imφ}. The most general map commuting with that is a complex multiplication, with weights
that depend on the edge's invariants h_ij (distance, species):

    m = 0:  y_0 = W2_0 ( (W1_0 x_0) ⊙ SiLU(W_d0 h) )                (real; all l ≤ l_max)
    m > 0:  y_{+m} + i y_{−m} = (A_m + i B_m)(x_{+m} + i x_{−m}),
            A_m x = W2_r ( (W1_r x) ⊙ a ),  B_m x = W2_i ( (W1_i x) ⊙ b ),
            (a, b) = SiLU(W_dm h)                                    (l = m..l_max)

x_{±m} gathers the order-±m coefficients of every degree l and every channel (a vector of
(l_max − m + 1)·C), so the maps mix degrees and channels; orders |m| > m_max are dropped
(m-truncation). Names of the linear layers follow fairchem's `SO2Block` and `SO2Conv`.

Layout: x [E, K, C], K coefficients l-major (l = 0..l_max, m = −min(l, m_max)..min(l, m_max)),
as `equimd.potentials.nn.spherical_grid.coefficient_orders`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from equimd.potentials.nn.spherical_grid import coefficient_orders


def variance_preserving_(layer: nn.Linear) -> None:
    """Weights ~ N(0, 2 / fan_in): with the edge factor SiLU(W h) (~½ on average) between the
    two linear layers, a signal keeps its size through a convolution (torch's default, variance
    1 / (3 fan_in), shrinks it ~10× per convolution; fairchem's weights load over either)."""
    nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / layer.in_features))


class SO2OrderConvolution(nn.Module):
    """The complex multiplication for one order m > 0 (fairchem's `SO2Conv`).

    forward(x_m [E, 2, (l_max − m + 1)·C] (real, imaginary), edge_features [E, edge_channels])
    -> [E, 2, (l_max − m + 1)·C].
    """

    def __init__(self, num_coefficients: int, hidden_channels: int, edge_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.fc1_dist = nn.Linear(edge_channels, 2 * hidden_channels)
        self.fc1_r = nn.Linear(num_coefficients, hidden_channels, bias=False)
        self.fc2_r = nn.Linear(hidden_channels, num_coefficients, bias=False)
        self.fc1_i = nn.Linear(num_coefficients, hidden_channels, bias=False)
        self.fc2_i = nn.Linear(hidden_channels, num_coefficients, bias=False)
        for layer in (self.fc1_r, self.fc2_r, self.fc1_i, self.fc2_i):
            variance_preserving_(layer)

    def forward(self, x_m: Tensor, edge_features: Tensor) -> Tensor:
        radial = torch.nn.functional.silu(self.fc1_dist(edge_features))
        radial = radial.view(-1, 2, self.hidden_channels)  # [E, 2, H]: (a, b)
        real = self.fc2_r(self.fc1_r(x_m) * radial[:, 0:1, :])  # A_m x_{±m}  [E, 2, n·C]
        imaginary = self.fc2_i(self.fc1_i(x_m) * radial[:, 1:2, :])  # B_m x_{±m}
        return torch.stack(
            (real[:, 0] - imaginary[:, 1], real[:, 1] + imaginary[:, 0]), dim=1
        )  # [E, 2, n·C]


class SO2Block(nn.Module):
    """All orders m = 0..m_max of the SO(2) convolution (fairchem's `SO2Block`).

    forward(x [E, K, C] edge-frame coefficients, edge_features [E, edge_channels])
    -> [E, K, C].
    """

    def __init__(
        self, sphere_channels: int, hidden_channels: int, edge_channels: int, lmax: int, mmax: int
    ) -> None:
        super().__init__()
        self.sphere_channels = sphere_channels
        self.lmax, self.mmax = int(lmax), int(mmax)
        position = {lm: k for k, lm in enumerate(coefficient_orders(self.lmax, self.mmax))}
        # m-primary order: (l, 0) for all l, then per m: (l, +m), (l, −m) for l = m..l_max
        m_primary = [position[(degree, 0)] for degree in range(self.lmax + 1)]
        self.order_sizes = [self.lmax + 1]
        for m in range(1, self.mmax + 1):
            m_primary += [position[(degree, m)] for degree in range(m, self.lmax + 1)]
            m_primary += [position[(degree, -m)] for degree in range(m, self.lmax + 1)]
            self.order_sizes.append(2 * (self.lmax - m + 1))
        inverse = [0] * len(m_primary)
        for k, source in enumerate(m_primary):
            inverse[source] = k
        self.register_buffer("m_primary", torch.tensor(m_primary), persistent=False)
        self.register_buffer("l_primary", torch.tensor(inverse), persistent=False)

        num_m0 = (self.lmax + 1) * sphere_channels
        self.fc1_dist0 = nn.Linear(edge_channels, hidden_channels)
        self.fc1_m0 = nn.Linear(num_m0, hidden_channels, bias=False)
        self.fc2_m0 = nn.Linear(hidden_channels, num_m0, bias=False)
        variance_preserving_(self.fc1_m0)
        variance_preserving_(self.fc2_m0)
        self.so2_conv = nn.ModuleList(
            [
                SO2OrderConvolution(
                    (self.lmax - m + 1) * sphere_channels, hidden_channels, edge_channels
                )
                for m in range(1, self.mmax + 1)
            ]
        )

    def forward(self, x: Tensor, edge_features: Tensor) -> Tensor:
        num_edges, channels = x.shape[0], self.sphere_channels
        orders = torch.split(x.index_select(1, self.m_primary), self.order_sizes, dim=1)
        radial_0 = torch.nn.functional.silu(self.fc1_dist0(edge_features))  # [E, H]
        x_0 = self.fc1_m0(orders[0].reshape(num_edges, self.order_sizes[0] * channels))
        y_0 = self.fc2_m0(x_0 * radial_0)  # [E, (l_max+1)·C]
        outputs = [y_0.view(num_edges, self.order_sizes[0], channels)]
        for index, convolution in enumerate(self.so2_conv):
            size = self.order_sizes[index + 1]  # 2 (l_max − m + 1)
            x_m = orders[index + 1].reshape(num_edges, 2, size // 2 * channels)  # [E, 2, n·C]
            y_m = convolution(x_m, edge_features)
            outputs.append(y_m.view(num_edges, size, channels))  # [E, 2n, C]
        return torch.cat(outputs, dim=1).index_select(1, self.l_primary)  # [E, K, C]
