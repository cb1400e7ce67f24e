"""Exponential moving average of the model weights (Polyak averaging).

    θ̄ ← d θ̄ + (1 − d) θ,   d = min(decay, (1 + n) / (10 + n))   after the n-th update

The warm-up term keeps the early average from being dominated by the random initial weights.
Buffers (E0s, scale, shift, ...) are copied, not averaged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ExponentialMovingAverage:
    """Holds `averaged`, a model of the same architecture whose parameters are the running
    average (passed in, because e3nn modules cannot be deep-copied: build a second instance)."""

    def __init__(self, model: nn.Module, averaged: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.averaged = averaged
        self.averaged.load_state_dict(model.state_dict())
        for parameter in self.averaged.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of `model` into the average."""
        self.num_updates += 1
        decay = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        # one multi-tensor call per operation instead of two calls per parameter (the same
        # element-wise arithmetic, so the same numbers); a per-tensor loop cost ~3 ms per step
        # for a NequIP with 105 buffers (docs/performance.md, "Training throughput")
        averaged, current = _pairs(self.averaged.parameters(), model.parameters())
        if averaged:
            torch._foreach_mul_(averaged, decay)
            torch._foreach_add_(averaged, [c.detach() for c in current], alpha=1.0 - decay)
        averaged, current = _pairs(self.averaged.buffers(), model.buffers())
        if averaged:
            torch._foreach_copy_(averaged, current)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        """Restore the counters and the averaged weights (`weights`: a model state dict)."""
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.averaged.load_state_dict(weights)


def _pairs(averaged, current) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two tensor lists of the same length (`strict`: the same architecture)."""
    pairs = list(zip(averaged, current, strict=True))
    return [a for a, _ in pairs], [c for _, c in pairs]
