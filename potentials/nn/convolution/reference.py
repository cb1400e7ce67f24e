"""The reference backend ("e3nn"): e3nn's `TensorProduct` with the "uvu" instructions."""

from __future__ import annotations

from typing import List

import torch
from e3nn import o3
from torch import Tensor, nn

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

        self.weight_group_sizes: List[int] = [self.tp.weight_numel]

    def forward(self, node_features: Tensor, edge_sh: Tensor, weights: Tensor) -> Tensor:
        return self.tp(node_features, edge_sh, weights)

    @torch.jit.export
    def aggregate_groups(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        weight_groups: List[Tensor],
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
    ) -> Tensor:
        """`aggregate` with the weights as column blocks (e3nn's order), joined."""
        weights = weight_groups[0] if len(weight_groups) == 1 else torch.cat(weight_groups, dim=1)
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
