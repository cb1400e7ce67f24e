"""The live objects of one training run (model, ForceField, EMA, optimiser, scheduler,
data-order generator, progress), built fresh or restored from a checkpoint, and one
optimisation step. Used by `equimd.potentials.train.trainer.train`."""

from __future__ import annotations

from typing import Any

import torch

from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.nn.convolution import apply_convolution_backend
from equimd.potentials.train.batching import LabelledBatch
from equimd.potentials.train.checkpoint import (
    TrainProgress,
    restore_rng_states,
    rng_states,
    training_record,
)
from equimd.potentials.train.config import TrainConfig
from equimd.potentials.train.distributed import Ranks
from equimd.potentials.train.ema import ExponentialMovingAverage
from equimd.potentials.train.loss import LabelCounts, LossWeights, loss_from_metrics, weighted_loss
from equimd.potentials.train.metrics import ErrorAccumulator
from equimd.potentials.train.statistics import DataStatistics


class TrainingRun:
    """The live objects of one training run (built fresh or restored from a checkpoint)."""

    def __init__(
        self,
        config: TrainConfig,
        statistics: DataStatistics,
        hyperparameters: dict[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        ranks: Ranks | None = None,
    ) -> None:
        training = config.training
        self.ranks = ranks or Ranks()
        self.config = config
        self.statistics = statistics
        torch.manual_seed(training.seed)

        def new_model() -> torch.nn.Module:
            model = build_model(
                config.model.model_type, species=statistics.species, **hyperparameters
            )
            if config.model.tp_backend is not None:
                apply_convolution_backend(model, config.model.tp_backend)
            return model.to(device=device, dtype=dtype)

        self.model = new_model()
        if training.zero_readout:  # a resumed run loads its weights over this afterwards
            self.model.start_from_constant_energy()
        self.model.scale_shift.set_statistics(statistics.e0, statistics.scale, statistics.shift)
        self.forcefield = ForceField(self.model)
        # what the optimisation step calls: DistributedDataParallel over the ranks (itself on
        # one process); its gradient hooks average the gradients during loss.backward()
        self.train_forcefield = self.ranks.wrap(self.forcefield)
        self.ema = (
            ExponentialMovingAverage(self.model, new_model(), training.ema_decay)
            if training.ema_decay is not None
            else None
        )
        self.eval_forcefield = ForceField(self.ema.averaged if self.ema else self.model)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=training.lr,
            amsgrad=training.optimizer == "amsgrad",
            weight_decay=training.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode="min",
            factor=training.scheduler_factor,
            patience=training.scheduler_patience,
            min_lr=training.min_lr,
        )
        self.order_generator = torch.Generator().manual_seed(training.seed)
        self.progress = TrainProgress()
        self.train_errors = ErrorAccumulator()
        self.train_loss_sum = 0.0
        self.best_metrics: dict[str, float] = {}

    def restore(self, record: dict[str, Any]) -> None:
        """Load weights, optimiser, scheduler, EMA, progress and RNG states from a checkpoint."""
        self.model.load_state_dict(record["raw_state_dict"])
        if self.ema is not None:
            self.ema.load_state_dict(record["ema"], record["state_dict"])
        self.optimizer.load_state_dict(record["optimizer"])
        self.scheduler.load_state_dict(record["scheduler"])
        self.order_generator.set_state(record["order_generator"])
        self.progress = TrainProgress(**record["progress"])
        self.train_errors.load_state_dict(record["train_accumulator"])
        self.train_loss_sum = float(record["train_loss_sum"])
        self.best_metrics = dict(record.get("best_metrics", {}))
        restore_rng_states(record["rng"])
        if not self.ranks.is_main:  # rank 0 holds the sums of all ranks (see `record`)
            self.train_errors = ErrorAccumulator()

    def record(self, split_indices: dict[str, list[int]], order_state: torch.Tensor) -> dict:
        """A resumable checkpoint of the current state (`order_state`: data-order generator
        state at the start of epoch `progress.epoch`)."""
        return training_record(
            self.model,
            self.ema.averaged if self.ema else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            ema=self.ema.state_dict() if self.ema else None,
            progress=self.progress.to_dict(),
            rng=rng_states(),
            order_generator=order_state,
            train_accumulator=self.train_errors.state_dict(),
            train_loss_sum=self.train_loss_sum,
            best_metrics=dict(self.best_metrics),
            split=split_indices,
            statistics=self.statistics.to_dict(),
            config=self.config.to_dict(),
        )

    def finish_epoch(
        self, valid_metrics: dict[str, float], weights: LossWeights, num_batches: int
    ) -> tuple[dict[str, Any], bool]:
        """Close an epoch: step the plateau scheduler on the validation loss, update the best/stale
        counters, reset the training accumulators. Returns the metrics.csv row and whether
        this epoch is the best so far."""
        valid_loss = loss_from_metrics(valid_metrics, weights)
        if self.config.training.schedule == "plateau":  # "cosine" sets the lr every step
            self.scheduler.step(valid_loss)
        progress = self.progress
        progress.epoch += 1
        progress.step_in_epoch = 0
        is_best = self._judge(valid_loss, valid_metrics, progress.epoch)
        if not is_best:
            progress.stale_epochs += 1
        row = self._row(progress.epoch, valid_loss, valid_metrics, num_batches)
        self.train_errors = ErrorAccumulator()
        self.train_loss_sum = 0.0
        return row, is_best

    def close_stopped_epoch(
        self, valid_metrics: dict[str, float], weights: LossWeights
    ) -> tuple[dict[str, Any], bool]:
        """Close a run that a time limit stopped inside epoch `progress.epoch + 1`, after
        `progress.step_in_epoch` steps: the weights it reached compete for best.pt like an
        epoch's. The epoch stays open (counters, accumulators and scheduler unchanged), so a
        resumed run continues it and its metrics.csv row, labelled with that epoch, is replaced
        when the epoch completes."""
        valid_loss = loss_from_metrics(valid_metrics, weights)
        epoch = self.progress.epoch + 1
        is_best = self._judge(valid_loss, valid_metrics, epoch)
        return self._row(epoch, valid_loss, valid_metrics, max(self.progress.step_in_epoch, 1)), is_best

    def _judge(self, valid_loss: float, valid_metrics: dict[str, float], epoch: int) -> bool:
        """Whether `valid_loss` is the best so far; if so, remember it as epoch `epoch`'s."""
        progress = self.progress
        if valid_loss >= progress.best_loss:
            return False
        progress.best_loss, progress.best_epoch, progress.stale_epochs = valid_loss, epoch, 0
        self.best_metrics = valid_metrics
        return True

    def _row(
        self, epoch: int, valid_loss: float, valid_metrics: dict[str, float], num_batches: int
    ) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": self.train_loss_sum / num_batches,
            **{f"train_{k}": v for k, v in self.train_errors.compute().items()},
            "valid_loss": valid_loss,
            **{f"valid_{k}": v for k, v in valid_metrics.items()},
        }

    def train_step(
        self,
        batch: LabelledBatch,
        weights: LossWeights,
        clip: float | None,
        counts: LabelCounts | None = None,
        gradient_factor: float = 1.0,
    ) -> float:
        """One optimisation step on `batch`, this rank's part of a global batch whose label
        counts are `counts` (None: `batch` is the whole batch). The gradient of
        `gradient_factor` × loss is taken (the world size, so that DDP's average over the ranks
        is the gradient of the global batch; 0 for a placeholder batch of a rank without
        structures). Returns this rank's share of the global batch loss."""
        counts = counts if counts is not None else LabelCounts.of([batch])
        self.model.train()
        predictions = self.train_forcefield(
            batch.graph,
            compute_forces=weights.forces > 0 and counts.forces > 0,
            compute_stress=weights.stress > 0 and counts.stress > 0,
            training=True,
        )
        loss = weighted_loss(predictions, batch, weights, counts)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * gradient_factor if gradient_factor != 1.0 else loss).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if gradient_factor != 0.0:
            self.train_errors.update(predictions, batch)
        return float(loss.detach()) if gradient_factor != 0.0 else 0.0


def validation_errors(forcefield: ForceField, batches: list[LabelledBatch]) -> ErrorAccumulator:
    """Errors of `forcefield` on pre-collated batches (forces always, stress where labelled)."""
    errors = ErrorAccumulator()
    forcefield.eval()
    for batch in batches:
        with torch.enable_grad():
            predictions = forcefield(
                batch.graph, compute_forces=True, compute_stress=batch.has_stress, training=False
            )
        errors.update({k: v.detach() for k, v in predictions.items()}, batch)
    return errors
