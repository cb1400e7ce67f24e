"""`train(config)`: fit a potential to energies, forces and stresses.

The run, in order: read and split the data → species, E0s, neighbor graphs (once, cached) →
avg_num_neighbors, scale, shift → build the model → Adam/AMSGrad with ReduceLROnPlateau or a
cosine schedule planned to the run's length, an optional late energy stage
(`equimd.potentials.train.schedule`), and an EMA of the weights → per epoch: shuffled batches, validation with the EMA weights, one metrics
line, a row of metrics.csv and the learning_curves.png redrawn from it, best.pt when validation
improves, last.pt every
`checkpoint_interval` epochs. Stops at `epochs`, on early stopping, at `max_wall_time` or
`max_cpu_time`, or on
SIGINT/SIGTERM (after writing last.pt); a time limit stops inside an epoch when one more step
and the validation would not fit (`equimd.potentials.train.clock`) and validates the weights
reached. When the run ends, best.pt's per-species E0s are refitted on the training energies
(`equimd.potentials.train.energy_reference`). `resume=True` continues from last.pt; on CPU with
a fixed seed the result is bit-identical to an uninterrupted run.

Under torchrun (`equimd train --nproc N`) each process is one rank of a data-parallel run
(DistributedDataParallel): the global batches are split over the ranks so that the weights
equal those of one process to round-off (`equimd.potentials.train.distributed`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from ase.data import chemical_symbols

from equimd.allocator import keep_freed_memory
from equimd.devices import check_device
from equimd.files import OutputWriteError
from equimd.plots import plot_learning_curves, plot_quietly
from equimd.potentials.forcefield import ForceField
from equimd.potentials.train.batching import (
    LabelledBatch,
    batch_indices,
    batch_to,
    collate_labelled,
)
from equimd.potentials.train.checkpoint import (
    TrainProgress,
    load_training_checkpoint,
    save_checkpoint,
)
from equimd.potentials.train.clock import RunClock
from equimd.potentials.train.config import (
    TrainConfig,
    TrainingConfig,
    model_hyperparameter_defaults,
)
from equimd.potentials.train.data import (
    DataError,
    build_graphs,
    count_edges,
    label_summary,
    model_species,
    read_split,
    resolve_e0s,
)
from equimd.potentials.train.distributed import Ranks, ranks_from_environment
from equimd.potentials.train.energy_reference import (
    energy_reference_correction,
    shift_energy_reference,
)
from equimd.potentials.train.loss import LabelCounts, LossWeights
from equimd.potentials.train.metrics import format_metrics_table
from equimd.potentials.train.report import MetricsCSV, ProgressBar, epoch_header, epoch_line
from equimd.potentials.train.run_dir import (
    BEST,
    CONFIG_NAME,
    CSV_NAME,
    LAST,
    check_resumable,
    prepare_run_dir,
    write_config,
)
from equimd.potentials.train.run_state import TrainingRun as _Run
from equimd.potentials.train.run_state import validation_errors
from equimd.potentials.train.schedule import cosine_lr, run_fraction, stage_weights
from equimd.potentials.train.signals import GracefulStop
from equimd.potentials.train.statistics import DataStatistics, compute_statistics


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training; the state was saved to `checkpoint` (resumable)."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"training interrupted; state saved to {checkpoint} (continue with --resume)")
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """Files and outcome of a run.

    stop_reason: "completed", "early_stopping", "max_wall_time" or "max_cpu_time"
    final_metrics: validation metrics of best.pt (units in `equimd.potentials.train.metrics.UNITS`)
    """

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics_csv: Path
    epochs_completed: int
    best_epoch: int
    stop_reason: str
    final_metrics: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return "\n".join(
            [
                f"training {self.stop_reason} after {self.epochs_completed} epochs "
                f"(best epoch {self.best_epoch})",
                format_metrics_table(self.final_metrics, "validation errors of best.pt:"),
                f"best checkpoint: {self.best_checkpoint}",
                f"last checkpoint: {self.last_checkpoint}",
                f"metrics:         {self.metrics_csv}",
            ]
        )


def resolve_device(name: str) -> torch.device:
    """training.device as a torch device; one this machine lacks is a `DeviceError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name, option="training.device")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _stop_after_epoch(
    training: TrainingConfig, progress: TrainProgress, signal_name: str | None, clock: RunClock
) -> str | None:
    """Why to stop after an epoch: early stopping, a signal, or not even one more step and the
    closing validation fitting into `max_wall_time` or `max_cpu_time` (None: go on; a next
    epoch that will not complete is started and stopped inside, `equimd.potentials.train.clock`)."""
    if (
        training.early_stopping_patience is not None
        and progress.stale_epochs >= training.early_stopping_patience
    ):
        return "early_stopping"
    if signal_name is not None:
        return "interrupted"
    if progress.epoch < training.epochs:
        return clock.out_of_time(training, ahead=True)
    return None


def validate(forcefield: ForceField, batches: list[LabelledBatch]) -> dict[str, float]:
    """Metrics of `forcefield` on pre-collated batches (forces always, stress where labelled)."""
    return validation_errors(forcefield, batches).compute()


def _validate(run: _Run, batches: list[LabelledBatch], ranks: Ranks) -> dict[str, float]:
    """Validation metrics of the run's evaluation weights; over several ranks, each rank
    takes every `world_size`-th batch and the error sums are all-reduced."""
    if not ranks.distributed:
        return validate(run.eval_forcefield, batches)
    errors = validation_errors(run.eval_forcefield, batches[ranks.rank :: ranks.world_size])
    return ranks.reduce_errors(errors).compute()


@dataclass
class _PreparedData:
    """Frames turned into cached graphs, plus the statistics set into the model."""

    split_indices: dict[str, list[int]]
    train_graphs: list[LabelledBatch]
    valid_graphs: list[LabelledBatch]
    statistics: DataStatistics


def _prepare_data(
    config: TrainConfig, record: dict[str, Any] | None, dtype: torch.dtype, ranks: Ranks
) -> _PreparedData:
    """Read and split the frames, build their graphs once, and compute the statistics (or take
    them from the checkpoint being resumed); every rank builds all graphs, and uses the
    statistics of rank 0."""
    split = read_split(config.data, config.training.seed)
    split_indices = {"train": split.train_indices, "valid": split.valid_indices}
    if record is not None and record["split"] != split_indices:
        raise DataError("cannot resume: the training/validation frames differ from last.pt's")
    print(f"training:   {label_summary(split.train)}")
    print(f"validation: {label_summary(split.valid)}")
    defaults = model_hyperparameter_defaults(config.model.model_type)
    r_max = float(config.model.hyperparameters.get("r_max", defaults["r_max"]))
    if record is not None:
        statistics = DataStatistics.from_dict(record["statistics"])
        species = statistics.species
    else:
        species = model_species(config.model.species, split)
    train_graphs = build_graphs(split.train, r_max, dtype)
    valid_graphs = build_graphs(split.valid, r_max, dtype)
    if record is None:
        e0 = resolve_e0s(config.data, split.train, species)
        statistics = compute_statistics(split.train, species, e0, count_edges(train_graphs))
        statistics = ranks.broadcast(statistics)
    print(f"statistics: {statistics.describe()}")
    return _PreparedData(split_indices, train_graphs, valid_graphs, statistics)


def refit_energy_reference(
    run: _Run,
    train_graphs: list[LabelledBatch],
    valid_batches: list[LabelledBatch],
    training: TrainingConfig,
    device: torch.device,
    dtype: torch.dtype,
    save: Callable[[torch.Tensor, str], None],
) -> None:
    """The run is over: load best.pt into `run`, refit its per-species E0s on the training
    energies (`equimd.potentials.train.energy_reference`), validate and write it again. One
    process (rank 0): the weights of the other ranks are no longer used."""
    record = load_training_checkpoint(Path(run.config.output.run_dir) / BEST)
    run.restore(record)
    batch_size = training.valid_batch_size or training.batch_size
    correction = energy_reference_correction(
        run.eval_forcefield, train_graphs, run.model.species, batch_size, device, dtype
    )
    if correction is None:  # no training energies
        return
    before = run.best_metrics.get("energy_mae", float("nan"))
    shift_energy_reference(run.model, correction)
    if run.ema is not None:
        shift_energy_reference(run.ema.averaged, correction)
    run.best_metrics = validate(run.eval_forcefield, valid_batches)
    save(record["order_generator"], BEST)
    shifts = ", ".join(
        f"{chemical_symbols[z]} {1000 * float(d):+.1f}" for z, d in zip(run.model.species, correction, strict=True)
    )
    print(
        f"energy reference refitted on {len(train_graphs)} training frames: E0 += {shifts} meV; "
        f"validation energy MAE {before:.2f} -> {run.best_metrics.get('energy_mae', float('nan')):.2f} "
        "meV/atom (best.pt)",
        flush=True,
    )


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train the model described by `config`; see the module docstring. Returns the files
    written and the validation metrics of the best checkpoint. Started by torchrun (WORLD_SIZE
    > 1 in the environment), this process is one rank of a data-parallel run
    (`equimd.potentials.train.distributed`)."""
    keep_freed_memory()  # every step allocates the same large temporaries: reuse their memory
    with ranks_from_environment(resolve_device(config.training.device)) as (ranks, device):
        return _train(config, resume, progress, ranks, device)


def _train(
    config: TrainConfig, resume: bool, progress: bool, ranks: Ranks, device: torch.device
) -> TrainResult:
    clock = RunClock()
    training = config.training
    run_dir = Path(config.output.run_dir)
    ranks.on_main(lambda: prepare_run_dir(run_dir, resume, config.output.overwrite))
    record = load_training_checkpoint(run_dir / LAST) if resume else None
    if record is not None:
        check_resumable(record, config)
    dtype = getattr(torch, training.dtype)
    seed_everything(training.seed)

    data = _prepare_data(config, record, dtype, ranks)
    hyperparameters = dict(config.model.hyperparameters)
    if "avg_num_neighbors" in model_hyperparameter_defaults(config.model.model_type):
        # message normalisation, for the models that take it (docs/models.md)
        hyperparameters.setdefault("avg_num_neighbors", data.statistics.avg_num_neighbors)
    split_indices = data.split_indices
    train_graphs, valid_graphs = data.train_graphs, data.valid_graphs

    run = _Run(config, data.statistics, hyperparameters, device, dtype, ranks)
    if record is not None:
        run.restore(record)
        print(f"resumed from {run_dir / LAST} at epoch {run.progress.epoch}"
              + (f", step {run.progress.step_in_epoch}" if run.progress.step_in_epoch else ""))
    num_parameters = sum(p.numel() for p in run.model.parameters())
    print(f"model:      {config.model.model_type}, {num_parameters} parameters, {training.dtype}, {device}"
          + (f", {ranks.world_size} processes (DDP)" if ranks.distributed else ""))
    if ranks.is_main:
        write_config(config, run_dir / CONFIG_NAME)

    weights = LossWeights(training.energy_weight, training.forces_weight, training.stress_weight)
    valid_batches = [
        batch_to(collate_labelled([valid_graphs[i] for i in indices]), device, dtype)
        for indices in batch_indices(len(valid_graphs), training.valid_batch_size or training.batch_size)
    ]
    has_stress = any(b.has_stress for b in valid_batches)
    csv_log = (
        MetricsCSV(run_dir / CSV_NAME, resume_epoch=run.progress.epoch if record else None)
        if ranks.is_main
        else None
    )
    steps_per_epoch = math.ceil(len(train_graphs) / training.batch_size)
    bar = ProgressBar(
        training.epochs * steps_per_epoch,
        run.progress.epoch * steps_per_epoch + run.progress.step_in_epoch,
        progress and ranks.is_main,
        training.max_wall_time,
    )
    bar.write(epoch_header(has_stress))
    stop_reason = None
    elapsed_before = run.progress.elapsed
    last_saved_epoch = run.progress.epoch if record is not None else -1

    def wall_time() -> float:
        return clock.wall()

    def save(order_state: torch.Tensor, name: str) -> None:
        """Write best.pt or last.pt (rank 0); a failed write says what is left and how to go on."""
        run.progress.elapsed = elapsed_before + wall_time()
        if not ranks.is_main:
            return
        try:
            save_checkpoint(run.record(split_indices, order_state), run_dir / name)
        except OutputWriteError as error:
            kept = (
                f"{run_dir / LAST} holds epoch {last_saved_epoch}, continue with --resume"
                if last_saved_epoch >= 0
                else "no last.pt was written by this run"
            )
            raise error.with_note(
                f"training stopped after {run.progress.epoch} epochs; {kept}"
            ) from error.__cause__

    def save_last(order_state: torch.Tensor) -> None:
        nonlocal last_saved_epoch
        save(order_state, LAST)
        last_saved_epoch = run.progress.epoch

    def schedule_step(step: int) -> LossWeights:
        """Set the learning rate of the "cosine" schedule for the coming step; return the
        step's loss weights (the late energy stage). Rank 0's clock decides for all ranks."""
        if training.schedule == "plateau" and training.late_energy_weight is None:
            return weights
        fraction = run_fraction(
            training, run.progress.epoch * steps_per_epoch + step, steps_per_epoch, clock.wall(), clock.cpu()
        )
        if ranks.distributed and (training.max_wall_time or training.max_cpu_time):
            fraction = ranks.sum([fraction if ranks.is_main else 0.0])[0]
        if training.schedule == "cosine":
            for group in run.optimizer.param_groups:
                group["lr"] = cosine_lr(training, fraction)
        return stage_weights(training, weights, fraction)

    def step_batch(indices: list[int], step_weights: LossWeights) -> float:
        """One optimisation step on the global batch `indices` (this rank's share of it);
        returns the loss of the global batch."""
        counts = LabelCounts.of([train_graphs[i] for i in indices])
        shard, factor = ranks.shard(indices), float(ranks.world_size)
        if not shard:  # fewer structures than ranks: a placeholder that contributes nothing
            shard, factor = indices[:1], 0.0
        batch = batch_to(collate_labelled([train_graphs[i] for i in shard]), device, dtype)
        if not ranks.distributed:
            return run.train_step(batch, step_weights, training.clip_grad_norm)
        return run.train_step(batch, step_weights, training.clip_grad_norm, counts, factor)

    def close_stopped_epoch(epoch_state: torch.Tensor) -> None:
        """A time limit stopped the run inside an epoch: validate the weights it reached (they
        may become best.pt), add the epoch's row, and write last.pt at this step."""
        clock.steps_done()
        row, is_best = run.close_stopped_epoch(_validate(run, valid_batches, ranks), weights)
        row["time_s"] = elapsed_before + wall_time()
        if is_best:
            save(epoch_state, BEST)
        save_last(epoch_state)
        if csv_log is not None:
            csv_log.append(row)
            plot_quietly(plot_learning_curves, run_dir / CSV_NAME, "learning curves")
        bar.write(epoch_line(row, has_stress, is_best)
                  + f"  (stopped at step {run.progress.step_in_epoch}/{steps_per_epoch})")

    try:
        with GracefulStop() as stop:
            while run.progress.epoch < training.epochs:
                clock.start_epoch()
                epoch_state = run.order_generator.get_state()
                batches = batch_indices(len(train_graphs), training.batch_size, run.order_generator)
                for step in range(run.progress.step_in_epoch, len(batches)):
                    share = step_batch(batches[step], schedule_step(step))
                    clock.step_done()
                    run.progress.step_in_epoch = step + 1
                    # stop inside the epoch when one more step and the closing validation would
                    # pass a time limit; the last step closes the epoch anyway
                    time_limit = clock.out_of_time(training, ahead=True) if step + 1 < len(batches) else None
                    out_of_time = time_limit is not None
                    # the ranks agree on the loss and on stopping (a signal may reach one rank)
                    loss, stopping, timed_out = ranks.sum(
                        [share, float(stop.requested is not None), float(out_of_time)]
                    )
                    run.train_loss_sum += loss
                    bar.step(run.progress.epoch + 1, training.epochs, loss)
                    if stopping or timed_out:
                        stop_reason = "interrupted" if stopping else (time_limit or "max_wall_time")
                        break
                if stop_reason is not None:
                    run.train_errors = ranks.reduce_errors(run.train_errors)  # saved by rank 0
                    if stop_reason == "interrupted":
                        save_last(epoch_state)
                    else:
                        close_stopped_epoch(epoch_state)
                    break

                clock.steps_done()
                valid_metrics = _validate(run, valid_batches, ranks)
                run.train_errors = ranks.reduce_errors(run.train_errors)
                row, is_best = run.finish_epoch(valid_metrics, weights, len(batches))
                row["time_s"] = elapsed_before + wall_time()
                next_state = run.order_generator.get_state()
                if is_best:
                    save(next_state, BEST)
                if run.progress.epoch % training.checkpoint_interval == 0:
                    save_last(next_state)
                if csv_log is not None:
                    csv_log.append(row)
                    plot_quietly(plot_learning_curves, run_dir / CSV_NAME, "learning curves")
                bar.write(epoch_line(row, has_stress, is_best))

                clock.epoch_closed()
                stop_reason = ranks.broadcast(
                    _stop_after_epoch(training, run.progress, stop.requested, clock)
                )
                if stop_reason is not None:
                    break
            if last_saved_epoch != run.progress.epoch:
                save_last(run.order_generator.get_state())
    finally:
        bar.close()

    stop_reason = stop_reason or "completed"
    if stop_reason == "interrupted":
        interrupted = TrainingInterrupted(run_dir / LAST)
        print(interrupted, flush=True)
        raise interrupted
    # where the run ended (the refit below loads best.pt's state into `run`)
    epochs_completed, best_epoch, steps_done = run.progress.epoch, run.progress.best_epoch, run.progress.step_in_epoch
    if training.refit_energy_reference and ranks.is_main and (run_dir / BEST).exists():
        refit_energy_reference(run, train_graphs, valid_batches, training, device, dtype, save)
    if epochs_completed == 0 and steps_done > 0:
        print(
            f"equimd: warning: training stopped ({stop_reason}) after {steps_done} "
            f"of {steps_per_epoch} steps of the first epoch; best.pt holds these weights, "
            f"validated below; raise training.{stop_reason}, or continue with --resume",
            flush=True,
        )
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=run_dir / BEST,
        last_checkpoint=run_dir / LAST,
        metrics_csv=run_dir / CSV_NAME,
        epochs_completed=epochs_completed,
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        final_metrics=dict(run.best_metrics),
    )
