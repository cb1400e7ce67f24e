"""Model checkpoints: weights + hyperparameters + versions (never pickled code).

File layout (a `torch.save`d dict, loadable with ``weights_only=True``)::

    {"format": "equimd-checkpoint", "format_version": 1,
     "model_type": "nequip", "hyperparameters": {...}, "dtype": "float64",
     "convolution_backend": "fused",   # models with convolutions (see below)
     "state_dict": {...}, "versions": {"equimd": ..., "torch": ..., "e3nn": ...},
     ... extra keys written by the trainer (optimizer, scheduler, epoch, EMA, ...)}

The convolution backend is not a hyperparameter: it is applied to the rebuilt model with
`equimd.potentials.nn.convolution.apply_convolution_backend` (checkpoints written before that
stored it as the hyperparameter `tp_backend`, which is read the same way).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from equimd.errors import EquimdError
from equimd.files import atomic_output
from equimd.potentials.models.base import Potential, build_model
from equimd.potentials.nn.convolution import apply_convolution_backend, convolution_backend

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
    record = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_type": model.model_type,
        "hyperparameters": model.hyperparameters(),
        "dtype": str(dtype).replace("torch.", ""),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "versions": versions(),
    }
    backend = convolution_backend(model)
    if backend is not None:
        record["convolution_backend"] = backend
    return record


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
    if is_deployed_model_file(path):
        raise CheckpointError(
            f"{path}: a deployed model file (written by `equimd deploy`), not a training "
            "checkpoint; `equimd evaluate` and `equimd md` take it as it is, while `equimd "
            "deploy` needs the training checkpoint it came from (best.pt in the run directory)"
        )
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # neither zip nor pickle
        raise CheckpointError(
            f"{path}: not an equimd checkpoint: not a file written by torch.save (it starts "
            f"with {head!r}); give a checkpoint from `equimd train` (best.pt or last.pt)"
        )
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated, or pickled objects that are not weights
        text = str(error)
        if "weights_only" in text or "Weights only" in text:
            reason = ("it holds pickled Python objects, not only weights and settings (a "
                      "mace-torch file is read with `equimd import mace`)")
        else:
            reason = (f"truncated or corrupt ({type(error).__name__}: "
                      f"{text.splitlines()[0] if text else ''})")
        raise CheckpointError(f"{path}: cannot be read as an equimd checkpoint: {reason}") from error
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


def is_deployed_model_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a model file of `equimd deploy` (a zip archive holding
    ``extra/metadata.json``, TorchScript or AOTInductor) rather than a checkpoint."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("extra/metadata.json") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def model_from_record(record: dict[str, Any], state_key: str = "state_dict") -> Potential:
    """Rebuild a model from a checkpoint record (optionally another weight set, e.g. EMA),
    with the convolution backend it was saved with."""
    hyperparameters = dict(record["hyperparameters"])
    backend = record.get("convolution_backend", hyperparameters.pop("tp_backend", None))
    model = build_model(record["model_type"], **hyperparameters)
    if backend is not None:
        apply_convolution_backend(model, backend)
    model = model.to(getattr(torch, record.get("dtype", "float64")))
    model.load_state_dict(record[state_key])
    return model


def load_model(path: str | os.PathLike) -> Potential:
    """Read a checkpoint and return the model (in its stored dtype, eval mode)."""
    return model_from_record(read_checkpoint(path)).eval()
