"""Time limits of a training run (potentials/train/clock.py and the trainer's use of it): a
limited run trains until one more step and the closing validation would not fit, goes into
an epoch that will not complete instead of leaving the rest of the budget unused, and
validates where it stops."""

from __future__ import annotations

import math

from equimd.potentials.models.serialization import read_checkpoint
from equimd.potentials.train.clock import RunClock
from equimd.potentials.train.config import TrainingConfig
from equimd.potentials.train.trainer import train
from tests.test_train import assert_same_tensors, copper, read_rows, tiny_config, without_e0  # noqa: F401 (fixture)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_clock_reserves_one_step_and_the_closing_validation_before_the_limit():
    wall, cpu = FakeTime(), FakeTime()
    clock = RunClock(wall, cpu)
    budget = TrainingConfig(max_wall_time=30.0)
    wall.now = 4.0  # set-up
    clock.start_epoch()
    for _ in range(10):  # 1 s steps
        wall.now += 1.0
        clock.step_done()
        assert clock.out_of_time(budget, ahead=True) is None  # no closing cost known yet: 15 < 30
    assert clock.step_cost == (1.0, 0.0)
    clock.steps_done()
    wall.now += 3.0  # validation, checkpoints: 3 s
    clock.epoch_closed()
    assert clock.closing_cost == (3.0, 0.0)
    # 17 s spent; the next epoch (10 + 3 s) would not fit, one step and the closing do
    assert clock.out_of_time(budget, ahead=True) is None
    clock.start_epoch()
    steps = 0
    while clock.out_of_time(budget, ahead=True) is None:
        wall.now += 1.0
        clock.step_done()
        steps += 1
    assert steps == 10 and wall.now == 27.0  # then the closing ends at the limit: 27 + 3 = 30
    assert clock.out_of_time(budget) is None  # the hard limit itself is not passed


def test_the_clock_counts_cpu_time_against_max_cpu_time():
    wall, cpu = FakeTime(), FakeTime()
    clock = RunClock(wall, cpu)
    budget = TrainingConfig(max_cpu_time=10.0)
    clock.start_epoch()
    wall.now, cpu.now = 1.0, 4.0  # 4 CPU s in 1 wall s (threads)
    clock.step_done()
    assert clock.out_of_time(budget) is None
    assert clock.out_of_time(budget, ahead=True) is None  # 4 + 4 <= 10
    cpu.now = 7.0
    clock.step_done()  # mean 3.5 CPU s per step
    assert clock.out_of_time(budget, ahead=True) == "max_cpu_time"  # 7 + 3.5 > 10
    cpu.now = 10.5
    assert clock.out_of_time(budget) == "max_cpu_time"


def test_a_limited_run_goes_into_the_epoch_that_will_not_complete_and_validates_where_it_stops(
    copper, tmp_path, monkeypatch  # noqa: F811
):
    """On a clock where a step costs 1 s and a validation 2 s, 9 steps per epoch and a 20 s
    budget: the old rule (no epoch started that would not complete) stopped after the first
    epoch with 9 s unused. The run now trains into the second epoch, stops after step 7 (one
    more step and the validation would pass 20 s), validates those weights (a metrics.csv row,
    best.pt if better) and writes a last.pt from which --resume continues that epoch."""
    from equimd.potentials.train import clock, trainer

    now = FakeTime()
    monkeypatch.setattr(trainer, "RunClock", lambda: clock.RunClock(now, now))
    original_step, original_validate = trainer._Run.train_step, trainer._validate

    def step_of_1s(self, *args, **kwargs):
        now.now += 1.0
        return original_step(self, *args, **kwargs)

    def validation_of_2s(*args, **kwargs):
        now.now += 2.0
        return original_validate(*args, **kwargs)

    monkeypatch.setattr(trainer._Run, "train_step", step_of_1s)
    monkeypatch.setattr(trainer, "_validate", validation_of_2s)
    config = tiny_config(copper, tmp_path / "run", epochs=50, batch_size=1, max_wall_time=20.0)  # 9 steps/epoch
    result = train(config, progress=False)
    assert result.stop_reason == "max_wall_time" and result.epochs_completed == 1
    rows = read_rows(result.metrics_csv)
    assert [(int(row["epoch"]), float(row["time_s"])) for row in rows] == [(1, 11.0), (2, 20.0)]
    progress = read_checkpoint(result.last_checkpoint)["progress"]
    assert (progress["epoch"], progress["step_in_epoch"]) == (1, 7)
    valid_losses = [float(row["valid_loss"]) for row in rows]
    assert result.best_epoch == 1 + valid_losses.index(min(valid_losses))
    if result.best_epoch == 2:  # the stopped epoch's weights are kept when they validate better
        best = read_checkpoint(result.best_checkpoint)
        last = read_checkpoint(result.last_checkpoint)
        assert_same_tensors(without_e0(best["raw_state_dict"]), without_e0(last["raw_state_dict"]))
    assert math.isclose(  # best.pt's forces: its E0s were refitted, which leaves forces alone
        result.final_metrics["forces_mae"], float(rows[result.best_epoch - 1]["valid_forces_mae"]), rel_tol=1e-6
    )


def test_resume_after_a_partial_epoch_replaces_its_row_and_matches_an_uninterrupted_run(copper, tmp_path):  # noqa: F811
    reference = train(tiny_config(copper, tmp_path / "straight", epochs=3), progress=False)
    train(tiny_config(copper, tmp_path / "split", epochs=3, max_wall_time=1e-6), progress=False)
    assert [int(row["epoch"]) for row in read_rows(tmp_path / "split" / "metrics.csv")] == [1]
    resumed = train(tiny_config(copper, tmp_path / "split", epochs=3), resume=True, progress=False)
    assert_same_tensors(
        read_checkpoint(reference.last_checkpoint)["raw_state_dict"],
        read_checkpoint(resumed.last_checkpoint)["raw_state_dict"],
    )
    straight, split = read_rows(reference.metrics_csv), read_rows(resumed.metrics_csv)
    assert [row["epoch"] for row in split] == ["1", "2", "3"]
    assert [row["valid_loss"] for row in split] == [row["valid_loss"] for row in straight]
