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


# The late energy stage that a time budget adds (`plan_to_budget`): mace-torch's Stage Two
# weights energies 10× its force weight (1000 against 100) from 3/4 of the run on.
LATE_ENERGY_RATIO = 10.0
LATE_STAGE_START = 0.75


def plan_to_budget(
    training: TrainingConfig,
    wall_s: float | None = None,
    cpu_s: float | None = None,
    late_energy_stage: bool = True,
) -> TrainingConfig:
    """Plan a run to a time budget (what `equimd train --time-budget` does), in place:

    - the limit: `max_wall_time = wall_s` and/or `max_cpu_time = cpu_s` [s];
    - `schedule: cosine`, so the learning rate reaches `min_lr` when the budget is spent;
    - `late_energy_stage` and no `late_energy_weight` configured: the late energy stage, energy
      weight `LATE_ENERGY_RATIO` × `forces_weight` from `LATE_STAGE_START` of the budget on
      (never below `energy_weight`: an energy-only run keeps its weight).
    """
    if wall_s is not None:
        training.max_wall_time = wall_s
    if cpu_s is not None:
        training.max_cpu_time = cpu_s
    training.schedule = "cosine"
    if late_energy_stage and training.late_energy_weight is None:
        training.late_energy_weight = max(training.energy_weight, LATE_ENERGY_RATIO * training.forces_weight)
        training.late_stage_start = LATE_STAGE_START
    return training
