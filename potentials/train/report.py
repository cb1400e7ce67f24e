"""What a training run tells the user: a progress bar with ETA, one compact line per epoch,
and `metrics.csv` (append-safe, flushed every epoch)."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

from equimd.files import atomic_output, reporting_write_errors, sync_handle
from equimd.potentials.train.metrics import METRIC_NAMES

CSV_COLUMNS = (
    ["epoch", "time_s", "lr", "train_loss"]
    + [f"train_{name}" for name in METRIC_NAMES]
    + ["valid_loss"]
    + [f"valid_{name}" for name in METRIC_NAMES]
)


class MetricsCSV:
    """One row per epoch. On resume, rows after the checkpoint's epoch (written by a run that
    died before its next checkpoint) are dropped first, so epochs are never duplicated."""

    def __init__(self, path: str | Path, resume_epoch: int | None = None) -> None:
        self.path = Path(path)
        if resume_epoch is None or not self.path.exists():
            self._rewrite([])
        else:
            with self.path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= resume_epoch]
            self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with atomic_output(self.path, "training metrics") as temporary:
            with open(temporary, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row (flushed and fsynced); a failed write (disk full, file made
        read-only, ...) raises `OutputWriteError` naming the file and the reason."""
        with reporting_write_errors("training metrics", self.path):
            with open(self.path, "a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
                writer.writerow({k: _csv_value(v) for k, v in row.items()})
                sync_handle(handle)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.8g}"
    return value


def _fmt(value: float, width: int, precision: int = 1) -> str:
    return f"{'-':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.{precision}f}"


def epoch_header(has_stress: bool) -> str:
    stress = f" {'S MAE':>8}" if has_stress else ""
    return (
        f"{'epoch':>6} {'lr':>8} {'train loss':>11} {'valid loss':>11} {'E MAE':>8} "
        f"{'F MAE':>8} {'F RMSE':>8}{stress} {'time':>8}\n"
        f"{'':>6} {'':>8} {'':>11} {'':>11} {'meV/at':>8} {'meV/Å':>8} {'meV/Å':>8}"
        + (f" {'meV/Å³':>8}" if has_stress else "")
        + f" {'s':>8}"
    )


def epoch_line(row: dict[str, Any], has_stress: bool, is_best: bool) -> str:
    """One compact line: validation energy MAE, force MAE/RMSE, stress MAE, timing."""
    def value(key: str) -> float:
        return row.get(key, math.nan)

    stress = f" {_fmt(value('valid_stress_mae'), 8, 3)}" if has_stress else ""
    return (
        f"{row['epoch']:>6d} {row['lr']:>8.1e} {row['train_loss']:>11.4e} {row['valid_loss']:>11.4e} "
        f"{_fmt(value('valid_energy_mae'), 8, 2)} {_fmt(value('valid_forces_mae'), 8, 1)} "
        f"{_fmt(value('valid_forces_rmse'), 8, 1)}{stress} {row['time_s']:>8.1f}"
        + ("  *" if is_best else "")
    )


class ProgressBar:
    """tqdm bar over all optimisation steps of the run (ETA for the whole run), or nothing.

    time_limit_s: the run's `max_wall_time` (s, counted from the bar's creation); when the
    steps left would take longer than the time left, the bar says when the limit stops the
    run instead of letting the whole-run ETA promise more than it will do.
    """

    def __init__(self, total_steps: int, done_steps: int, enabled: bool,
                 time_limit_s: float | None = None) -> None:
        self.bar = None
        self.total_steps, self.done_steps = total_steps, done_steps
        self.time_limit_s = time_limit_s
        self.started = time.monotonic()
        self.steps_here = 0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps, initial=done_steps, unit="step", dynamic_ncols=True,
                leave=False, file=sys.stderr,
            )

    def time_limit_note(self) -> str:
        """"" or ", time limit in M:SS" when max_wall_time ends the run before its last step."""
        if self.time_limit_s is None or self.steps_here == 0:
            return ""
        elapsed = time.monotonic() - self.started
        left_s = max(self.time_limit_s - elapsed, 0.0)
        steps_left = self.total_steps - self.done_steps - self.steps_here
        if steps_left * elapsed / self.steps_here <= left_s:
            return ""
        minutes, seconds = divmod(int(left_s), 60)
        return f", time limit in {minutes}:{seconds:02d}"

    def step(self, epoch: int, epochs: int, loss: float) -> None:
        self.steps_here += 1
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch}/{epochs}", refresh=False)
            self.bar.set_postfix_str(f"loss {loss:.3e}{self.time_limit_note()}", refresh=False)
            self.bar.update(1)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
