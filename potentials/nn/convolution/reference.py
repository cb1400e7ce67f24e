"""The reference backend ("e3nn"): e3nn's `TensorProduct` with the "uvu" instructions."""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.edge_pairs import per_edge
from equimd.potentials.nn.scatter import scatter_sum


class E3nnConvolution(nn.Module):
    """e3nn's `TensorProduct`; `aggregate` = gather → forward → scatter-sum.

    paths: (i_in1, i_in2, i_out, path_weight) in e3nn's weight order; e3nn derives the same
    path weights from the instructions itself.
    """

    backend = "e3nn"

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        paths: list[tuple[int, int, int, float]],
    ) -> None:
        super().__init__()
        self.tp = o3.TensorProduct(
            irreps_node,
            irreps_sh,
            irreps_out,
            instructions=[(i_in1, i_in2, i_out, "uvu", True) for i_in1, i_in2, i_out, _ in paths],
            shared_weights=False,
            internal_weights=False,
        )


    def forward(self, node_features: Tensor, edge_sh: Tensor, weights: Tensor) -> Tensor:
        return self.tp(node_features, edge_sh, weights)

    @torch.jit.export
    def aggregate_radial(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        hidden: Tensor,
        last_weight: Tensor,
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
        paired: bool = False,
    ) -> Tensor:
        """`aggregate` with weights = hidden [E, h] @ last_weight [h, weight_numel]; with
        `paired`, the edges are in pair order and hidden has one row per pair (edge_pairs.py)."""
        weights = per_edge(torch.mm(hidden, last_weight), sender.shape[0])  # [E, weight_numel]
        return self.aggregate(node_features, edge_sh, weights, sender, receiver, num_nodes)

    @torch.jit.export
    def aggregate(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        weights: Tensor,
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
    ) -> Tensor:
        messages = self.tp(node_features.index_select(0, sender), edge_sh, weights)
        return scatter_sum(messages, receiver, num_nodes)
