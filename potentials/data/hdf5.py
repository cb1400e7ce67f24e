"""equimd HDF5: many labelled structures in one file, read lazily frame by frame.

Schema (version 1; units eV, Å, eV/Å, eV/Å³; F frames, A atoms in total):

    attrs   format = "equimd-hdf5", version = 1, energy_unit = "eV", length_unit = "Å",
            n_frames = F, n_atoms = A
    ptr         [F + 1] int64    atom offsets: frame k owns atoms ptr[k]:ptr[k+1]
    positions   [A, 3]  float64  Å
    numbers     [A]     int64    atomic numbers
    forces      [A, 3]  float64  eV/Å (NaN where has_forces is False)
    cell        [F, 3, 3] float64  Å, rows are lattice vectors
    pbc         [F, 3]  bool
    energy      [F]     float64  eV (NaN where has_energy is False)
    stress      [F, 3, 3] float64  eV/Å³, ASE sign (NaN where has_stress is False)
    has_energy, has_forces, has_stress  [F] bool
    source      [F]     UTF-8 strings: where each frame came from ("train.xyz, frame 12")

Datasets are chunked and gzip-compressed. Files are written atomically (temp + fsync + rename).
`HDF5Dataset` opens the file on first access (again after pickling or in a forked worker).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from equimd.files import atomic_output
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.frames import select_frames
from equimd.potentials.data.keys import DataFormatError, DatasetKeys, check_finite, check_required

__all__ = ["FORMAT", "VERSION", "HDF5Dataset", "read_hdf5", "write_hdf5"]

FORMAT = "equimd-hdf5"
VERSION = 1

# name -> (shape with "F" = frames, "A" = atoms, dtype kind: f float, i integer, b bool)
_SCHEMA: dict[str, tuple[tuple[int | str, ...], str]] = {
    "ptr": (("F+1",), "i"),
    "positions": (("A", 3), "f"),
    "numbers": (("A",), "i"),
    "forces": (("A", 3), "f"),
    "cell": (("F", 3, 3), "f"),
    "pbc": (("F", 3), "b"),
    "energy": (("F",), "f"),
    "stress": (("F", 3, 3), "f"),
    "has_energy": (("F",), "b"),
    "has_forces": (("F",), "b"),
    "has_stress": (("F",), "b"),
    "source": (("F",), "s"),
}
_ORIGIN = re.compile(r"^.*, frame \d+ \(from (.*)\)$")


def read_hdf5(
    path: Path, keys: DatasetKeys, index: str | int | slice | None = None
) -> list[Configuration]:
    """The frames of `path` picked by the ASE-style `index` (eV / Å, as stored); raises
    `DataFormatError` if a frame lacks a label that `keys` requires (the label keys and units
    do not apply: equimd HDF5 is always eV / Å)."""
    with HDF5Dataset(path) as dataset:
        frames = select_frames(len(dataset), index, path)
        configs = dataset.configurations(frames)
    for frame, config in zip(frames, configs, strict=True):
        check_required(config, keys, f"{path}, frame {frame}")
    return configs


def write_hdf5(configs: Sequence[Configuration], path: str | os.PathLike) -> Path:
    """Write configurations (eV / Å) to an equimd HDF5 file, atomically. Returns the path.
    Raises `DataFormatError` (naming the frame's source) for non-finite values."""
    import h5py

    path = Path(path)
    for config in configs:
        check_finite(config, config.source)
    n_frames = len(configs)
    counts = np.array([c.n_atoms for c in configs], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_atoms = int(ptr[-1])

    def stack(values: list[np.ndarray], shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.concatenate(values).astype(dtype) if values else np.zeros(shape, dtype)

    def label(value: Any, shape: tuple[int, ...]) -> np.ndarray:
        return np.full(shape, np.nan) if value is None else np.asarray(value, np.float64)

    arrays = {
        "ptr": ptr,
        "positions": stack([c.positions for c in configs], (0, 3), np.float64),
        "numbers": stack([c.numbers for c in configs], (0,), np.int64),
        "forces": stack([label(c.forces, (c.n_atoms, 3)) for c in configs], (0, 3), np.float64),
        "cell": np.array([c.cell for c in configs], np.float64).reshape(n_frames, 3, 3),
        "pbc": np.array([c.pbc for c in configs], bool).reshape(n_frames, 3),
        "energy": np.array([np.nan if c.energy is None else c.energy for c in configs], np.float64),
        "stress": np.array([label(c.stress, (3, 3)) for c in configs]).reshape(n_frames, 3, 3),
        "has_energy": np.array([c.energy is not None for c in configs], bool),
        "has_forces": np.array([c.forces is not None for c in configs], bool),
        "has_stress": np.array([c.stress is not None for c in configs], bool),
    }
    sources = [_origin(c.source) for c in configs]
    with atomic_output(path, "dataset") as tmp, _os_errors_of_hdf5(tmp):
        with h5py.File(tmp, "w") as handle:
            handle.attrs.update(
                format=FORMAT,
                version=VERSION,
                energy_unit="eV",
                length_unit="Å",
                n_frames=n_frames,
                n_atoms=n_atoms,
            )
            for name, data in arrays.items():
                _create(handle, name, data)
            _create(handle, "source", np.array(sources, dtype=h5py.string_dtype()))
    return path


_HDF5_SYSTEM_ERROR = re.compile(r"errno = (\d+), error message = '([^']*)'")


@contextmanager
def _os_errors_of_hdf5(path: Path) -> Iterator[None]:
    """HDF5 reports a failed write (disk full, ...) as a RuntimeError or OSError whose text
    holds "errno = 28, error message = 'No space left on device'": raise it as that OSError,
    so `atomic_output` reports it like any other failed write."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        system = _HDF5_SYSTEM_ERROR.search(str(error))
        if system is None:
            raise
        raise OSError(int(system[1]), system[2], str(path)) from error


def _create(handle, name: str, data: np.ndarray) -> None:
    """A chunked, gzip-compressed dataset (contiguous when empty: HDF5 cannot chunk size 0)."""
    if data.size == 0:
        handle.create_dataset(name, data=data)
    else:
        handle.create_dataset(name, data=data, chunks=True, compression="gzip", shuffle=True)


def _origin(source: str) -> str:
    """The original location of a frame read back from an HDF5 file (no nested "(from ...)")."""
    match = _ORIGIN.match(source)
    return match.group(1) if match else source


class HDF5Dataset:
    """Frames of an equimd HDF5 file as `Configuration`s, read lazily.

    The schema is checked when the dataset is created (the file is opened briefly and closed);
    the file is then opened on the first `__getitem__`, and again after unpickling or in a
    forked process, so the dataset can be handed to DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle = None
        self._pid: int | None = None
        with self._open_checked() as handle:
            self.ptr = np.asarray(handle["ptr"][()], dtype=np.int64)
            self._has = {
                name: np.asarray(handle[f"has_{name}"][()], dtype=bool)
                for name in ("energy", "forces", "stress")
            }

    def __len__(self) -> int:
        return len(self.ptr) - 1

    @property
    def n_atoms(self) -> np.ndarray:
        """[n_frames] atoms per frame."""
        return np.diff(self.ptr)

    def __getitem__(self, index: int) -> Configuration:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self.path}: frames are indexed by int, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.path}: frame {index} out of range ({len(self)} frames)")
        frame = int(index) % len(self)
        handle = self._file()
        atoms = slice(int(self.ptr[frame]), int(self.ptr[frame + 1]))
        values = {name: handle[name][atoms] for name in ("positions", "numbers", "forces")}
        values.update({name: handle[name][frame] for name in ("cell", "pbc", "energy", "stress")})
        values["source"] = handle["source"].asstr()[frame]
        return self._configuration(frame, values)

    def configurations(self, frames: Sequence[int] | None = None) -> list[Configuration]:
        """Many frames at once (each dataset is read into memory once); all if `frames` is None."""
        frames = list(range(len(self))) if frames is None else [int(k) for k in frames]
        if not frames:
            return []
        handle = self._file()
        every = {name: handle[name][()] for name in _SCHEMA if name not in ("ptr", "source")}
        sources = handle["source"].asstr()[()]
        configs = []
        for frame in frames:
            atoms = slice(int(self.ptr[frame]), int(self.ptr[frame + 1]))
            values = {name: every[name][atoms] for name in ("positions", "numbers", "forces")}
            values.update(
                {name: every[name][frame] for name in ("cell", "pbc", "energy", "stress")}
            )
            values["source"] = sources[frame]
            configs.append(self._configuration(frame, values))
        return configs

    def _configuration(self, frame: int, values: dict[str, Any]) -> Configuration:
        origin = values["source"]
        source = f"{self.path}, frame {frame}"
        config = Configuration(
            positions=values["positions"],
            numbers=values["numbers"],
            cell=values["cell"],
            pbc=values["pbc"],
            energy=values["energy"] if self._has["energy"][frame] else None,
            forces=values["forces"] if self._has["forces"][frame] else None,
            stress=values["stress"] if self._has["stress"][frame] else None,
            source=f"{source} (from {origin})" if origin and origin != source else source,
        )
        check_finite(config, source)
        return config

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._pid = None

    def __enter__(self) -> HDF5Dataset:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"HDF5Dataset({str(self.path)!r}, {len(self)} frames)"

    def _file(self):
        """The open h5py.File, (re)opened in this process if needed."""
        if self._handle is None or self._pid != os.getpid():
            import h5py

            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def _open_checked(self):
        """Open the file and check format, version, units and every dataset's shape."""
        import h5py

        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        try:
            handle = h5py.File(self.path, "r")
        except OSError as error:
            raise DataFormatError(f"{self.path}: not an HDF5 file ({error})") from error
        try:
            _check_schema(self.path, handle)
        except BaseException:
            handle.close()
            raise
        return handle


def _check_schema(path: Path, handle) -> None:
    found = handle.attrs.get("format")
    found = found.decode() if isinstance(found, bytes) else found
    if found != FORMAT:
        raise DataFormatError(
            f"{path}: attribute 'format' is {found!r}, expected {FORMAT!r} (write the file with "
            "equimd.potentials.data.hdf5.write_hdf5 or `equimd data convert`)"
        )
    version = handle.attrs.get("version")
    if version is None or int(version) > VERSION:
        raise DataFormatError(
            f"{path}: attribute 'version' is {version}; this equimd reads versions <= {VERSION}"
        )
    for attr, unit in (("energy_unit", "eV"), ("length_unit", "Å")):
        value = handle.attrs.get(attr)
        value = value.decode() if isinstance(value, bytes) else value
        if value != unit:
            raise DataFormatError(f"{path}: attribute {attr!r} is {value!r}, expected {unit!r}")
    missing = [name for name in _SCHEMA if name not in handle]
    if missing:
        raise DataFormatError(
            f"{path}: missing dataset(s) {', '.join(repr(m) for m in missing)}; present: "
            f"{', '.join(sorted(handle.keys())) or '(none)'}"
        )
    ptr, positions = handle["ptr"], handle["positions"]
    if ptr.ndim != 1 or ptr.shape[0] < 1:
        raise DataFormatError(
            f"{path}: dataset 'ptr' has shape {ptr.shape}, expected (n_frames + 1,)"
        )
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise DataFormatError(
            f"{path}: dataset 'positions' has shape {positions.shape}, expected (n_atoms, 3)"
        )
    sizes = {"F": ptr.shape[0] - 1, "F+1": ptr.shape[0], "A": positions.shape[0]}
    for name, (shape, kind) in _SCHEMA.items():
        dataset = handle[name]
        expected = tuple(sizes[s] if isinstance(s, str) else s for s in shape)
        if dataset.shape != expected:
            described = ", ".join(
                f"{s}={sizes[s]}" if isinstance(s, str) else str(s) for s in shape
            )
            raise DataFormatError(
                f"{path}: dataset {name!r} has shape {dataset.shape}, expected ({described}) "
                "with F frames from 'ptr' and A atoms from 'positions'"
            )
        if not _has_kind(dataset, kind):
            raise DataFormatError(f"{path}: dataset {name!r} has the wrong dtype {dataset.dtype}")
    offsets = ptr[()]
    if offsets[0] != 0 or offsets[-1] != sizes["A"] or np.any(np.diff(offsets) < 0):
        raise DataFormatError(
            f"{path}: dataset 'ptr' must rise from 0 to the number of atoms ({sizes['A']}), "
            f"got {offsets.tolist() if len(offsets) <= 6 else offsets[[0, 1, -2, -1]].tolist()}"
        )


def _has_kind(dataset, kind: str) -> bool:
    """Whether an h5py dataset holds floats (f), integers (i), bools (b) or strings (s)."""
    import h5py

    if kind == "s":
        return h5py.check_string_dtype(dataset.dtype) is not None
    return dataset.dtype.kind in {"f": "f", "i": "iu", "b": "b"}[kind]
