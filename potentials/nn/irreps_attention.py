"""Equivariant graph attention on irreps features (Equiformer, Liao & Smidt, ICLR 2023, sec. 3.3,
fig. 1(c); `GraphAttention` of the Equiformer code).

For an edge from neighbour i (sender) to atom j (receiver), features x, edge harmonics
Y(r̂_ij) and radial basis B(r_ij):

    m_ij = L_src(x_i) + L_dst(x_j)                                   merge both ends (linear)
    non-linear messages (nonlinear_message=True):
        h_ij = L(DTP_{R(B)}(m_ij, Y))                                depth-wise TP, radial weights
        a_ij = L_α(h_ij)                     [H, c]                  invariant part → attention
        v_ij = L_v(DTP_w(Gate(h_ij), Y))     [H, irreps_head]        second depth-wise TP, shared w
    linear messages (nonlinear_message=False):
        [a_ij, v_ij] = L(DTP_{R(B)}(m_ij, Y))
    z_ij^h = a^h · SmoothLeakyReLU(a_ij^h)                           MLP attention (per head h)
    α_ij^h = f(r_ij) e^{z_ij^h} / Σ_k f(r_kj) e^{z_kj^h}             softmax over j's neighbours
    y_j = L_proj( concat_h Σ_i f(r_ij) α_ij^h v_ij^h )

f is the cutoff envelope: it weights the softmax (a neighbour enters and leaves the softmax
smoothly) and the message (an atom's last neighbour leaving its sum vanishes smoothly). The
original has f ≡ 1 inside the cutoff, which makes the energy jump when a neighbour crosses it.
The depth-wise tensor products ("uvu": one weight per channel and path) are the shared
`EdgeConvolution`, so every convolution backend applies; their outputs keep all irreps of the
target plus 0e, as in Equiformer.
"""

from __future__ import annotations

import math

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.convolution import EdgeConvolution
from equimd.potentials.nn.edge_softmax import edge_softmax
from equimd.potentials.nn.gate import FastGate
from equimd.potentials.nn.linear import linear
from equimd.potentials.nn.radial_profile import RadialProfile
from equimd.potentials.nn.scatter import scatter_sum


def smooth_leaky_relu(x: Tensor, negative_slope: float = 0.2) -> Tensor:
    """(1+s)/2 · x + (1−s)/2 · x · (2σ(x) − 1): a smooth leaky ReLU (Equiformer eq. 4)."""
    return 0.5 * (1.0 + negative_slope) * x + 0.5 * (1.0 - negative_slope) * x * (
        2.0 * torch.sigmoid(x) - 1.0
    )


def swish_gate(irreps_out: o3.Irreps) -> nn.Module:
    """Equiformer's gate: SiLU on the even scalars, every other irrep copy × σ(own 0e gate).

    Returns the module; `module.irreps_in` (scalars + gates + gated) is what the layer before it
    must produce, `module.irreps_out` what it gives.
    """
    irreps_out = o3.Irreps(irreps_out)
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir == o3.Irrep("0e")]).simplify()
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir != o3.Irrep("0e")]).simplify()
    silu = torch.nn.functional.silu
    if gated.num_irreps == 0:
        return e3nn_nn.Activation(scalars, [silu])
    gates = o3.Irreps([(mul, "0e") for mul, _ in gated]).simplify()
    return FastGate(e3nn_nn.Gate(scalars, [silu], gates, [torch.sigmoid], gated))


def sort_even_first(irreps: o3.Irreps) -> o3.Irreps:
    """irreps sorted by l, even before odd within an l, and simplified (Equiformer's order)."""
    ordered = sorted(o3.Irreps(irreps), key=lambda mul_ir: (mul_ir.ir.l, -mul_ir.ir.p))
    return o3.Irreps(ordered).simplify()


def log_envelope(envelope: Tensor) -> Tensor:
    """log f, with −10⁴ where f ≤ 0 (rounding at the cutoff): finite value and gradient."""
    positive = envelope > 0.0
    safe = torch.where(positive, envelope, torch.ones_like(envelope))
    return torch.where(positive, torch.log(safe), torch.full_like(envelope, -1.0e4))


class NonlinearMessage(nn.Module):
    """(m_ij, Y, B) -> (a_ij [E, H·c], v_ij [E, irreps_heads.dim]): two depth-wise TPs + gate."""

    def __init__(
        self,
        irreps_pre_attn: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_heads: o3.Irreps,
        num_alpha: int,
        num_basis: int,
        fc_neurons: list[int],
    ) -> None:
        super().__init__()
        self.gate = swish_gate(irreps_pre_attn)
        self.tp = EdgeConvolution(irreps_pre_attn, irreps_sh, irreps_pre_attn + o3.Irreps("0e"))
        self.radial = RadialProfile(num_basis, fc_neurons, self.tp.weight_numel)
        self.alpha_linear = linear(self.tp.irreps_out, o3.Irreps(f"{num_alpha}x0e"), biases=True)
        self.value_linear_in = linear(self.tp.irreps_out, self.gate.irreps_in, biases=True)
        self.value_tp = EdgeConvolution(
            self.gate.irreps_out, irreps_sh, irreps_heads + o3.Irreps("0e")
        )
        # the second TP's weights are shared by all edges (no radial dependence)
        self.value_tp_weight = nn.Parameter(torch.randn(1, self.value_tp.weight_numel))
        self.value_linear_out = linear(self.value_tp.irreps_out, irreps_heads, biases=True)

    def forward(
        self, message: Tensor, edge_sh: Tensor, edge_radial: Tensor
    ) -> tuple[Tensor, Tensor]:
        hidden = self.tp(message, edge_sh, self.radial(edge_radial))  # [E, tp.irreps_out]
        alpha = self.alpha_linear(hidden)  # [E, H·c]
        value = self.gate(self.value_linear_in(hidden))  # [E, irreps_pre_attn]
        shared = self.value_tp_weight.expand(value.shape[0], -1)
        value = self.value_linear_out(self.value_tp(value, edge_sh, shared))  # [E, heads]
        return alpha, value


class LinearMessage(nn.Module):
    """(m_ij, Y, B) -> (a_ij [E, H·c], v_ij [E, irreps_heads.dim]): one depth-wise TP + linear."""

    def __init__(
        self,
        irreps_pre_attn: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_heads: o3.Irreps,
        num_alpha: int,
        num_basis: int,
        fc_neurons: list[int],
    ) -> None:
        super().__init__()
        irreps_alpha = o3.Irreps(f"{num_alpha}x0e")
        self.tp = EdgeConvolution(irreps_pre_attn, irreps_sh, irreps_heads + irreps_alpha)
        self.radial = RadialProfile(num_basis, fc_neurons, self.tp.weight_numel)
        self.linear = linear(self.tp.irreps_out, irreps_alpha + irreps_heads, biases=True)
        self.num_alpha = num_alpha
        self.heads_dim = irreps_heads.dim

    def forward(
        self, message: Tensor, edge_sh: Tensor, edge_radial: Tensor
    ) -> tuple[Tensor, Tensor]:
        hidden = self.linear(self.tp(message, edge_sh, self.radial(edge_radial)))
        return hidden.narrow(1, 0, self.num_alpha), hidden.narrow(1, self.num_alpha, self.heads_dim)


class GraphAttention(nn.Module):
    """Equivariant graph attention (module docstring).

    forward(node_features [N, irreps_node_input.dim], edge_sh [E, irreps_sh.dim],
            edge_radial [E, num_basis], edge_envelope [E], sender [E], receiver [E])
        -> [N, irreps_node_output.dim]
    irreps_head: the irreps of one head (its 0e count is the attention MLP width c); the heads
    together are irreps_head × num_heads. irreps_pre_attn: the merged message m_ij (default:
    irreps_node_input). fc_neurons: hidden widths of the radial networks.
    """

    def __init__(
        self,
        irreps_node_input: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_node_output: o3.Irreps,
        num_basis: int,
        fc_neurons: list[int],
        irreps_head: o3.Irreps,
        num_heads: int,
        irreps_pre_attn: o3.Irreps | None = None,
        nonlinear_message: bool = True,
        alpha_drop: float = 0.0,
    ) -> None:
        super().__init__()
        irreps_node_input = o3.Irreps(irreps_node_input)
        irreps_pre_attn = o3.Irreps(irreps_pre_attn or irreps_node_input)
        irreps_head = o3.Irreps(irreps_head)
        num_alpha_head = sum(mul for mul, ir in irreps_head if ir == o3.Irrep("0e"))
        if num_alpha_head == 0:
            raise ValueError(f"irreps_head {irreps_head} needs 0e channels for the attention")
        self.irreps_heads = sort_even_first(
            o3.Irreps([(mul * num_heads, ir) for mul, ir in irreps_head])
        )
        self.num_heads = num_heads
        self.num_alpha_head = num_alpha_head
        self.merge_src = linear(irreps_node_input, irreps_pre_attn, biases=True)
        self.merge_dst = linear(irreps_node_input, irreps_pre_attn)
        message = NonlinearMessage if nonlinear_message else LinearMessage
        self.message = message(
            irreps_pre_attn,
            o3.Irreps(irreps_sh),
            self.irreps_heads,
            num_alpha_head * num_heads,
            num_basis,
            fc_neurons,
        )
        # a^h: [H, c], Glorot-uniform as in Equiformer (after GATv2)
        bound = math.sqrt(6.0 / (num_heads + num_alpha_head))
        self.alpha_dot = nn.Parameter(
            torch.empty(num_heads, num_alpha_head).uniform_(-bound, bound)
        )
        self.alpha_dropout = nn.Dropout(alpha_drop)
        self.proj = linear(self.irreps_heads, irreps_node_output, biases=True)
        # head of each value column: copy c of a block of mul·H copies belongs to head c // mul
        mul_per_head: dict[o3.Irrep, int] = {}
        for mul, ir in irreps_head:
            mul_per_head[ir] = mul_per_head.get(ir, 0) + mul
        heads: list[int] = []
        for mul_all, ir in self.irreps_heads:
            heads += [copy // mul_per_head[ir] for copy in range(mul_all) for _ in range(ir.dim)]
        self.register_buffer("head_of_column", torch.tensor(heads, dtype=torch.long), False)

    def forward(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        edge_radial: Tensor,
        edge_envelope: Tensor,
        sender: Tensor,
        receiver: Tensor,
    ) -> Tensor:
        num_nodes = node_features.shape[0]
        message = self.merge_src(node_features).index_select(0, sender) + self.merge_dst(
            node_features
        ).index_select(0, receiver)  # [E, irreps_pre_attn] m_ij
        alpha, value = self.message(message, edge_sh, edge_radial)  # [E, H·c], [E, heads]
        alpha = smooth_leaky_relu(alpha).reshape(-1, self.num_heads, self.num_alpha_head)
        logits = (alpha * self.alpha_dot).sum(dim=-1)  # [E, H] z_ij
        logits = logits + log_envelope(edge_envelope).unsqueeze(-1)
        attention = edge_softmax(logits, receiver, num_nodes)  # [E, H] α_ij
        attention = self.alpha_dropout(attention) * edge_envelope.unsqueeze(-1)
        weighted = value * attention.index_select(1, self.head_of_column)  # [E, heads]
        aggregated = scatter_sum(weighted, receiver, num_nodes, keep_source=False)  # [N, heads]
        return self.proj(aggregated)  # [N, irreps_node_output]
