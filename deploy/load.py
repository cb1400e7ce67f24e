"""Load a deployed model file (TorchScript or AOTInductor) behind one call signature.

    model = equimd.deploy.load("model.pt")
    out = model(positions, numbers, cell, pbc)   # energy [] eV, forces [N, 3] eV/Å, ...

Only torch (and, for AOTInductor packages, torch._inductor's package loader) is imported:
nothing from `potentials`, nothing from training. Every way a file can be unusable —
missing, truncated, corrupt, another format version, a training checkpoint, a foreign
TorchScript module — raises `ModelFileError` with the reason and the fix; a device that this
machine does not have raises `DeviceError`. A structure the model cannot evaluate (bad shapes,
non-finite positions, a zero or degenerate periodic cell, coincident atoms) raises
`StructureError` / `CellError` naming the structure and the atoms or cell vectors at fault,
instead of returning NaN or silently wrong numbers.
"""

from __future__ import annotations

import base64
import contextlib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from equimd.allocator import keep_freed_memory
from equimd.checks import check_cell, check_species, symbol
from equimd.deploy.errors import CellError, ModelFileError, StructureError
from equimd.deploy.metadata import METADATA_FILE, parse_metadata
from equimd.devices import check_device

# Name of the extra file holding the TorchScript neighbor list inside an AOTInductor package
# (base64 text: PT2 extra files are strings).
NEIGHBOR_LIST_FILE = "neighbor_list.torchscript.b64"


def repeatable_execution() -> contextlib.AbstractContextManager[None]:
    """Run TorchScript calls in this thread on one plan, the same for every call.

    TorchScript's profiling executor runs a freshly loaded module's first call on a profiling
    plan and later calls on an optimised plan, and the two round differently (forces about
    1e-14 relative apart). An MD run restarted in a new process would then evaluate its first
    step on the other plan than the uninterrupted run did, and the two trajectories would part
    in the last bit. Inside this context no call is optimised (torch.jit.optimized_execution
    (False); the switch is per thread): results are a function of the inputs alone. On the
    CPU this plan is also the faster one for these models (no CPU fusion; 25 % faster OpenMM
    steps on 2048 Cu atoms, docs/md.md).
    """
    return torch.jit.optimized_execution(False)


class _Runner(Protocol):
    """What a format contributes: one computation on prepared tensors."""

    module: Any

    def compute(
        self,
        positions: Tensor,
        numbers: Tensor,
        cell: Tensor,
        pbc: Tensor,
        compute_forces: bool,
        compute_stress: bool,
    ) -> dict[str, Tensor]: ...


class _TorchScriptRunner:
    """TorchScript format: `DeployedPotential.compute`, neighbor list inside the graph."""

    def __init__(self, path: Path, device: torch.device) -> None:
        try:
            self.module = torch.jit.load(str(path), map_location=device)
        except Exception as error:  # corrupt records, unsupported TorchScript version, ...
            raise ModelFileError(
                f"{path}: the TorchScript model cannot be loaded ({_first_line(error)}); "
                "the file is corrupt or was written by an incompatible torch — export it again "
                "with `equimd deploy`"
            ) from error
        self.module.eval()

    def compute(
        self,
        positions: Tensor,
        numbers: Tensor,
        cell: Tensor,
        pbc: Tensor,
        compute_forces: bool,
        compute_stress: bool,
    ) -> dict[str, Tensor]:
        return self.module.compute(positions, numbers, cell, pbc, compute_forces, compute_stress)


class _AOTIRunner:
    """AOTInductor format: the compiled graph takes a precomputed neighbor list.

    The neighbor list is the same TorchScript cell list as in the TorchScript format, stored
    in the package (``extra/neighbor_list.torchscript.b64``) and run before the compiled
    graph. The compiled graph always computes forces, stress and virial; the ones not asked
    for are dropped.
    """

    def __init__(self, path: Path, device: torch.device, metadata: dict[str, Any], extra: str) -> None:
        compiled_for = torch.device(metadata.get("device", "cpu"))
        if compiled_for.type != device.type:
            raise ModelFileError(
                f"{path}: this AOTInductor package was compiled for {compiled_for.type}, not "
                f"{device.type}; export it again with `equimd deploy --format aoti --device "
                f"{device.type}`, or use the TorchScript format (runs on any device)"
            )
        try:
            from torch._inductor.package import load_package

            self.module = load_package(str(path), device_index=_device_index(device))
            self.neighbor_list = torch.jit.load(
                io.BytesIO(base64.b64decode(extra)), map_location=device
            )
        except Exception as error:
            raise ModelFileError(
                f"{path}: the AOTInductor package cannot be loaded ({_first_line(error)}); it is "
                "corrupt or was compiled by another torch version — export it again"
            ) from error

    def compute(
        self,
        positions: Tensor,
        numbers: Tensor,
        cell: Tensor,
        pbc: Tensor,
        compute_forces: bool,
        compute_stress: bool,
    ) -> dict[str, Tensor]:
        edge_index, shifts = self.neighbor_list(positions, cell, pbc)
        # the compiled kernels assume the dense strides of the traced example inputs
        inputs = (positions, numbers, edge_index, shifts.to(positions.dtype), cell)
        energy, atomic_energies, forces, stress, virial = self.module(
            *(tensor.contiguous() for tensor in inputs)
        )
        out = {"energy": energy, "atomic_energies": atomic_energies}
        if compute_forces:
            out["forces"] = forces
        if compute_stress:
            out["stress"] = stress
            out["virial"] = virial
        return out


class DeployedModel:
    """A loaded model file: `model(positions, numbers, cell, pbc)` → dict of tensors.

    Attributes:
        module:   the TorchScript module (`torch.jit.ScriptModule`) or the AOTInductor
                  compiled model.
        metadata: the file's metadata dict (see docs/deploy.md).
        species:  atomic numbers the model knows; symbols: their element symbols.
        r_max:    cutoff radius, Å.
        dtype:    the model's floating dtype; inputs are cast to it, outputs are in it.
        kind:     "torchscript" or "aoti".
        device:   where the model runs.
    """

    def __init__(self, runner: _Runner, metadata: dict[str, Any], path: Path, device: torch.device) -> None:
        self._runner = runner
        self.module = runner.module
        self.metadata = metadata
        self.path = path
        self.device = device
        self.species: list[int] = [int(z) for z in metadata["species"]["numbers"]]
        self.symbols: list[str] = list(metadata["species"]["symbols"])
        self.r_max = float(metadata["r_max"])
        self.dtype: torch.dtype = getattr(torch, metadata["dtype"])
        self.kind: str = metadata["kind"]

    def __repr__(self) -> str:
        model = self.metadata.get("model", {}).get("type", "?")
        return (
            f"DeployedModel({str(self.path)!r}, {model}, {self.kind}, {self.metadata['dtype']}, "
            f"species={self.symbols}, r_max={self.r_max} Å, device={self.device})"
        )

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:
        """Pickled as (path, device, dtype): unpickling loads the file again (multiprocessing,
        dask, workflow engines); the compiled module itself is never pickled."""
        return _reload, (str(self.path), str(self.device), self.metadata["dtype"])

    def to(self, dtype: torch.dtype) -> DeployedModel:
        """A new `DeployedModel` in another floating dtype (TorchScript only: the file is
        loaded again and its weights converted; an AOTInductor package has one dtype)."""
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if self.kind != "torchscript":
            raise ValueError(f"{self.path}: an AOTInductor package cannot change dtype")
        runner = _TorchScriptRunner(self.path, self.device)
        runner.module.to(dtype)
        name = str(dtype).replace("torch.", "")
        metadata = dict(self.metadata, dtype=name, exported_dtype=self.metadata["dtype"])
        return DeployedModel(runner, metadata, self.path, self.device)

    def check_species(self, numbers: Sequence[int] | np.ndarray | Tensor, source: str = "structure") -> None:
        """Raise `UnknownElementError` naming the first atom (index, element) that the model
        does not know, and the model's species (`equimd.checks.check_species`)."""
        if isinstance(numbers, Tensor):
            numbers = numbers.detach().cpu()
        check_species(numbers, self.species, source)

    def __call__(
        self,
        positions: Tensor | np.ndarray,
        numbers: Tensor | np.ndarray | Sequence[int],
        cell: Tensor | np.ndarray | None = None,
        pbc: Tensor | np.ndarray | Sequence[bool] | None = None,
        *,
        compute_forces: bool = True,
        compute_stress: bool | None = None,
        source: str = "structure",
    ) -> dict[str, Tensor]:
        """Evaluate one structure.

        positions [N, 3] Å, numbers [N] atomic numbers, cell [3, 3] Å (rows are lattice
        vectors; None or zeros for a molecule), pbc [3] bool (None = not periodic).
        Floating inputs of any dtype are cast to the model's dtype (float64 positions to a
        float32 model and vice versa); the results are those of the cast inputs.
        compute_stress: None computes stress and virial when any direction is periodic.
        source: names the structure in error messages (e.g. "md.xyz, frame 3").

        Returns energy [] eV, atomic_energies [N] eV, forces [N, 3] eV/Å (if compute_forces),
        stress [3, 3] eV/Å³ (ASE sign) and virial [3, 3] eV (if stress is computed); tensors
        in the model's dtype, on its device, detached.

        Raises `UnknownElementError` (element not in the model), `StructureError` (shapes,
        non-finite positions, non-finite results e.g. from coincident atoms) and `CellError`
        (a periodic direction with a zero, non-finite or linearly dependent cell vector). A
        left-handed cell is accepted and gives the results of the same lattice.
        """
        self.check_species(numbers, source)
        positions_t = _tensor(positions, self.dtype, self.device)
        if positions_t.dim() != 2 or positions_t.shape[-1] != 3:
            raise StructureError(
                f"{source}: positions must have shape [N, 3] (Å), got {tuple(positions_t.shape)}"
            )
        numbers_t = _tensor(numbers, torch.long, self.device).reshape(-1)
        if numbers_t.shape[0] != positions_t.shape[0]:
            raise StructureError(
                f"{source}: {numbers_t.shape[0]} atomic numbers but {positions_t.shape[0]} positions"
            )
        cell_t = _tensor(np.zeros((3, 3)) if cell is None else cell, self.dtype, self.device)
        if cell_t.numel() != 9:
            raise StructureError(
                f"{source}: cell must have shape [3, 3] (Å, rows are lattice vectors), got "
                f"{tuple(cell_t.shape)}"
            )
        cell_t = cell_t.reshape(3, 3)
        pbc_t = _tensor(False if pbc is None else pbc, torch.bool, self.device).reshape(-1)
        if pbc_t.numel() not in (1, 3):
            raise StructureError(f"{source}: pbc must have 3 entries (or 1), got {pbc_t.numel()}")
        pbc_t = pbc_t.expand(3).contiguous()
        finite = torch.isfinite(positions_t).all(dim=1)
        if not bool(finite.all()):
            atom = int(torch.nonzero(~finite)[0, 0])
            raise StructureError(
                f"{source}: positions of atom {atom} ({symbol(int(numbers_t[atom]))}) "
                f"are not finite in {self.metadata['dtype']}: "
                f"{positions_t[atom].tolist()} Å"
            )
        check_cell(cell_t.detach().to(device="cpu", dtype=torch.float64).numpy(),
                   pbc_t.cpu().numpy(), source)
        if compute_stress is None:
            compute_stress = bool(pbc_t.any())
        try:
            with torch.enable_grad(), repeatable_execution():
                out = self._runner.compute(
                    positions_t, numbers_t, cell_t, pbc_t, compute_forces, compute_stress
                )
        except (RuntimeError, torch.jit.Error) as error:  # the scripted neighbor list's
            reason = _neighbor_list_reason(error)
            if reason is None:
                raise
            raise CellError(f"{source}: {reason} (r_max {self.r_max} Å)") from error
        out = {key: value.detach() for key, value in out.items()}
        finite_results = torch.isfinite(out["energy"])
        if "forces" in out:
            finite_results = finite_results & torch.isfinite(out["forces"]).all()
        if not bool(finite_results):
            raise StructureError(_non_finite_results_message(out, positions_t, numbers_t, source))
        return out


def load(path: str | Path, device: str | torch.device = "cpu") -> DeployedModel:
    """Read a model file written by `equimd deploy` (either format) onto `device`.

    Raises `ModelFileError` for a missing, truncated or corrupt file, an incompatible
    format version, or a file that is not a deployed equimd model (e.g. a training
    checkpoint: the message says to run `equimd deploy` on it); `DeviceError` for a device
    this machine does not have (e.g. "cuda" without CUDA, "cuda:3" with one GPU).
    """
    path = Path(path)
    device = check_device(device)
    keep_freed_memory()  # MD evaluates again and again: reuse the large temporaries' memory
    metadata, extra = read_model_file(path)
    if metadata["kind"] == "torchscript":
        load_operator_libraries(path, metadata)
        runner: _Runner = _TorchScriptRunner(path, device)
    else:
        if extra is None:
            raise ModelFileError(f"{path}: AOTInductor package without its neighbor list; corrupt")
        runner = _AOTIRunner(path, device, metadata, extra)
    return DeployedModel(runner, metadata, path, device)


def load_operator_libraries(path: Path, metadata: dict[str, Any]) -> None:
    """Load the custom-operator libraries a TorchScript file calls: equimd's compiled kernel
    for a file exported with ``--tp-backend compiled``. Raises `ModelFileError` naming the
    command that builds it when it is not built on this host."""
    if metadata.get("model", {}).get("convolution_backend") != "compiled":
        return
    from equimd.potentials.nn.convolution import kernel_library

    if not kernel_library.load():
        raise ModelFileError(
            f"{path}: exported with the 'compiled' tensor-product backend, whose kernel library "
            f"is not built on this host: run `{kernel_library.BUILD_COMMAND}` (needs a C++ "
            "compiler), or export the checkpoint again with `equimd deploy --tp-backend fused`"
        )


def _reload(path: str, device: str, dtype: str) -> DeployedModel:
    """Unpickle a `DeployedModel`: the file at `path` loaded on `device`, in `dtype`."""
    model = load(path, device)
    return model if model.metadata["dtype"] == dtype else model.to(getattr(torch, dtype))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The validated metadata of a model file, without loading the model."""
    return read_model_file(Path(path))[0]


def read_model_file(path: Path) -> tuple[dict[str, Any], str | None]:
    """Check the archive and return (metadata, AOTI neighbor-list text or None).

    Both formats are zip archives ``<root>/...`` with ``<root>/extra/metadata.json``;
    TorchScript has ``<root>/code/``, AOTInductor ``<root>/data/aotinductor/``.
    """
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    unreadable = (
        f"{path}: cannot be read as an equimd model — the file is truncated or corrupt, or "
        "is not a model file (expected a TorchScript or AOTInductor archive written by "
        "`equimd deploy`)"
    )
    if not zipfile.is_zipfile(path):
        raise ModelFileError(unreadable)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            bad_member = archive.testzip()  # CRC of every record: catches corruption
            if bad_member is not None:
                raise ModelFileError(f"{unreadable} (record {bad_member!r} fails its checksum)")
            metadata_name = _find_record(names, "extra/" + METADATA_FILE)
            if metadata_name is None:
                raise ModelFileError(_not_a_model_message(path, names))
            metadata = parse_metadata(archive.read(metadata_name), str(path))
            extra_name = _find_record(names, "extra/" + NEIGHBOR_LIST_FILE)
            extra = archive.read(extra_name).decode() if extra_name is not None else None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ModelFileError(f"{unreadable} ({_first_line(error)})") from error
    layout = {"torchscript": "code/", "aoti": "data/aotinductor/"}[metadata["kind"]]
    if not any(name.split("/", 1)[-1].startswith(layout) for name in names):
        raise ModelFileError(
            f"{path}: metadata says {metadata['kind']} but the archive has no {layout} records; "
            "the file is corrupt — export it again"
        )
    return metadata, extra


def _find_record(names: list[str], suffix: str) -> str | None:
    """The archive record ``<root>/<suffix>`` (any root name), or None."""
    for name in names:
        parts = name.split("/", 1)
        if len(parts) == 2 and parts[1] == suffix:
            return name
    return None


def _not_a_model_message(path: Path, names: list[str]) -> str:
    """Explain what a zip archive without equimd metadata is, and what to do with it."""
    has_code = any(name.split("/", 1)[-1].startswith("code/") for name in names)
    has_pickle = any(name.split("/", 1)[-1] == "data.pkl" for name in names)
    if has_pickle and not has_code:
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            record = None
        if isinstance(record, dict) and record.get("format") == "equimd-checkpoint":
            return (
                f"{path}: this is an equimd training checkpoint, not a deployed model; "
                f"export it first: `equimd deploy {path} -o model.pt`"
            )
        return (
            f"{path}: a PyTorch file without equimd model metadata, not a deployed model "
            "(equimd checkpoints are exported with `equimd deploy CHECKPOINT -o model.pt`)"
        )
    if has_code:
        return (
            f"{path}: a TorchScript module without equimd metadata — not written by "
            "`equimd deploy` (models from other packages are not loaded by equimd.deploy.load)"
        )
    return f"{path}: a zip archive without equimd model metadata, not a deployed model"


def _neighbor_list_reason(error: BaseException) -> str | None:
    """The message of the in-graph neighbor list's own error (the last line of a TorchScript
    traceback that starts with "neighbor_list_torch:"), or None for any other error."""
    marker = "neighbor_list_torch:"
    text = str(error)
    if marker not in text:
        return None
    return text[text.rindex(marker) :].splitlines()[0].strip()


def _non_finite_results_message(
    out: dict[str, Tensor], positions: Tensor, numbers: Tensor, source: str
) -> str:
    """Name the atoms with non-finite results and the closest pair among them."""
    per_atom = torch.isfinite(out["atomic_energies"])
    if "forces" in out:
        per_atom = per_atom & torch.isfinite(out["forces"]).all(dim=1)
    bad = torch.nonzero(~per_atom).reshape(-1).cpu().tolist()
    names = ", ".join(f"{i} ({symbol(int(numbers[i]))})" for i in bad[:10])
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    message = (
        f"{source}: the model's energy/forces are not finite (NaN or inf) for atoms {names}{more}"
    )
    if len(bad) >= 2:
        subset = positions[bad].detach().to(device="cpu", dtype=torch.float64)
        distances = torch.cdist(subset, subset)
        distances.fill_diagonal_(float("inf"))
        k = int(torch.argmin(distances))
        i, j = bad[k // len(bad)], bad[k % len(bad)]
        message += f"; atoms {i} and {j} are {float(distances.reshape(-1)[k]):.3g} Å apart"
    return message + (
        " — usually coincident atoms (two atoms, or an atom and a periodic image of another, "
        "at the same position); check the structure"
    )


def _tensor(value: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Tensor, NumPy array, ASE Cell or sequence → tensor of `dtype` on `device`."""
    if not isinstance(value, Tensor):
        value = torch.from_numpy(np.array(value))
    return value.to(device=device, dtype=dtype)


def _device_index(device: torch.device) -> int:
    return -1 if device.index is None else int(device.index)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
