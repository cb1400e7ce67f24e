"""Training checkpoints: everything needed to continue a run bit-exactly (CPU, fixed seed).

A training checkpoint is a model checkpoint (`equimd.potentials.models.serialization.model_record`,
so `load_model` and `equimd deploy` read it directly) with extra keys::

    state_dict          weights to use: the EMA weights when EMA is on, else the raw weights
    raw_state_dict      the optimised (non-averaged) weights
    optimizer, scheduler, ema            their state dicts
    progress            TrainProgress as a dict (epoch, step in epoch, best loss, ...)
    rng                 torch (CPU, CUDA), numpy and python RNG states
    order_generator     state of the data-order generator at the start of the current epoch
    train_accumulator   partial training metrics of an interrupted epoch
    split               training/validation frame indices (checked on resume)
    statistics          DataStatistics (E0s, scale, shift, avg_num_neighbors)
    config              the TrainConfig as a dict

Files are written atomically (temp file + fsync + rename).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from equimd.potentials.models.serialization import model_record, read_checkpoint, save_record


@dataclass
class TrainProgress:
    """Where a run stands.

    epoch:          completed epochs
    step_in_epoch:  optimisation steps already done in epoch `epoch` (0 at an epoch boundary)
    best_loss:      best validation loss so far (inf before the first validation)
    best_epoch:     epoch (1-based) of the best validation loss, 0 before the first
    stale_epochs:   epochs since the validation loss last improved (early stopping)
    elapsed:        training wall time summed over all invocations [s]
    """

    epoch: int = 0
    step_in_epoch: int = 0
    best_loss: float = float("inf")
    best_epoch: int = 0
    stale_epochs: int = 0
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rng_states() -> dict[str, Any]:
    """Global RNG states of torch (CPU and CUDA), numpy and python (weights_only-loadable)."""
    numpy_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": _python_state_to_tensors(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of `rng_states`."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _python_state_to_tensors(state: tuple) -> tuple:
    version, internal, gauss = state
    return (version, torch.tensor(internal, dtype=torch.int64), gauss)


def training_record(
    model: torch.nn.Module,
    averaged: torch.nn.Module | None,
    **extra: Any,
) -> dict[str, Any]:
    """A checkpoint dict: the model record (EMA weights as `state_dict` if given), the raw
    weights as `raw_state_dict`, and `extra` keys (optimizer, progress, rng, ...)."""
    record = model_record(averaged if averaged is not None else model)
    record["raw_state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    record.update(extra)
    return record


def save_checkpoint(record: dict[str, Any], path: str | Path) -> Path:
    """Write atomically; returns the path."""
    save_record(record, path)
    return Path(path)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by the trainer (with the keys needed to resume)."""
    record = read_checkpoint(path)
    missing = [k for k in ("raw_state_dict", "optimizer", "progress", "rng") if k not in record]
    if missing:
        from equimd.potentials.models.serialization import CheckpointError

        raise CheckpointError(
            f"{path}: a model checkpoint without training state ({', '.join(missing)} missing); "
            "it cannot be resumed"
        )
    return record
