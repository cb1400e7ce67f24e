"""The training loop of the peers' equal-budget accuracy workers (`mace_accuracy_worker.py`,
`nequip_accuracy_worker.py`; run by `benchmarks/bench_accuracy.py`), with the same stopping
rules as equimd's trainer under `training.max_cpu_time`:

- the budget is CPU time of the process (`time.process_time`, all threads) from the start of
  `train_for_budget` (the worker's data preparation before it is counted by the worker itself
  through `started_cpu`);
- after every step (but an epoch's last) and after every epoch it stops when one more step (the
  current epoch's mean) and a close (the last validation, scheduler step and log) would pass
  the budget: it goes into an epoch that will not complete rather than leave the budget unused;
- every completed epoch is validated (with the averaged weights, as each peer validates), and
  so are the weights where a stop inside an epoch left them; the state with the lowest
  validation loss is kept, so there is always a validated state;
- a `stage_two` hook is called once at `stage_two_fraction` of the budget (mace-torch's SWA
  stage); from then on only validation losses of stage two compete for the best state, as
  mace-torch keeps the stage-two checkpoint.

Imports only the standard library at module level (NumPy inside `write_outcome`); the workers
pass their peer's own step, validation and weight snapshot as callables.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sized


@dataclass
class BudgetResult:
    """What one budgeted run did: epochs completed, steps, the best state (the snapshot of the
    averaged weights with the lowest validation loss) and when it stopped."""

    epochs: int = 0
    steps: int = 0
    best_epoch: int = 0
    best_loss: float = float("inf")
    best_state: Any = None
    stop_reason: str = "completed"
    cpu_s: float = 0.0
    wall_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def train_for_budget(
    epoch_batches: Callable[[], Sized],
    step: Callable[[Any], float],
    validate: Callable[[], float],
    snapshot: Callable[[], Any],
    budget_s: float,
    started_cpu: float | None = None,
    end_of_epoch: Callable[[float], None] | None = None,
    stage_two: Callable[[], None] | None = None,
    stage_two_fraction: float = 0.75,
    max_epochs: int = 1_000_000,
    log: Callable[[str], None] = print,
) -> BudgetResult:
    """Train until `budget_s` CPU seconds are spent (counted from `started_cpu`, default now).

    epoch_batches() → the batches of one epoch, iterable and with a len (shuffled by the
    caller, e.g. a shuffling DataLoader); step(batch) → training
    loss; validate() → validation loss of the averaged weights; snapshot() → a copy of the
    weights to keep; end_of_epoch(validation loss) → the peer's scheduler step.
    """
    cpu0 = time.process_time() if started_cpu is None else started_cpu
    wall0 = time.monotonic()
    result = BudgetResult()
    in_stage_two = False
    step_cost = closing_cost = 0.0  # CPU s: the current epoch's mean step, the last close

    def spent() -> float:
        return time.process_time() - cpu0

    def no_room() -> bool:
        return spent() + step_cost + closing_cost > budget_s

    def consider(loss: float, epoch: int) -> None:
        result.history.append({"epoch": epoch, "loss": loss, "cpu_s": round(spent(), 1), "stage_two": in_stage_two})
        if loss < result.best_loss:
            result.best_loss, result.best_epoch, result.best_state = loss, epoch, snapshot()

    while result.epochs < max_epochs:
        batches = epoch_batches()
        epoch_start, stopped_at = spent(), 0
        for index, batch in enumerate(batches):
            if stage_two is not None and not in_stage_two and spent() >= stage_two_fraction * budget_s:
                stage_two()
                in_stage_two = True
                result.best_loss, result.best_state = float("inf"), None  # stage two's own best
            step(batch)
            result.steps += 1
            step_cost = (spent() - epoch_start) / (index + 1)
            if index + 1 < len(batches) and no_room():
                stopped_at = index + 1
                break
        if stopped_at:  # validate the weights the stop inside epoch `epochs + 1` left
            result.stop_reason = "max_cpu_time"
            consider(validate(), result.epochs + 1)
            log(f"stopped at step {stopped_at}/{len(batches)} of epoch {result.epochs + 1}: validation loss "
                f"{result.history[-1]['loss']:.6g}, {spent():.0f} of {budget_s:.0f} CPU s")
            break
        closing_start = spent()
        result.epochs += 1
        loss = validate()
        consider(loss, result.epochs)
        if end_of_epoch is not None:
            end_of_epoch(loss)
        log(f"epoch {result.epochs}: validation loss {loss:.6g}, {spent():.0f} of {budget_s:.0f} CPU s"
            + (" (stage two)" if in_stage_two else ""))
        closing_cost = spent() - closing_start
        if result.epochs < max_epochs and no_room():
            result.stop_reason = "max_cpu_time"
            break
    if result.best_state is None:  # no validated state of stage two yet: validate these weights
        consider(validate(), result.epochs)
    result.cpu_s, result.wall_s = spent(), time.monotonic() - wall0
    return result


def write_outcome(job: dict[str, Any], predictions: dict[str, tuple], result: BudgetResult, **report: Any) -> None:
    """Write the job's `out` folder: `predictions_<test>.npz` (energy [frames] eV, forces
    [atoms, 3] eV/Å, n_atoms [frames]) per test, and `peer_result.json` (`report`: implementation,
    version, torch, parameters, ...; and the run's epochs, steps, best epoch and loss, stop
    reason, CPU and wall seconds, validation history)."""
    import numpy as np

    out = Path(job["out"])
    for label, (energy, forces, n_atoms) in predictions.items():
        np.savez(out / f"predictions_{label}.npz", energy=energy, forces=forces, n_atoms=n_atoms)
    report.update(
        epochs=result.epochs, steps=result.steps, best_epoch=result.best_epoch, best_loss=result.best_loss,
        stop_reason=result.stop_reason, cpu_s=round(result.cpu_s, 1), wall_s=round(result.wall_s, 1),
        history=result.history,
    )  # fmt: skip
    (out / "peer_result.json").write_text(json.dumps(report, indent=1))
