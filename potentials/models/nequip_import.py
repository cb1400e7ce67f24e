"""Import a nequip ≥ 0.7 model (a `nequip-package` `.nequip.zip` or a training `.ckpt`) as an
equimd `NequIP`, without nequip installed and without running code from the file.

* `.ckpt` (Lightning): `torch.load(weights_only=True)` — torch's own restricted unpickler, which
  refuses any global it does not know by name. The weights are the EMA weights when the run
  used `EMALightningModule` (what nequip evaluates and packages), the architecture is the
  checkpoint's `hyper_parameters["model"]`.
* `.nequip.zip` (torch.package): `model/config.yaml` (the resolved training config) gives the
  architecture; `model/eager_model.pkl` goes through `NequipUnpickler` (nequip / e3nn / torch
  module classes become inert records, every other global is refused by name; the packaged
  Python sources are never imported) and its tensors are read from `.data/<key>.storage`.

The mapping onto equimd's NequIP is in `nequip_mapping.py`; options it does not cover are
refused by name (`NequipImportError`), see docs/nequip.md.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from equimd.potentials.models.nequip_mapping import (  # noqa: F401  (NequipImportError re-exported)
    NequipImportError,
    nequip_hyperparameters,
    nequip_model_from_record,
)
from equimd.potentials.models.restricted_pickle import (
    RestrictedPickleError,
    RestrictedUnpickler,
    finish,
    state_dict,
)

SOURCE_FORMAT = "nequip"
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class NequipPickleError(NequipImportError, RestrictedPickleError):
    """A packaged pickle naming a global a nequip package never contains, or malformed."""


class _StorageType:
    """`torch.DoubleStorage` etc. as named in a torch.package pickle: only its dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class NequipUnpickler(RestrictedUnpickler):
    """Restricted unpickler for a torch.package pickle: nequip, e3nn and torch module classes
    become records; storages are read from the archive's `.data/` entries."""

    record_prefixes = ("nequip.", "e3nn.", "torch.nn.modules.", "torch.fx.", "torch.jit.")
    error = NequipPickleError
    file_kind = "nequip package"

    def __init__(self, file: io.BytesIO, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(file)
        self.archive, self.root = archive, root
        self.storages: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise NequipPickleError(f"persistent object {kind!r} refused (only storages)")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise NequipPickleError(f"storage of type {storage_type!r} refused")
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.root}/.data/{key}.storage")
            except KeyError:
                raise NequipPickleError(f"storage {key} missing from the archive") from None
            untyped = torch.UntypedStorage.from_buffer(bytearray(raw), dtype=torch.uint8)
            self.storages[key] = torch.storage.TypedStorage(
                wrap_storage=untyped, dtype=storage_type.dtype, _internal=True
            )
        return self.storages[key]


def read_nequip_file(path: str | os.PathLike) -> dict[str, Any]:
    """{"kind": "package" | "checkpoint", "config": the model section of the config,
    "state": {key under `model.func.`: tensor}, "nequip_version": str | None}."""
    path = Path(path)
    if not path.is_file():
        raise NequipImportError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/model/eager_model.pkl")]
            if pickles:
                return _read_package(path, archive, pickles[0].split("/", 1)[0])
    return _read_checkpoint(path)


def _read_package(path: Path, archive: zipfile.ZipFile, root: str) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.safe_load(archive.read(f"{root}/model/config.yaml"))
        metadata = yaml.safe_load(archive.read(f"{root}/model/package_metadata.txt"))
    except KeyError as error:
        raise NequipImportError(f"{path}: not a nequip package ({error.args[0]})") from None
    try:
        unpickler = NequipUnpickler(
            io.BytesIO(archive.read(f"{root}/model/eager_model.pkl")), archive, root
        )
        models = finish(unpickler.load())
    except RestrictedPickleError as error:
        raise NequipPickleError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise NequipImportError(
            f"{path}: unreadable packaged model ({type(error).__name__}: {error})"
        ) from None
    modules = (getattr(models, "state", None) or {}).get("_modules") or {}
    if list(modules) != ["sole_model"]:
        raise NequipImportError(
            f"{path}: packages with several models ({sorted(modules)}) are not supported"
        )
    state = _under_func(state_dict(modules["sole_model"]), path)
    model_config = ((config or {}).get("training_module") or {}).get("model")
    if not isinstance(model_config, dict):
        raise NequipImportError(f"{path}: config.yaml has no training_module.model section")
    versions = (metadata or {}).get("versions") or {}
    return dict(
        kind="package", config=model_config, state=state, nequip_version=versions.get("nequip")
    )


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        named = re.search(r"GLOBAL ([\w.]+)", str(error))
        reason = (
            f"the checkpoint names the global {named.group(1)!r}, which a nequip checkpoint "
            "never contains; refusing to load it (unpickling it could run code)"
            if named
            else f"refused by torch's weights-only unpickler ({str(error).splitlines()[0]})"
        )
        raise NequipPickleError(f"{path}: {reason}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise NequipImportError(
            f"{path}: neither a nequip package (.nequip.zip) nor a nequip training checkpoint "
            f"({type(error).__name__}: {error})"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise NequipImportError(f"{path}: not a Lightning checkpoint (no state_dict)")
    hyper = checkpoint.get("hyper_parameters") or {}
    model_config = hyper.get("model")
    if not isinstance(model_config, dict):
        raise NequipImportError(f"{path}: the checkpoint has no hyper_parameters['model']")
    full = checkpoint["state_dict"]
    prefixes = {k.split(".model.func.", 1)[0] for k in full if ".model.func." in k}
    if prefixes != {"model.sole_model"}:
        raise NequipImportError(
            f"{path}: checkpoints with several models ({sorted(prefixes)}) are not supported"
        )
    state = _under_func(dict(full), path)
    if "ema.ema_weight_0" in full:
        state = _with_ema_weights(full, state, model_config, path)
    versions = (hyper.get("info_dict") or {}).get("versions") or {}
    return dict(
        kind="checkpoint", config=model_config, state=state, nequip_version=versions.get("nequip")
    )


def _under_func(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    out = {  # (e3nn's Wigner 3j buffers of compiled tensor products are constants)
        k.split("model.func.", 1)[1]: v
        for k, v in state.items()
        if "model.func." in k and "._w3j_" not in k
    }
    if not out:
        raise NequipImportError(f"{path}: no nequip model weights (model.func.*) found")
    return out


# buffers of a nequip model in its state dict; everything else is a parameter, and so are these
# when the config makes them trainable (same order as `model.parameters()` otherwise)
_BUFFER_SUFFIXES = ("_empty", "_rmax_recip", "output_mask", "tp.weight", "mul.weight")


def _with_ema_weights(
    full: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    path: Path,
) -> dict[str, torch.Tensor]:
    """The EMA copies (`ema.ema_weight_<i>`, in `model.parameters()` order) replace the raw
    training weights: nequip evaluates and packages the EMA weights."""
    trainable = {
        "bessel_weights": bool(config.get("bessel_trainable", False)),
        "scales": bool(config.get("per_type_energy_scales_trainable", False)),
        "shifts": bool(config.get("per_type_energy_shifts_trainable", False)),
    }

    def is_parameter(key: str, tensor: torch.Tensor) -> bool:
        leaf = key.rsplit(".", 1)[-1]
        if key.endswith(_BUFFER_SUFFIXES) or "._w3j_" in key or tensor.numel() == 0:
            return False
        return trainable.get(leaf, True)

    parameters = [k for k, v in state.items() if is_parameter(k, v)]
    ema = [full[f"ema.ema_weight_{i}"] for i in range(len(parameters))]
    if f"ema.ema_weight_{len(parameters)}" in full or any(
        e.shape != state[k].shape for e, k in zip(ema, parameters, strict=True)
    ):
        raise NequipImportError(
            f"{path}: the checkpoint's EMA weights do not line up with the model's parameters "
            "(an architecture option equimd does not know?)"
        )
    return {**state, **dict(zip(parameters, ema, strict=True))}


def import_nequip_file(
    path: str | os.PathLike, output_checkpoint: str | os.PathLike, dtype: str | None = None
) -> Path:
    """Convert a nequip `.nequip.zip` or `.ckpt` into an equimd checkpoint; returns its path.

    dtype: "float32" | "float64" | None (the nequip model's `model_dtype`).
    """
    from equimd.potentials.models.serialization import save_model

    record = read_nequip_file(path)
    try:
        model = nequip_model_from_record(record, getattr(torch, dtype) if dtype else None)
    except NequipImportError as error:
        raise NequipImportError(f"{path}: {error}") from None
    output_checkpoint = Path(output_checkpoint)
    save_model(
        model,
        output_checkpoint,
        source={
            "format": SOURCE_FORMAT,
            "file": str(path),
            "kind": record["kind"],
            "nequip_version": record["nequip_version"],
        },
    )
    return output_checkpoint


def is_nequip_file(path: str | os.PathLike) -> bool:
    """A `.nequip.zip` package, or a `.ckpt` file (read to tell, by `describe_nequip_file`)."""
    path = Path(path)
    if path.suffix == ".ckpt":
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/model/eager_model.pkl") for n in archive.namelist())


def describe_nequip_file(path: str | os.PathLike) -> str:
    """`equimd info` for a nequip file: what it holds and whether equimd can import it."""
    record = read_nequip_file(path)
    config = record["config"]
    try:
        nequip_hyperparameters(config)
        verdict = f"importable: equimd import nequip {path} -o model.ckpt"
    except NequipImportError as error:
        verdict = f"not importable: {error}"
    keys = ("type_names", "r_max", "num_layers", "l_max", "num_features", "parity")
    kind = "package (nequip-package)" if record["kind"] == "package" else "training checkpoint"
    lines = [
        f"{path}: nequip {kind}, nequip {record['nequip_version'] or '?'}",
        f"  model:           {config.get('_target_')}",
        *(f"  {key + ':':<16} {config.get(key)}" for key in keys if key in config),
        f"  {verdict}",
    ]
    return "\n".join(lines)
