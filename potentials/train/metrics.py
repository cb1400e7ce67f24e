"""Error metrics: MAE and RMSE of energy, forces and stress, accumulated over batches.

Reported units (the names scientists compare against):
    energy_mae, energy_rmse              meV/atom   (error of E/N)
    energy_total_mae, energy_total_rmse  meV        (error of the total energy, per structure)
    forces_mae, forces_rmse              meV/Å      (per Cartesian component)
    stress_mae, stress_rmse              meV/Å³     (per component of the 3×3 tensor)
A metric is NaN when no frame carries the label.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from equimd.potentials.train.batching import LabelledBatch

UNITS = {
    "energy_mae": "meV/atom",
    "energy_rmse": "meV/atom",
    "energy_total_mae": "meV",
    "energy_total_rmse": "meV",
    "forces_mae": "meV/Å",
    "forces_rmse": "meV/Å",
    "stress_mae": "meV/Å³",
    "stress_rmse": "meV/Å³",
}
METRIC_NAMES = tuple(UNITS)

_QUANTITIES = ("energy", "energy_total", "forces", "stress")


class ErrorAccumulator:
    """Sums of |error|, error² and counts per quantity; `compute()` gives MAE/RMSE in meV units."""

    def __init__(self) -> None:
        self.sums = {q: [0.0, 0.0, 0] for q in _QUANTITIES}  # Σ|e|, Σe², count (eV units)

    def _add(self, quantity: str, error: Tensor, mask: Tensor) -> None:
        selected = error[mask].detach()
        if selected.numel() == 0:
            return
        totals = self.sums[quantity]
        totals[0] += float(selected.abs().sum())
        totals[1] += float(selected.pow(2).sum())
        totals[2] += selected.numel()

    @torch.no_grad()
    def update(self, predictions: dict[str, Tensor], batch: LabelledBatch) -> None:
        """Add one batch: predictions as returned by `ForceField` (eV, eV/Å, eV/Å³)."""
        graph = batch.graph
        energy_error = predictions["energy"] - graph.energy
        self._add("energy", energy_error / batch.num_atoms, batch.energy_mask)
        self._add("energy_total", energy_error, batch.energy_mask)
        if "forces" in predictions:
            self._add("forces", predictions["forces"] - graph.forces, batch.forces_mask)
        if "stress" in predictions:
            self._add("stress", predictions["stress"] - graph.stress, batch.stress_mask)

    def compute(self) -> dict[str, float]:
        """{metric name: value in the units of `UNITS`} (NaN where no label was seen)."""
        metrics = {}
        for quantity, (abs_sum, square_sum, count) in self.sums.items():
            metrics[f"{quantity}_mae"] = 1000.0 * abs_sum / count if count else math.nan
            metrics[f"{quantity}_rmse"] = 1000.0 * math.sqrt(square_sum / count) if count else math.nan
        return {name: metrics[name] for name in METRIC_NAMES}

    def state_dict(self) -> dict[str, list]:
        return {q: list(v) for q, v in self.sums.items()}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.sums = {q: [float(v[0]), float(v[1]), int(v[2])] for q, v in state.items()}


def format_metrics_table(metrics: dict[str, float], title: str = "") -> str:
    """A small aligned table: quantity | MAE | RMSE | unit."""
    rows = [("energy", "meV/atom"), ("energy_total", "meV"), ("forces", "meV/Å"), ("stress", "meV/Å³")]
    lines = [title] if title else []
    lines.append(f"{'quantity':<14}{'MAE':>12}{'RMSE':>12}  unit")
    for quantity, unit in rows:
        mae, rmse = metrics.get(f"{quantity}_mae", math.nan), metrics.get(f"{quantity}_rmse", math.nan)
        if math.isnan(mae):
            continue
        lines.append(f"{quantity:<14}{mae:>12.3f}{rmse:>12.3f}  {unit}")
    return "\n".join(lines)
