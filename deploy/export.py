"""Export a trained potential to a self-contained model file (`equimd deploy`).

    export_model("run/best.ckpt", "model.pt", dtype="float32", format="torchscript")

Two formats, one loader (`equimd.deploy.load`), same call signature and outputs:

- ``torchscript`` (default): `equimd.deploy.module.DeployedPotential` scripted; the neighbor list
  runs inside the graph; loadable from C++ / OpenMM-Torch / LAMMPS-style hosts.
- ``aoti``: the energy-and-forces graph traced (make_fx, symbolic shapes) and compiled ahead
  of time by AOTInductor into a ``.pt2`` package; the neighbor list is computed by the same
  TorchScript cell list, stored in the package, before the compiled graph (see `equimd.deploy.aoti`).

Both files are zip archives carrying ``extra/metadata.json`` (`equimd.deploy.metadata`). The file is
written atomically (temp file + fsync + rename).

Convolution backend of the file (`tp_backend`; the weights are the same for every backend): by
default the model's own, except an optional backend ("cueq", whose GPU kernels are custom ops
the loading machine would need too; "compiled", equimd's C++ kernel, `equimd kernels build`),
which is exported as the portable default ("fused"). Pass `tp_backend="cueq"` or
`tp_backend="compiled"` to keep it (a GPU-only file when cueq's kernels were used; a
TorchScript file calling ``torch.ops.equimd.receiver_sums``, which `equimd.deploy.load` loads
the library for, for "compiled"; an AOTInductor file of a "compiled" model holds the fused
path, its tracing uses symbolic shapes). Another
backend than the model's is applied to a copy with
`equimd.potentials.nn.convolution.apply_convolution_backend`; the metadata records the file's
backend (``model.convolution_backend``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from equimd.deploy.aoti import aoti_package_bytes
from equimd.deploy.metadata import (
    KINDS,
    METADATA_FILE,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    UNITS,
    dump_metadata,
    receptive_field,
)
from equimd.deploy.rebuild import rebuild_model
from equimd.files import atomic_write_bytes
from equimd.potentials.models.base import Potential
from equimd.potentials.models.serialization import model_dtype
from equimd.potentials.nn.convolution import (
    DEFAULT_BACKEND,
    OPTIONAL_BACKENDS,
    apply_convolution_backend,
    convolution_backend,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def export_model(
    checkpoint_or_model: str | os.PathLike | Potential,
    output_path: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    format: str = "torchscript",
    *,
    device: str = "cpu",
    state_key: str = "state_dict",
    tp_backend: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a deployed model file and return its path.

    checkpoint_or_model: a checkpoint path (`equimd.potentials.models.serialization`) or a
        `Potential` (not modified: the export works on a rebuilt copy).
    dtype: "float32" (default, for MD) or "float64" (or torch.float32 / torch.float64); other
        dtypes (float16, bfloat16, integers) raise ValueError.
    format: "torchscript" or "aoti".
    device: for "aoti", the device the package is compiled for (TorchScript files run on
        any device; `equimd.deploy.load(path, device=...)` moves them).
    state_key: which weights of a checkpoint to export (e.g. an EMA copy stored by the trainer).
    tp_backend: convolution backend of the exported graph (default: see the module docstring).
    progress: called with short status lines (the CLI passes `print`).
    """
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueError(
            f"dtype must be one of {sorted(DTYPES)}, got {dtype!r} (half precision and integer "
            "dtypes are not supported: forces and the neighbor list need float32 or float64)"
        )
    if format not in KINDS:
        raise ValueError(f"format must be one of {list(KINDS)}, got {format!r}")
    say = progress or (lambda message: None)
    output_path = Path(output_path)
    source = None if isinstance(checkpoint_or_model, Potential) else str(checkpoint_or_model)
    model = resolve_model(checkpoint_or_model, state_key)
    backend, own = export_tp_backend(model, tp_backend), convolution_backend(model)
    if backend != own:
        say(f"convolution backend {own} -> {backend} (same weights)")
        model = with_tp_backend(model, backend)
    metadata = build_metadata(model, dtype, format, device, source)
    # model construction and e3nn's tracing draw random numbers: keep the caller's RNG as is
    with torch.random.fork_rng(devices=[]):
        if format == "torchscript":
            say(f"scripting {model.model_type} ({dtype}) ...")
            data = torchscript_bytes(rebuild_model(model, DTYPES[dtype]), metadata)
        else:
            say(f"tracing and compiling {model.model_type} ({dtype}) with AOTInductor ...")
            data = aoti_package_bytes(model, DTYPES[dtype], torch.device(device), metadata,
                                      say=progress)
    atomic_write_bytes(output_path, data, "model file")
    say(f"wrote {output_path} ({len(data) / 1e6:.2f} MB, {format}, {dtype})")
    return output_path


def resolve_model(checkpoint_or_model: str | os.PathLike | Potential, state_key: str = "state_dict") -> Potential:
    """A `Potential` from itself or from a checkpoint file (weights `state_key`)."""
    if isinstance(checkpoint_or_model, Potential):
        return checkpoint_or_model
    from equimd.potentials.models.serialization import model_from_record, read_checkpoint

    record = read_checkpoint(checkpoint_or_model)
    if state_key not in record:
        raise KeyError(
            f"{checkpoint_or_model}: checkpoint has no weights {state_key!r}; "
            f"available keys: {sorted(k for k in record if 'state' in k)}"
        )
    return model_from_record(record, state_key).eval()


def export_tp_backend(model: Potential, requested: str | None = None) -> str | None:
    """The convolution backend a file exported from `model` uses (module docstring; None: the
    model has no convolutions)."""
    if requested is not None:
        return requested
    backend = convolution_backend(model)
    return DEFAULT_BACKEND if backend in OPTIONAL_BACKENDS else backend


def with_tp_backend(model: Potential, backend: str) -> Potential:
    """A frozen copy of `model` (same weights and dtype) whose convolutions use `backend`."""
    return apply_convolution_backend(rebuild_model(model, model_dtype(model)), backend)


def build_metadata(
    model: Potential, dtype: str, kind: str, device: str = "cpu", source: str | None = None
) -> dict[str, Any]:
    """The metadata dict written to ``extra/metadata.json`` (schema in docs/deploy.md)."""
    from equimd.checks import symbol
    from equimd.potentials.models.serialization import versions

    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "kind": kind,
        "species": {
            "numbers": [int(z) for z in model.species],
            "symbols": [symbol(int(z)) for z in model.species],
        },
        "r_max": float(model.r_max),
        # Å from an atom over which its energy depends (None: unknown; LAMMPS ghost shell)
        "receptive_field": receptive_field(model.model_type, model.hyperparameters()),
        "dtype": dtype,
        "device": torch.device(device).type if kind == "aoti" else "any",
        "units": dict(UNITS),
        "model": {
            "type": model.model_type,
            "hyperparameters": model.hyperparameters(),
            "convolution_backend": convolution_backend(model),
        },
        "versions": versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "signature": (
            "forward(positions [N,3] Å, numbers [N] int64, cell [3,3] Å, pbc [3] bool) -> "
            "{energy [], atomic_energies [N], forces [N,3], stress [3,3], virial [3,3]}"
            if kind == "torchscript"
            else "compiled(positions [N,3], numbers [N], edge_index [2,E], shifts [E,3], "
            "cell [3,3]) -> (energy [], atomic_energies [N], forces [N,3], stress [3,3], "
            "virial [3,3]); neighbor list in extra/neighbor_list.torchscript.b64"
        ),
    }


def torchscript_bytes(model: Potential, metadata: dict[str, Any]) -> bytes:
    """Script `DeployedPotential(ForceField(model))` and serialize it with its metadata."""
    import e3nn.util.jit

    from equimd.deploy.module import DeployedPotential
    from equimd.potentials.forcefield import ForceField

    module = DeployedPotential(ForceField(e3nn.util.jit.compile(model)), model.r_max, model.species)
    scripted = torch.jit.script(module.eval())
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={METADATA_FILE: dump_metadata(metadata)})
    return buffer.getvalue()
