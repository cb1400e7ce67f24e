"""The time limits of one training invocation (`max_wall_time`, `max_cpu_time`): what it has
spent, what a training step and an epoch's close (validation, checkpoints, metrics row, plot)
cost, and whether one more step and the close still fit.

The trainer asks after every step (and after every epoch) whether another step plus a close
would pass a limit; if so it stops there, inside the epoch if need be, and closes the run with
a validation of the weights it reached. So a limited run uses its budget up to the cost of a
step instead of leaving up to an epoch of it unused, and ends within it once one close has
been measured (before the first close its cost is taken as 0).
"""

from __future__ import annotations

import time
from typing import Callable

from equimd.potentials.train.config import TrainingConfig

Seconds = tuple[float, float]  # (wall-clock s, CPU s of the process, all threads)


class RunClock:
    """Wall-clock and CPU time of this invocation; mean cost of the current epoch's steps
    (the last epoch's until a step is done) and the cost of the last close."""

    def __init__(
        self, wall: Callable[[], float] = time.monotonic, cpu: Callable[[], float] = time.process_time
    ) -> None:
        self._wall_source, self._cpu_source = wall, cpu
        self._started = self._now()
        self._epoch_started = self._steps_ended = self._started
        self._steps = 0
        self.step_cost: Seconds = (0.0, 0.0)
        self.closing_cost: Seconds = (0.0, 0.0)

    def _now(self) -> Seconds:
        return self._wall_source(), self._cpu_source()

    def wall(self) -> float:
        return self._wall_source() - self._started[0]

    def cpu(self) -> float:
        return self._cpu_source() - self._started[1]

    def start_epoch(self) -> None:
        """The epoch's training steps begin (after the set-up or the previous close)."""
        self._epoch_started, self._steps = self._now(), 0

    def step_done(self) -> None:
        self._steps += 1
        (wall, cpu), (wall0, cpu0) = self._now(), self._epoch_started
        self.step_cost = ((wall - wall0) / self._steps, (cpu - cpu0) / self._steps)

    def steps_done(self) -> None:
        """The epoch's (or the stopped epoch's) steps are over; its close begins."""
        self._steps_ended = self._now()

    def epoch_closed(self) -> None:
        (wall, cpu), (wall0, cpu0) = self._now(), self._steps_ended
        self.closing_cost = (wall - wall0, cpu - cpu0)

    def out_of_time(self, training: TrainingConfig, ahead: bool = False) -> str | None:
        """"max_wall_time"/"max_cpu_time" when that limit is passed (`ahead`: would be passed by
        one more step and a close); else None."""
        wall, cpu = self.wall(), self.cpu()
        if ahead:
            wall += self.step_cost[0] + self.closing_cost[0]
            cpu += self.step_cost[1] + self.closing_cost[1]
        if training.max_wall_time is not None and wall > training.max_wall_time:
            return "max_wall_time"
        if training.max_cpu_time is not None and cpu > training.max_cpu_time:
            return "max_cpu_time"
        return None
