"""Model checkpoints: weights + hyperparameters + versions (never pickled code).

File layout (a `torch.save`d dict, loadable with ``weights_only=True``)::

    {"format": "equimd-checkpoint", "format_version": 1,
     "model_type": "nequip", "hyperparameters": {...}, "dtype": "float64",
     "state_dict": {...}, "versions": {"equimd": ..., "torch": ..., "e3nn": ...},
     ... extra keys written by the trainer (optimizer, scheduler, epoch, EMA, ...)}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from equimd.errors import EquimdError
from equimd.files import atomic_output
from equimd.potentials.models.base import Potential, build_model

CHECKPOINT_FORMAT = "equimd-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(EquimdError, ValueError):
    """A checkpoint that cannot be read: missing, corrupt, or of another format/version."""


def versions() -> dict[str, str]:
    import e3nn

    from equimd.potentials import __version__

    return {"equimd": str(__version__), "torch": str(torch.__version__), "e3nn": str(e3nn.__version__)}


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of a model's weights."""
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def model_record(model: Potential) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds the model."""
    dtype = model_dtype(model)
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_type": model.model_type,
        "hyperparameters": model.hyperparameters(),
        "dtype": str(dtype).replace("torch.", ""),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "versions": versions(),
    }


def save_model(model: Potential, path: str | os.PathLike, **extra: Any) -> None:
    """Write a checkpoint atomically (extra keys are stored alongside the model record); see
    `save_record`."""
    save_record({**model_record(model), **extra}, path)


def save_record(record: dict[str, Any], path: str | os.PathLike) -> None:
    """`torch.save` a checkpoint record through `equimd.files.atomic_output`: a crash leaves the
    old file or the new one; a failed write (disk full, read-only directory, ...) raises
    `OutputWriteError` ("could not write checkpoint PATH: REASON") and leaves the old file."""
    with atomic_output(path, "checkpoint") as tmp, open(tmp, "wb") as handle:
        torch.save(record, handle)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint dict; raise `CheckpointError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated, or not a torch file
        raise CheckpointError(
            f"{path}: cannot be read as an equimd checkpoint (corrupt, truncated or another "
            f"format): {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(
            f"{path}: not an equimd checkpoint (format {found!r}); a deployed model file is "
            "loaded with equimd.deploy.load, a mace-torch file is imported with `equimd import mace`"
        )
    if record.get("format_version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {record['format_version']} is newer than this "
            f"equimd supports ({CHECKPOINT_VERSION}); upgrade equimd"
        )
    return record


def model_from_record(record: dict[str, Any], state_key: str = "state_dict") -> Potential:
    """Rebuild a model from a checkpoint record (optionally another weight set, e.g. EMA)."""
    model = build_model(record["model_type"], **record["hyperparameters"])
    dtype = getattr(torch, record.get("dtype", "float64"))
    model = model.to(dtype)
    model.load_state_dict(record[state_key])
    return model


def load_model(path: str | os.PathLike) -> Potential:
    """Read a checkpoint and return the model (in its stored dtype, eval mode)."""
    return model_from_record(read_checkpoint(path)).eval()
