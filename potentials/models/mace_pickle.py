"""Read a mace-torch `.model` file (a pickled module) without mace-torch, e3nn 0.4 or running code.

A `.model` file is `torch.save(model)`: a zip archive with `data.pkl` (the pickled module
tree) and one `data/<key>` entry per tensor storage. `torch.load` reads the archive and the
storages; the pickle itself goes through `RestrictedUnpickler` here, which

* resolves a global name only if it is on the allow-list below, and refuses every other one
  with `MacePickleError` naming it (a pickle can name any callable, e.g. `os.system`, and
  unpickling calls it);
* turns every mace-torch, e3nn and torch module class into an inert `Record`: constructing,
  `__setstate__`, item and attribute assignment only store their arguments; no mace, e3nn or
  torch.nn code runs and none needs to be installed;
* rebuilds tensors with torch's own storage functions, and the few plain containers (ordered
  dict, set, bytes, numpy scalars and arrays) with local code.

`load_records(path)` returns the unpickled object: for a model, a `Record` tree mirroring the
module tree (`record.state["_modules"]`, `["_parameters"]`, `["_buffers"]` and the plain
attributes); `state_dict(record)` flattens it like `nn.Module.state_dict()`.
"""

from __future__ import annotations

import os
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from equimd.errors import EquimdError
from equimd.potentials.models.restricted_pickle import (  # noqa: F401  (re-exported)
    FUNCTION_NAMES,
    SAFE_GLOBALS,
    FunctionRef,
    Record,
    RestrictedPickleError,
    RestrictedUnpickler,
    finish,
    record_class,
    state_dict,
)


class MaceImportError(EquimdError, ValueError):
    """A file that is not a mace-torch model, or a mace model with an option equimd does not
    implement (the message names it)."""


class MacePickleError(MaceImportError, RestrictedPickleError):
    """A pickle that names a global a mace-torch model file never contains, or is malformed."""


# Module prefixes whose classes become records (mace-torch, e3nn, torch modules and torch.fx
# graph containers; TorchScript code that e3nn stores is kept as bytes, never compiled).
RECORD_MODULES = ("mace.", "e3nn.", "torch.nn.modules.", "torch.fx.", "torch.jit.")


class MaceUnpickler(RestrictedUnpickler):
    """The restricted unpickler with mace-torch, e3nn and torch module classes as records."""

    record_prefixes = RECORD_MODULES
    error = MacePickleError
    file_kind = "mace-torch model file"


# `torch.load(pickle_module=...)` wants a module with `Unpickler` (and `load` for old files)
_PICKLE_MODULE = types.ModuleType("equimd_restricted_pickle")
_PICKLE_MODULE.Unpickler = MaceUnpickler  # type: ignore[attr-defined]
_PICKLE_MODULE.load = lambda file, **kwargs: MaceUnpickler(file, **kwargs).load()  # type: ignore[attr-defined]
_PICKLE_MODULE.__name__ = "pickle"
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER


def load_records(path: str | os.PathLike) -> Any:
    """Unpickle a torch-saved file with `MaceUnpickler` (records, tensors on CPU).

    Raises `MacePickleError` naming a refused global, or saying why the file is not readable.
    """
    path = Path(path)
    if not path.is_file():
        raise MacePickleError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        # a plain pickle, or torch's legacy format (a magic-number pickle, then the rest)
        try:
            with open(path, "rb") as file:
                first = MaceUnpickler(file).load()
        except RestrictedPickleError as error:
            raise MacePickleError(f"{path}: {error}") from None
        except Exception as error:
            raise MacePickleError(
                f"{path}: not a readable torch/mace-torch file ({type(error).__name__}: {error})"
            ) from None
        if first != _LEGACY_MAGIC_NUMBER:
            return finish(first)
    previous = os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
    try:
        value = torch.load(
            path, map_location="cpu", pickle_module=_PICKLE_MODULE, weights_only=False
        )
    except RestrictedPickleError as error:
        raise MacePickleError(f"{path}: {error}") from None
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ) as error:
        raise MacePickleError(
            f"{path}: not a readable torch/mace-torch file ({type(error).__name__}: {error})"
        ) from None
    finally:
        if previous is not None:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous
    return finish(value)
