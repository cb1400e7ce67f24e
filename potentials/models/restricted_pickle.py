"""A restricted unpickler that never runs code from the file: the shared core of the mace-torch
(`mace_pickle`) and nequip (`nequip_import`) readers.

A pickle names globals (classes, functions) that unpickling calls. `RestrictedUnpickler`

* resolves a global name only if it is on an allow-list, and refuses every other one with
  `error` (a subclass's exception) naming it (a pickle can name any callable, e.g. `os.system`);
* turns every class under `record_prefixes` into an inert `Record`: constructing,
  `__setstate__`, item and attribute assignment only store their arguments; no code of the
  named class runs and none needs to be installed;
* rebuilds tensors with torch's own storage functions, and the few plain containers (ordered
  dict, set, bytes, numpy scalars and arrays) with local code.

Subclasses set `record_prefixes`, `error` and `file_kind` (for the refusal message);
`finish(value)` resolves numpy placeholders after loading; `state_dict(record)` flattens a
module record like `nn.Module.state_dict()`.
"""

from __future__ import annotations

import collections
import pickle
from typing import Any

import numpy as np
import torch

from equimd.errors import EquimdError


class RestrictedPickleError(EquimdError, ValueError):
    """A pickle that names a global the reader does not allow, or is malformed."""


class Record:
    """An inert stand-in for an instance of a class named in the pickle.

    qualname: "module.Class" as named in the pickle. args: constructor / `__new__` arguments.
    state: what `__setstate__` received (for an `nn.Module`, its `__dict__`). items / mapping:
    list appends and item assignments. Nothing here calls into the named class.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Record:
        record = object.__new__(cls)
        object.__setattr__(record, "args", args)
        object.__setattr__(record, "kwargs", kwargs)
        object.__setattr__(record, "state", None)
        object.__setattr__(record, "items", [])
        object.__setattr__(record, "mapping", {})
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setattr__(self, name: str, value: Any) -> None:  # pickle BUILD with slot state
        self.mapping[name] = value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.mapping[key] = value

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<record {self.qualname}>"

    @property
    def class_name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    def attr(self, name: str, default: Any = None) -> Any:
        """A plain attribute, submodule, parameter or buffer, as `getattr` on the module would."""
        state = self.state if isinstance(self.state, dict) else {}
        for table in ("_parameters", "_buffers", "_modules"):
            if name in (state.get(table) or {}):
                return state[table][name]
        return state.get(name, default)

    def has(self, name: str) -> bool:
        sentinel = object()
        return self.attr(name, sentinel) is not sentinel

    def children(self) -> list[Any]:
        """Submodules in order (ModuleList / Sequential contents)."""
        modules = (self.state or {}).get("_modules") or {}
        return list(modules.values())

    def parameters_list(self) -> list[Any]:
        """The tensors of a ParameterList, in order."""
        return list(((self.state or {}).get("_parameters") or {}).values())


class FunctionRef:
    """A function named in the pickle (activation functions): its name only, never called."""

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname
        self.__name__ = qualname.rsplit(".", 1)[-1]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RestrictedPickleError(f"{self.qualname} was referenced by the pickle, not loaded")

    def __repr__(self) -> str:
        return f"<function {self.qualname}>"


# Functions referenced as values (activations); recorded by name.
FUNCTION_NAMES = {
    "torch.nn.functional.silu",
    "torch.nn.functional.relu",
    "torch.nn.functional.gelu",
    "torch.nn.functional.softplus",
    "torch.nn.functional.sigmoid",
    "torch.nn.functional.tanh",
    "torch.tanh",
    "torch.abs",
    "torch.sigmoid",
    "torch._C._nn.silu",
    "torch._C._nn.gelu",
    "torch._C._nn.softplus",
    "torch.functional.norm",
}


def _rebuild_parameter(
    data: torch.Tensor, requires_grad: bool, backward_hooks: Any
) -> torch.Tensor:
    return data


def _rebuild_parameter_with_state(
    data: torch.Tensor, requires_grad: bool, backward_hooks: Any, state: Any
) -> torch.Tensor:
    return data


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise RestrictedPickleError(f"a tensor refers to {type(storage).__name__}, not a storage")
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RestrictedPickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}) refused")
    return text.encode("latin1")


class _NumpyDtype:
    """numpy.dtype(name, align, copy) + __setstate__(byte order, ...), numeric kinds only."""

    def __init__(self, name: str, align: bool = False, copy: bool = False) -> None:
        self.name = str(name)
        self.byteorder = "="

    def __setstate__(self, state: tuple) -> None:
        if len(state) > 1 and state[1] in "<>|=":
            self.byteorder = state[1]

    def dtype(self) -> np.dtype:
        dtype = np.dtype(self.name)
        if dtype.kind not in "biufc":
            raise RestrictedPickleError(f"numpy dtype {self.name!r} refused (numbers only)")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _numpy_scalar(dtype: _NumpyDtype, data: bytes = b"") -> Any:
    return np.frombuffer(data, dtype=dtype.dtype())[0].item()


class _NumpyArray:
    """numpy.core.multiarray._reconstruct(ndarray, shape, b'b') + __setstate__ → numbers."""

    def __init__(self, *args: Any) -> None:
        self.value: np.ndarray | None = None

    def __setstate__(self, state: tuple) -> None:
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _NumpyDtype) or not isinstance(raw, bytes | bytearray):
            raise RestrictedPickleError("numpy array with non-numeric contents refused")
        array = np.frombuffer(bytes(raw), dtype=dtype.dtype())
        self.value = array.reshape(shape, order="F" if fortran else "C").copy()


def _numpy_reconstruct(cls: Any, shape: Any, typecode: Any) -> _NumpyArray:
    return _NumpyArray()


class _TorchFunctions:
    """`torch._C._VariableFunctionsClass` as named in a pickle: the home of `torch.tanh` etc."""


def _torch_function(owner: Any, name: str) -> FunctionRef:
    """`getattr(torch._C._VariableFunctionsClass, name)`, as pickle writes `torch.tanh`: only
    on that class, only for allow-listed names; returns the name, never the function."""
    qualname = f"torch.{name}"
    if not isinstance(owner, _TorchFunctions) or qualname not in FUNCTION_NAMES:
        raise RestrictedPickleError(
            f"getattr({owner!r}, {name!r}) refused (only torch activation functions)"
        )
    return FunctionRef(qualname)


SAFE_GLOBALS: dict[str, Any] = {
    "builtins.getattr": _torch_function,
    "torch._C._VariableFunctionsClass": _TorchFunctions(),
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "__builtin__.set": set,
    "__builtin__.frozenset": frozenset,
    "_codecs.encode": _encode,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch.Size": torch.Size,
    "numpy.dtype": _NumpyDtype,
    "numpy.ndarray": np.ndarray,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.core.multiarray._reconstruct": _numpy_reconstruct,
    "numpy._core.multiarray._reconstruct": _numpy_reconstruct,
}
for _name in (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
):
    SAFE_GLOBALS[f"torch.{_name}"] = getattr(torch, _name)


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only allow-listed globals (see the module docstring)."""

    # module prefixes whose classes become records; set by subclasses
    record_prefixes: tuple[str, ...] = ("torch.nn.modules.",)
    error: type[Exception] = RestrictedPickleError
    file_kind = "model file"
    _record_classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname in SAFE_GLOBALS:
            return SAFE_GLOBALS[qualname]
        if qualname in FUNCTION_NAMES:
            return FunctionRef(qualname)
        if module.startswith(self.record_prefixes) or module in ("torch.nn.parameter",):
            if not name.isidentifier():
                raise self.error(f"global {qualname!r} refused (not a class name)")
            return record_class(qualname)
        raise self.error(
            f"the pickle names the global {qualname!r}, which a {self.file_kind} never "
            "contains; refusing to load it (unpickling it could run code)"
        )


def record_class(qualname: str) -> type:
    """The (cached) `Record` subclass standing for `qualname`."""
    cls = RestrictedUnpickler._record_classes.get(qualname)
    if cls is None:
        cls = type(qualname.rsplit(".", 1)[-1], (Record,), {"qualname": qualname})
        RestrictedUnpickler._record_classes[qualname] = cls
    return cls


def finish(value: Any) -> Any:
    """Replace numpy placeholders by arrays, recursively through containers and records."""
    seen: set[int] = set()

    def visit(item: Any) -> Any:
        if isinstance(item, _NumpyArray):
            return item.value
        if id(item) in seen:
            return item
        if isinstance(item, dict):
            seen.add(id(item))
            for key in list(item):
                item[key] = visit(item[key])
        elif isinstance(item, list):
            seen.add(id(item))
            item[:] = [visit(v) for v in item]
        elif isinstance(item, tuple):
            return type(item)(visit(v) for v in item) if type(item) is tuple else item
        elif isinstance(item, Record):
            seen.add(id(item))
            object.__setattr__(item, "args", tuple(visit(v) for v in item.args))
            object.__setattr__(item, "state", visit(item.state))
            for key in list(item.mapping):
                item.mapping[key] = visit(item.mapping[key])
            item.items[:] = [visit(v) for v in item.items]
        return item

    return visit(value)


def state_dict(record: Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """`nn.Module.state_dict()` of a module record: parameters and persistent buffers."""
    out: dict[str, torch.Tensor] = {}
    state = record.state if isinstance(record.state, dict) else {}
    for name, tensor in (state.get("_parameters") or {}).items():
        if isinstance(tensor, torch.Tensor):
            out[prefix + name] = tensor
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, tensor in (state.get("_buffers") or {}).items():
        if isinstance(tensor, torch.Tensor) and name not in skip:
            out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, Record):
            out.update(state_dict(child, f"{prefix}{name}."))
    return out
