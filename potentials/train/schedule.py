"""Learning-rate and loss-weight schedules over the length of a run.

The run's length is whichever limit comes first: `epochs`, `max_wall_time` or `max_cpu_time`.
Its progress is the fraction f ∈ [0, 1] of the most advanced of them,

    f = max(steps done / (epochs · steps per epoch), wall time / max_wall_time,
            CPU time / max_cpu_time),

so a run with a time budget plans its schedule to the budget (`equimd train --time-budget`).

- "plateau" (default): the learning rate is reduced by `scheduler_factor` after
  `scheduler_patience` epochs without a better validation loss (ReduceLROnPlateau).
- "cosine": a linear warm-up from 0.1·lr to lr over the first `warmup_fraction` of the run,
  then a half cosine down to `min_lr` at f = 1:
      lr(f) = min_lr + (lr − min_lr) · ½ (1 + cos(π (f − w) / (1 − w))),   f ≥ w.
- Late energy stage (either schedule; mace-torch's "stage two"): from f ≥ `late_stage_start`
  the training loss uses `late_energy_weight` instead of `energy_weight`, so that energies,
  learned more slowly than forces, are fitted at the end. Validation and model selection
  always use the configured weights, so that losses of the two stages compare.
"""

from __future__ import annotations

import math
from dataclasses import replace

from equimd.potentials.train.config import TrainingConfig
from equimd.potentials.train.loss import LossWeights


def run_fraction(
    training: TrainingConfig, steps_done: int, steps_per_epoch: int, wall_s: float, cpu_s: float
) -> float:
    """f: how far the run is towards its first limit (epochs, wall-clock or CPU time), in [0, 1]."""
    fractions = [steps_done / max(training.epochs * steps_per_epoch, 1)]
    if training.max_wall_time is not None:
        fractions.append(wall_s / training.max_wall_time)
    if training.max_cpu_time is not None:
        fractions.append(cpu_s / training.max_cpu_time)
    return min(max(fractions), 1.0)


def cosine_lr(training: TrainingConfig, fraction: float) -> float:
    """The "cosine" schedule's learning rate at run fraction `fraction`."""
    warmup = training.warmup_fraction
    if fraction < warmup:
        return training.lr * (0.1 + 0.9 * fraction / warmup)
    progress = (fraction - warmup) / max(1.0 - warmup, 1e-12)
    return training.min_lr + (training.lr - training.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def stage_weights(training: TrainingConfig, weights: LossWeights, fraction: float) -> LossWeights:
    """The training-loss weights at run fraction `fraction` (the late energy stage, if set)."""
    if training.late_energy_weight is None or fraction < training.late_stage_start:
        return weights
    return replace(weights, energy=training.late_energy_weight)
