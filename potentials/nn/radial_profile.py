"""Equiformer's radial network (`RadialProfile` of the Equiformer code, Liao & Smidt 2023):
edge radial basis → per-edge tensor-product weights.

    h = SiLU(LayerNorm(W_k h + b_k))     for each hidden width in `fc_neurons`
    w = W_out h + offset                  (no bias on W_out; a learned offset instead)

Unlike `radial.radial_mlp` (NequIP/MACE: no biases, no normalisation), the hidden layers carry
biases and a layer norm, so the weights are not zero where the basis vanishes: models using it
multiply their edge messages by the cutoff envelope themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RadialProfile(nn.Module):
    """forward(edge_radial [E, num_basis]) -> [E, num_weights]."""

    def __init__(self, num_basis: int, fc_neurons: list[int], num_weights: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = num_basis
        for hidden in fc_neurons:
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, num_weights, bias=False))
        self.net = nn.Sequential(*layers)
        bound = 1.0 / width**0.5
        self.offset = nn.Parameter(torch.empty(num_weights).uniform_(-bound, bound))
        self.num_weights = num_weights

    def forward(self, edge_radial: Tensor) -> Tensor:
        return self.net(edge_radial) + self.offset
