"""The training loop of the peers' equal-budget accuracy workers (`mace_accuracy_worker.py`,
`nequip_accuracy_worker.py`; run by `benchmarks/bench_accuracy.py`), with the same stopping
rules as equimd's trainer under `training.max_cpu_time`:

- the budget is CPU time of the process (`time.process_time`, all threads) from the start of
  `train_for_budget` (the worker's data preparation before it is counted by the worker itself
  through `started_cpu`);
- it stops after the current step when the budget is passed inside an epoch, and after an epoch
  when another epoch as long as the last one would not fit;
- every completed epoch is validated (with the averaged weights, as each peer validates); the
  state with the lowest validation loss is kept; if the run ends before any epoch completed,
  the weights it has are validated once, so there is always a validated state;
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
from typing import Any, Callable, Iterable


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
    epoch_batches: Callable[[], Iterable[Any]],
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

    epoch_batches() → the batches of one epoch (shuffled by the caller); step(batch) → training
    loss; validate() → validation loss of the averaged weights; snapshot() → a copy of the
    weights to keep; end_of_epoch(validation loss) → the peer's scheduler step.
    """
    cpu0 = time.process_time() if started_cpu is None else started_cpu
    wall0 = time.monotonic()
    result = BudgetResult()
    in_stage_two = False
    epoch_cpu = 0.0

    def spent() -> float:
        return time.process_time() - cpu0

    def consider(loss: float, epoch: int) -> None:
        result.history.append({"epoch": epoch, "loss": loss, "cpu_s": round(spent(), 1), "stage_two": in_stage_two})
        if loss < result.best_loss:
            result.best_loss, result.best_epoch, result.best_state = loss, epoch, snapshot()

    stopped = False
    while result.epochs < max_epochs and not stopped:
        epoch_start = spent()
        for batch in epoch_batches():
            if stage_two is not None and not in_stage_two and spent() >= stage_two_fraction * budget_s:
                stage_two()
                in_stage_two = True
                result.best_loss, result.best_state = float("inf"), None  # stage two's own best
            step(batch)
            result.steps += 1
            if spent() > budget_s:
                result.stop_reason, stopped = "max_cpu_time", True
                break
        if stopped:
            break
        result.epochs += 1
        loss = validate()
        consider(loss, result.epochs)
        if end_of_epoch is not None:
            end_of_epoch(loss)
        epoch_cpu = spent() - epoch_start
        log(f"epoch {result.epochs}: validation loss {loss:.6g}, {spent():.0f} of {budget_s:.0f} CPU s"
            + (" (stage two)" if in_stage_two else ""))
        if spent() + epoch_cpu > budget_s:
            result.stop_reason = "max_cpu_time"
            break
    if result.best_state is None:  # no validated state (of this stage) yet: validate these weights
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
