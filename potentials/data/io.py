"""Read labelled structures from extxyz, equimd HDF5 and rMD17/sGDML npz files; write extxyz.

Every reader returns `Configuration`s in eV / Å with ASE's stress sign, whatever the file
stores: `DatasetKeys` names the labels and their units. Every problem with a file raises
`DataFormatError` naming the file, the frame, the field and (for text files) the 1-based line.

extxyz files are parsed by `ase.io`, after a structural scan of our own (atom-count lines,
column counts, numeric fields): ASE stops silently at a blank line, ignores surplus columns and
does not say where a parse failed. See docs/data.md for formats, keys and the error messages.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from equimd.errors import EquimdError
from equimd.files import atomic_write_text
from equimd.potentials.data.configuration import Configuration, voigt_to_matrix
from equimd.units import ENERGY_UNITS, LENGTH_UNITS

__all__ = [
    "DataFormatError",
    "DatasetKeys",
    "ENERGY_UNITS",
    "LENGTH_UNITS",
    "convert",
    "read_configurations",
    "read_isolated_atom_energies",
    "write_extxyz",
]

EXTXYZ_SUFFIXES = (".xyz", ".extxyz")
HDF5_SUFFIXES = (".h5", ".hdf5")
NPZ_SUFFIXES = (".npz",)



class DataFormatError(EquimdError, ValueError):
    """A data file that cannot be read as labelled structures; the message names the file,
    the frame, the field and, for text files, the 1-based line."""


@dataclass
class DatasetKeys:
    """Where the labels live in a file and which units they are in.

    energy_key:   total energy (extxyz info / calculator results; npz array), or None to skip
    forces_key:   per-atom forces (extxyz column / calculator results; npz array), or None
    stress_key:   stress [3, 3] or Voigt [6] with ASE's sign (positive = tensile), or None
    virial_key:   virial [3, 3] or [9] in energy units (GAP's `dft_virial`); used where a
                  frame has no `stress_key`: stress = -virial / volume
    energy_unit:  "eV", "meV", "kcal/mol", "kJ/mol" or "Hartree"
    length_unit:  "Å" (also "A", "Angstrom"), "Bohr" or "nm"
    require_energy, require_forces: raise if a frame lacks the label (else it is left None)

    Forces are converted as energy/length, stress as energy/length³. The keys and units do not
    apply to equimd HDF5 files, which are always eV / Å (the `require_*` flags do).
    """

    energy_key: str | None = "energy"
    forces_key: str | None = "forces"
    stress_key: str | None = "stress"
    virial_key: str | None = None
    energy_unit: str = "eV"
    length_unit: str = "Å"
    require_forces: bool = False
    require_energy: bool = False

    def __post_init__(self) -> None:
        if self.energy_unit.lower() not in ENERGY_UNITS:
            raise ValueError(
                f"unknown energy_unit {self.energy_unit!r}; supported: "
                "eV, meV, kcal/mol, kJ/mol, Hartree"
            )
        if self.length_unit.lower() not in LENGTH_UNITS:
            raise ValueError(
                f"unknown length_unit {self.length_unit!r}; supported: Å (A, Angstrom), Bohr, nm"
            )

    @property
    def energy_factor(self) -> float:
        """eV per file energy unit."""
        return ENERGY_UNITS[self.energy_unit.lower()]

    @property
    def length_factor(self) -> float:
        """Å per file length unit."""
        return LENGTH_UNITS[self.length_unit.lower()]

    @property
    def forces_factor(self) -> float:
        """(eV/Å) per file force unit."""
        return self.energy_factor / self.length_factor

    @property
    def stress_factor(self) -> float:
        """(eV/Å³) per file stress unit."""
        return self.energy_factor / self.length_factor**3


# ---------------------------------------------------------------------------------------------
# public entry points


def read_configurations(
    path: str | os.PathLike,
    keys: DatasetKeys | None = None,
    index: str | int | slice | None = None,
) -> list[Configuration]:
    """Labelled structures from `path` in eV / Å, dispatching on the extension:
    .xyz/.extxyz (extended XYZ), .h5/.hdf5 (equimd HDF5), .npz (rMD17 or sGDML layout).

    index: frames to return, ASE style: None or ":" (all), 5, -1, "10:20", "::2", or a slice.
    Each `Configuration.source` is "<path>, frame <k>" with k the frame's index in the file.
    Raises `DataFormatError` for anything wrong in the file, FileNotFoundError if it is absent.
    """
    path = Path(path)
    keys = keys if keys is not None else DatasetKeys()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in EXTXYZ_SUFFIXES:
        return _read_extxyz(path, keys, index)
    if suffix in HDF5_SUFFIXES:
        from equimd.potentials.data.hdf5 import HDF5Dataset

        with HDF5Dataset(path) as dataset:
            frames = select_frames(len(dataset), index, path)
            configs = dataset.configurations(frames)
        for frame, config in zip(frames, configs, strict=True):
            _check_required(config, keys, f"{path}, frame {frame}")
        return configs
    if suffix in NPZ_SUFFIXES:
        return _read_npz(path, keys, index)
    raise DataFormatError(
        f"{path}: unknown file type {suffix!r}; supported: .xyz/.extxyz (extended XYZ), "
        ".h5/.hdf5 (equimd HDF5), .npz (rMD17/sGDML)"
    )


def read_isolated_atom_energies(
    path: str | os.PathLike, keys: DatasetKeys | None = None
) -> dict[int, float]:
    """Isolated-atom energies (eV) by atomic number, for per-species reference energies (E0s).

    Every single-atom frame of the file (e.g. `iso_atoms.xyz`, or the `config_type=IsolatedAtom`
    frame of a GAP database) is taken as an isolated atom; frames with more atoms are ignored.
    Raises `DataFormatError` if there is no single-atom frame, one lacks an energy, or two
    frames of the same element disagree.
    """
    keys = replace(
        keys if keys is not None else DatasetKeys(),
        forces_key=None,
        stress_key=None,
        virial_key=None,
        require_forces=False,
    )
    energies: dict[int, float] = {}
    origin: dict[int, str] = {}
    for config in read_configurations(path, keys):
        if config.n_atoms != 1:
            continue
        number = int(config.numbers[0])
        if config.energy is None:
            raise DataFormatError(
                f"{config.source}: isolated atom (Z={number}) has no energy under "
                f"{keys.energy_key!r}"
            )
        if number in energies and not np.isclose(
            energies[number], config.energy, rtol=0, atol=1e-8
        ):
            raise DataFormatError(
                f"{config.source}: isolated-atom energy of Z={number} is {config.energy} eV, "
                f"but {origin[number]} gives {energies[number]} eV"
            )
        energies[number] = config.energy
        origin[number] = config.source
    if not energies:
        raise DataFormatError(f"{path}: no single-atom frame, so no isolated-atom energies")
    return energies


def write_extxyz(
    configs: Sequence[Configuration],
    path: str | os.PathLike,
    predictions: dict[str, Any] | None = None,
) -> Path:
    """Write configurations as extended XYZ (eV, Å, eV/Å, eV/Å³), atomically.

    Labels go to `energy`, `forces` and `stress` (9 values), which ASE reads back into a
    SinglePointCalculator. `predictions` may hold model outputs, written as `pred_energy`,
    `pred_forces`, `pred_stress`: "energy" [n_frames] eV, "forces" (one [n_atoms, 3] eV/Å
    array per frame, or all atoms concatenated [total_atoms, 3]), "stress" [n_frames, 3, 3]
    eV/Å³. Values are written with full float64 precision. Returns the path written.
    """
    path = Path(path)
    predicted = _split_predictions(configs, predictions or {})
    lines: list[str] = []
    for config, prediction in zip(configs, predicted, strict=True):
        lines.extend(_extxyz_frame(config, prediction))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""), "dataset")
    return path


def _extxyz_frame(config: Configuration, prediction: dict[str, Any]) -> list[str]:
    """The lines of one extxyz frame: count, comment (Lattice, Properties, labels, pbc), atoms."""
    from ase.data import chemical_symbols

    check_finite(config, config.source)
    properties = ["species:S:1", "pos:R:3"]
    columns = [
        [chemical_symbols[z] for z in config.numbers.tolist()],
        _format_rows(config.positions),
    ]
    labels = []
    if config.energy is not None:
        labels.append(f"energy={float(config.energy)!r}")
    if config.stress is not None:  # 9 values, column-major like every 3x3 extxyz key
        labels.append(f'stress="{_format_flat(config.stress.reshape(-1, order="F"))}"')
    if config.forces is not None:
        properties.append("forces:R:3")
        columns.append(_format_rows(config.forces))
    if "energy" in prediction:
        labels.append(f"pred_energy={prediction['energy']!r}")
    if "stress" in prediction:
        labels.append(f'pred_stress="{_format_flat(prediction["stress"].reshape(-1, order="F"))}"')
    if "forces" in prediction:
        properties.append("pred_forces:R:3")
        columns.append(_format_rows(prediction["forces"]))
    lattice = []
    if config.cell.any() or config.pbc.any():
        lattice.append(f'Lattice="{_format_flat(config.cell.reshape(-1))}"')
    pbc = " ".join("T" if periodic else "F" for periodic in config.pbc)
    comment = [*lattice, f"Properties={':'.join(properties)}", *labels, f'pbc="{pbc}"']
    atoms = [" ".join(parts) for parts in zip(*columns, strict=True)]
    return [str(config.n_atoms), " ".join(comment), *atoms]


def convert(
    in_path: str | os.PathLike, out_path: str | os.PathLike, keys: DatasetKeys | None = None
) -> int:
    """Read `in_path` (any supported format, labels per `keys`) and write `out_path` as equimd
    HDF5 (.h5/.hdf5) or extxyz (.xyz/.extxyz) in eV / Å. Returns the number of frames written."""
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in HDF5_SUFFIXES + EXTXYZ_SUFFIXES:
        raise ValueError(f"{out_path}: cannot write {suffix!r}; use .h5/.hdf5 or .xyz/.extxyz")
    configs = read_configurations(in_path, keys)
    if suffix in HDF5_SUFFIXES:
        from equimd.potentials.data.hdf5 import write_hdf5

        write_hdf5(configs, out_path)
    else:
        write_extxyz(configs, out_path)
    return len(configs)


# ---------------------------------------------------------------------------------------------
# helpers shared with hdf5.py


def check_finite(
    config: Configuration, where: str, atom_where: Callable[[int], str] | None = None
) -> None:
    """Raise `DataFormatError` naming the field if a value is NaN or infinite; for per-atom
    values the location is `atom_where(atom)` (default: "<where>, atom <i>")."""
    for name, value in (("positions", config.positions), ("forces", config.forces)):
        if value is not None and not np.isfinite(value).all():
            atom = int(np.flatnonzero(~np.isfinite(value).all(axis=1))[0])
            location = atom_where(atom) if atom_where else f"{where}, atom {atom}"
            raise DataFormatError(f"{location}: {name} are not finite: {value[atom]}")
    for name, value in (("cell", config.cell), ("stress", config.stress)):
        if value is not None and not np.isfinite(value).all():
            raise DataFormatError(f"{where}: {name} is not finite: {value.reshape(-1)}")
    if config.energy is not None and not np.isfinite(config.energy):
        raise DataFormatError(f"{where}: energy is not finite: {config.energy}")


def select_frames(n_frames: int, index: str | int | slice | None, path: Path | str) -> list[int]:
    """Frame indices picked by an ASE-style index out of `n_frames` (a list, in order)."""
    return list(range(n_frames)[frame_slice(n_frames, index, path)])


def frame_slice(n_frames: int, index: str | int | slice | None, path: Path | str) -> slice:
    """An ASE-style index (None, 5, -1, "10:20", "::2", slice) as a slice over `n_frames`;
    an integer out of range raises IndexError."""
    if index is None:
        return slice(None)
    if isinstance(index, str):
        index = _parse_index(index)
    if isinstance(index, slice):
        return index
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        if not -n_frames <= index < n_frames:
            raise IndexError(f"{path}: frame {index} out of range, the file has {n_frames} frames")
        start = int(index) % n_frames
        return slice(start, start + 1)
    raise TypeError(f"index must be an int, a slice or a string like '10:20', got {index!r}")


def _parse_index(text: str) -> int | slice:
    parts = text.strip().split(":")
    try:
        if len(parts) == 1:
            return int(parts[0])
        if len(parts) <= 3:
            return slice(*(int(p) if p.strip() else None for p in parts))
    except ValueError:
        pass
    raise ValueError(f"cannot read frame index {text!r}; use e.g. ':', '5', '-1', ':950', '::2'")


def _check_required(config: Configuration, keys: DatasetKeys, where: str) -> None:
    if keys.require_energy and config.energy is None:
        raise DataFormatError(f"{where}: no energy, but require_energy is set")
    if keys.require_forces and config.forces is None:
        raise DataFormatError(f"{where}: no forces, but require_forces is set")


# ---------------------------------------------------------------------------------------------
# extxyz


@dataclass(frozen=True)
class _FrameLines:
    """Where one extxyz frame sits in its file (1-based line numbers)."""

    count_line: int
    n_atoms: int

    @property
    def comment_line(self) -> int:
        return self.count_line + 1

    def atom_line(self, atom: int) -> int:
        return self.count_line + 2 + atom


_PROPERTIES = re.compile(
    r"""(?:^|\s)Properties=(?:"([^"]*)"|'([^']*)'|\{([^}]*)\}|\[([^\]]*)\]|(\S+))"""
)
_DEFAULT_PROPERTIES = "species:S:1:pos:R:3"


def scan_extxyz(path: Path) -> list[_FrameLines]:
    """Check the frame structure of an extxyz file and return where each frame starts.

    Checked: every atom-count line is a positive integer; the comment line and all atom lines
    are present; `Properties` is well formed and has species (or Z) and pos; each atom line
    has exactly the declared number of columns; R/I/L columns parse; species are elements;
    blank lines appear only at the end of the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raw = path.read_bytes()
        line = raw[: error.start].count(b"\n") + 1
        raise DataFormatError(f"{path}, line {line}: not UTF-8 text ({error.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    frames: list[_FrameLines] = []
    i = 0
    while i < len(lines):
        frame = len(frames)
        count_text = lines[i].strip()
        if not count_text:
            rest = next((j for j in range(i, len(lines)) if lines[j].strip()), None)
            if rest is None:
                break
            raise DataFormatError(
                f"{path}, line {i + 1}: blank line where the atom count of frame {frame} "
                f"was expected (more data follows on line {rest + 1})"
            )
        try:
            n_atoms = int(count_text)
        except ValueError:
            raise DataFormatError(
                f"{path}, frame {frame}, line {i + 1}: expected the atom count (an integer), "
                f"got {_clip(lines[i])!r}"
            ) from None
        if n_atoms <= 0:
            raise DataFormatError(
                f"{path}, frame {frame}, line {i + 1}: atom count must be positive, got {n_atoms}"
            )
        where = _FrameLines(i + 1, n_atoms)
        if where.comment_line > len(lines):
            raise DataFormatError(
                f"{path}, frame {frame}, line {where.comment_line}: file ends after the atom "
                "count (truncated frame: no comment line)"
            )
        last = where.atom_line(n_atoms - 1)
        if last > len(lines):
            raise DataFormatError(
                f"{path}, frame {frame}, line {len(lines) + 1}: truncated frame: expected "
                f"{n_atoms} atom lines (lines {where.atom_line(0)}-{last}), file ends at "
                f"line {len(lines)}"
            )
        columns = _parse_properties(lines[i + 1], path, frame, where.comment_line)
        _check_atom_lines(lines[i + 2 : last], columns, path, frame, where)
        frames.append(where)
        i = last
    return frames


def _parse_properties(
    comment: str, path: Path, frame: int, line: int
) -> list[tuple[str, str, int]]:
    """[(name, type, n_columns)] from the `Properties=` of a comment line."""
    match = _PROPERTIES.search(comment)
    spec = next((g for g in match.groups() if g is not None), "") if match else _DEFAULT_PROPERTIES
    fields = spec.split(":")
    where = f"{path}, frame {frame}, line {line}"
    if len(fields) % 3 != 0:
        raise DataFormatError(
            f"{where}: malformed Properties={spec!r}: expected name:type:columns triples"
        )
    columns = []
    for name, kind, count in zip(fields[::3], fields[1::3], fields[2::3], strict=True):
        if kind not in ("R", "I", "S", "L") or not count.isdigit() or int(count) < 1:
            raise DataFormatError(
                f"{where}: malformed Properties entry {name}:{kind}:{count} (type must be "
                "R, I, S or L and the column count a positive integer)"
            )
        columns.append((name, kind, int(count)))
    names = {name: (kind, count) for name, kind, count in columns}
    if names.get("pos") != ("R", 3) or (
        names.get("species") != ("S", 1) and names.get("Z") != ("I", 1)
    ):
        raise DataFormatError(
            f"{where}: Properties={spec!r} must contain pos:R:3 and species:S:1 (or Z:I:1)"
        )
    return columns


def _check_atom_lines(
    atom_lines: list[str],
    columns: list[tuple[str, str, int]],
    path: Path,
    frame: int,
    where: _FrameLines,
) -> None:
    from ase.data import chemical_symbols

    n_columns = sum(count for _, _, count in columns)
    rows = [line.split() for line in atom_lines]
    for atom, row in enumerate(rows):
        if len(row) != n_columns:
            spec = ":".join(f"{n}:{k}:{c}" for n, k, c in columns)
            raise DataFormatError(
                f"{path}, frame {frame}, line {where.atom_line(atom)} (atom {atom}): expected "
                f"{n_columns} columns ({spec}), got {len(row)}: {_clip(atom_lines[atom])!r}"
            )
    table = np.array(rows, dtype=str).reshape(len(rows), n_columns)
    start = 0
    for name, kind, count in columns:
        block = table[:, start : start + count]
        start += count
        if kind == "S":
            if name == "species":
                for atom, symbol in enumerate(block[:, 0]):
                    if symbol.capitalize() not in chemical_symbols:
                        raise DataFormatError(
                            f"{path}, frame {frame}, line {where.atom_line(atom)} (atom {atom}): "
                            f"unknown element {str(symbol)!r}"
                        )
            continue
        bad = _first_unparsable(block, kind)
        if bad is not None:
            atom, column = bad
            expected = {"R": "a real number", "I": "an integer", "L": "T or F"}[kind]
            raise DataFormatError(
                f"{path}, frame {frame}, line {where.atom_line(atom)} (atom {atom}): column "
                f"{name!r} must be {expected}, got {str(block[atom, column])!r}"
            )
        if name == "Z" and kind == "I":
            numbers = block[:, 0].astype(np.int64)
            wrong = np.flatnonzero((numbers < 0) | (numbers >= len(chemical_symbols)))
            if wrong.size:
                atom = int(wrong[0])
                raise DataFormatError(
                    f"{path}, frame {frame}, line {where.atom_line(atom)} (atom {atom}): "
                    f"atomic number {numbers[atom]} is not an element"
                )


def _first_unparsable(block: np.ndarray, kind: str) -> tuple[int, int] | None:
    """(row, column) of the first token that Python's float/int (or T/F) rejects, else None."""
    if kind == "L":
        ok = np.isin(block, ["T", "F", "True", "False"])
        if ok.all():
            return None
        row, column = np.argwhere(~ok)[0]
        return int(row), int(column)
    try:
        block.astype(np.float64 if kind == "R" else np.int64)
        return None
    except (ValueError, OverflowError):
        pass
    convert_token = float if kind == "R" else int
    for (row, column), token in np.ndenumerate(block):
        try:
            convert_token(token)
        except ValueError:
            return int(row), int(column)
    return None


def _read_extxyz(
    path: Path, keys: DatasetKeys, index: str | int | slice | None
) -> list[Configuration]:
    import ase.io

    layout = scan_extxyz(path)
    selected = range(len(layout))[frame_slice(len(layout), index, path)]
    if not selected:
        return []
    # ASE mishandles some slices (negative steps), so read a forward slice and reorder
    forward = sorted(selected)
    images = ase.io.iread(
        path, index=slice(forward[0], forward[-1] + 1, abs(selected.step)), format="extxyz"
    )
    by_frame: dict[int, Configuration] = {}
    present: tuple[set[str], set[str]] = (set(), set())
    for frame in forward:
        try:
            atoms = next(images)
        except Exception as error:  # ASE's messages do not say where: add the frame and line
            raise DataFormatError(
                f"{path}, frame {frame}, line {layout[frame].comment_line}: cannot parse the "
                f"frame ({type(error).__name__}: {error})"
            ) from error
        source = f"{path}, frame {frame}"
        by_frame[frame] = _configuration_from_atoms(atoms, keys, source, layout[frame], present)
    configs = [by_frame[frame] for frame in selected]
    _warn_unused_keys(path, keys, configs, present)
    return configs


def _configuration_from_atoms(
    atoms,
    keys: DatasetKeys,
    source: str,
    lines: _FrameLines,
    present: tuple[set[str], set[str]],
) -> Configuration:
    """A `Configuration` (eV / Å) from one `ase.Atoms` read from extxyz; `lines` locates the
    frame in the file for error messages."""
    where = f"{source}, line {lines.comment_line}"
    per_frame, per_atom = _labels(atoms)
    present[0].update(per_frame)
    present[1].update(per_atom)
    length = keys.length_factor
    config = Configuration(
        positions=atoms.get_positions() * length,
        numbers=atoms.get_atomic_numbers(),
        cell=np.asarray(atoms.get_cell()) * length,
        pbc=atoms.get_pbc(),
        source=source,
    )
    energy = _lookup(per_frame, keys.energy_key, keys.require_energy, "energy", where)
    if energy is not None:
        config.energy = _as_number(energy, keys.energy_key, where) * keys.energy_factor
    forces = _lookup(per_atom, keys.forces_key, keys.require_forces, "forces", where)
    if forces is not None:
        config.forces = _as_array(forces, keys.forces_key, (config.n_atoms, 3), where)
        config.forces = config.forces * keys.forces_factor
    stress = _lookup(per_frame, keys.stress_key, False, "stress", where)
    if stress is not None:
        config.stress = _as_tensor(stress, keys.stress_key, where) * keys.stress_factor
    elif keys.virial_key is not None and keys.virial_key in per_frame:
        virial = _as_tensor(per_frame[keys.virial_key], keys.virial_key, where)
        if config.volume < 1e-12:
            raise DataFormatError(
                f"{where}: virial {keys.virial_key!r} given but the cell has zero volume, so "
                "stress = -virial / volume is undefined"
            )
        config.stress = -virial * keys.energy_factor / config.volume
    check_finite(
        config, where, lambda atom: f"{source}, line {lines.atom_line(atom)} (atom {atom})"
    )
    return config


def _labels(atoms) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-frame (info + calculator scalars/tensors) and per-atom (arrays + calculator) values."""
    from ase.io.extxyz import per_config_properties

    per_frame = dict(atoms.info)
    per_atom = {k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")}
    if atoms.calc is not None:
        for name, value in atoms.calc.results.items():
            (per_frame if name in per_config_properties else per_atom)[name] = value
    return per_frame, per_atom


def _lookup(values: dict[str, Any], key: str | None, required: bool, what: str, where: str) -> Any:
    if key is None:
        if required:
            raise DataFormatError(f"{where}: {what} is required but its key is None")
        return None
    if key in values:
        return values[key]
    if not required:
        return None
    kind = "per-frame" if what == "energy" else "per-atom"
    raise DataFormatError(
        f"{where}: required {what} key {key!r} is missing; {kind} keys present: "
        f"{', '.join(sorted(values)) or '(none)'}{_suggest(key, values)}"
    )


def _suggest(key: str, candidates: Any) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _as_number(value: Any, key: str | None, where: str) -> float:
    array = np.asarray(value)
    if isinstance(value, (bool, np.bool_)) or array.size != 1 or array.dtype.kind not in "iuf":
        raise DataFormatError(f"{where}: {key!r} must be one number, got {_clip(repr(value))}")
    return float(array.reshape(()))


def _as_array(value: Any, key: str | None, shape: tuple[int, ...], where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise DataFormatError(f"{where}: {key!r} is not numeric (dtype {array.dtype})")
    if array.shape != shape:
        raise DataFormatError(f"{where}: {key!r} has shape {array.shape}, expected {shape}")
    return array.astype(np.float64)


def _as_tensor(value: Any, key: str | None, where: str) -> np.ndarray:
    """[3, 3] from a 3x3 matrix, 9 values (column-major, as extxyz writes 3x3 keys) or 6 Voigt
    values in ASE order (xx, yy, zz, yz, xz, xy)."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" or array.size not in (6, 9):
        raise DataFormatError(
            f"{where}: {key!r} must have 6 (Voigt) or 9 numbers, got {_clip(repr(value))}"
        )
    array = array.astype(np.float64)
    if array.shape == (3, 3):
        return array
    if array.size == 9:
        return array.reshape(3, 3, order="F")
    return voigt_to_matrix(array, where)


def _warn_unused_keys(
    path: Path, keys: DatasetKeys, configs: list[Configuration], present: tuple[set[str], set[str]]
) -> None:
    """Warn when a label is absent from every frame but the file has a similarly named key."""
    checks = (
        ("energy", keys.energy_key, present[0], all(c.energy is None for c in configs)),
        ("forces", keys.forces_key, present[1], all(c.forces is None for c in configs)),
    )
    for what, key, names, absent in checks:
        suggestion = _suggest(key, names) if key is not None and absent else ""
        if suggestion:
            warnings.warn(
                f"{path}: no frame has {what} under {key!r}{suggestion}; set "
                f"{what}_key in DatasetKeys",
                stacklevel=4,  # the caller of read_configurations
            )


# ---------------------------------------------------------------------------------------------
# npz (rMD17, sGDML)

# layout name -> (atomic numbers, positions, energy, forces)
_NPZ_LAYOUTS = {
    "rMD17": ("nuclear_charges", "coords", "energies", "forces"),
    "sGDML": ("z", "R", "E", "F"),
}


def _read_npz(
    path: Path, keys: DatasetKeys, index: str | int | slice | None
) -> list[Configuration]:
    import zipfile

    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataFormatError(f"{path}: not a readable npz archive ({error})") from error
    with archive:
        names = set(archive.files)
        layout = next(
            (
                name
                for name, fields in _NPZ_LAYOUTS.items()
                if fields[0] in names or fields[1] in names
            ),
            None,
        )
        if layout is None:
            raise DataFormatError(
                f"{path}: neither the rMD17 layout (nuclear_charges, coords, energies, forces) "
                f"nor the sGDML layout (z, R, E, F); keys present: {', '.join(sorted(names))}"
            )
        z_key, r_key, e_key, f_key = _NPZ_LAYOUTS[layout]

        def load(key: str) -> np.ndarray:
            if key not in names:
                raise DataFormatError(
                    f"{path}: {layout} npz without {key!r}; keys present: "
                    f"{', '.join(sorted(names))}{_suggest(key, names)}"
                )
            try:
                return archive[key]
            except ValueError as error:  # object arrays need pickle, which we refuse
                raise DataFormatError(f"{path}: cannot load {key!r} ({error})") from error

        def label_key(chosen: str | None, default_name: str, layout_name: str) -> str | None:
            """The file's key for a label: the configured one if present, else the layout's
            (only when the configured key is the default)."""
            if chosen is None:
                return None
            if chosen in names:
                return chosen
            if chosen == default_name and layout_name in names:
                return layout_name
            if chosen != default_name:
                raise DataFormatError(
                    f"{path}: key {chosen!r} is missing; keys present: "
                    f"{', '.join(sorted(names))}{_suggest(chosen, names)}"
                )
            return None

        _check_npz_units(path, archive, names, keys)
        numbers = load(z_key)
        coords = load(r_key)
        energy_name = label_key(keys.energy_key, "energy", e_key)
        forces_name = label_key(keys.forces_key, "forces", f_key)
        energies = load(energy_name) if energy_name else None
        forces = load(forces_name) if forces_name else None
        lattice = load("lattice") if "lattice" in names else None

    if numbers.ndim != 1 or numbers.dtype.kind not in "iu":
        raise DataFormatError(
            f"{path}: {z_key!r} has shape {numbers.shape} and dtype {numbers.dtype}, expected "
            "integer atomic numbers of shape (n_atoms,)"
        )
    n_atoms = numbers.shape[0]
    _expect_shape(path, r_key, coords, (None, n_atoms, 3), "(n_frames, n_atoms, 3)")
    n_frames = coords.shape[0]
    if energies is not None:
        if energies.shape == (n_frames, 1):
            energies = energies[:, 0]
        _expect_shape(path, energy_name, energies, (n_frames,), "(n_frames,)")
    if forces is not None:
        _expect_shape(path, forces_name, forces, (n_frames, n_atoms, 3), "(n_frames, n_atoms, 3)")
    if keys.require_energy and energies is None:
        raise DataFormatError(f"{path}: no energies ({e_key!r}), but require_energy is set")
    if keys.require_forces and forces is None:
        raise DataFormatError(f"{path}: no forces ({f_key!r}), but require_forces is set")
    cell, pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
    if lattice is not None:
        _expect_shape(path, "lattice", lattice, (3, 3), "(3, 3)")
        cell, pbc = lattice * keys.length_factor, np.ones(3, dtype=bool)

    configs = []
    for frame in select_frames(n_frames, index, path):
        source = f"{path}, frame {frame}"
        config = Configuration(
            positions=coords[frame] * keys.length_factor,
            numbers=numbers,
            cell=cell,
            pbc=pbc,
            energy=None if energies is None else energies[frame] * keys.energy_factor,
            forces=None if forces is None else forces[frame] * keys.forces_factor,
            source=source,
        )
        check_finite(config, source)
        configs.append(config)
    return configs


def _expect_shape(
    path: Path, key: str | None, array: np.ndarray, shape: tuple[int | None, ...], described: str
) -> None:
    matches = array.ndim == len(shape) and all(
        want is None or have == want for have, want in zip(array.shape, shape, strict=True)
    )
    if not matches or array.dtype.kind not in "iuf":
        expected = tuple("n_frames" if s is None else s for s in shape)
        raise DataFormatError(
            f"{path}: {key!r} has shape {array.shape} (dtype {array.dtype}), expected "
            f"{described} = {expected}"
        )


def _check_npz_units(path: Path, archive, names: set[str], keys: DatasetKeys) -> None:
    """sGDML files record their units (`e_unit`, `r_unit`): refuse a mismatch with `keys`."""
    for key, table, configured, field in (
        ("e_unit", ENERGY_UNITS, keys.energy_unit, "energy_unit"),
        ("r_unit", LENGTH_UNITS, keys.length_unit, "length_unit"),
    ):
        if key not in names:
            continue
        declared = str(archive[key])
        if declared.lower() in table and table[declared.lower()] != table[configured.lower()]:
            raise DataFormatError(
                f"{path}: the file declares {key}={declared!r} but DatasetKeys.{field} is "
                f"{configured!r}; set {field}={declared!r}"
            )


# ---------------------------------------------------------------------------------------------
# formatting for write_extxyz


def _format_flat(values: np.ndarray) -> str:
    return " ".join(repr(v) for v in np.asarray(values, dtype=np.float64).tolist())


def _format_rows(values: np.ndarray) -> list[str]:
    return [" ".join(repr(v) for v in row) for row in np.asarray(values, np.float64).tolist()]


def _split_predictions(
    configs: Sequence[Configuration], predictions: dict[str, Any]
) -> list[dict[str, Any]]:
    """Per-frame {"energy": float, "forces": [n, 3], "stress": [3, 3]} from `predictions`."""
    unknown = set(predictions) - {"energy", "forces", "stress"}
    if unknown:
        raise ValueError(f"unknown prediction keys {sorted(unknown)}; use energy, forces, stress")
    per_frame: list[dict[str, Any]] = [{} for _ in configs]
    n_frames = len(configs)
    if predictions.get("energy") is not None:
        energy = np.asarray(predictions["energy"], dtype=np.float64).reshape(-1)
        if energy.shape != (n_frames,):
            raise ValueError(f"predicted energy has {energy.size} values for {n_frames} frames")
        for frame, value in enumerate(energy.tolist()):
            per_frame[frame]["energy"] = value
    if predictions.get("forces") is not None:
        forces = predictions["forces"]
        n_atoms = [c.n_atoms for c in configs]
        if isinstance(forces, np.ndarray) or hasattr(forces, "numpy"):
            flat = np.asarray(forces, dtype=np.float64)
            if flat.shape != (sum(n_atoms), 3):
                raise ValueError(
                    f"predicted forces have shape {flat.shape}, expected ({sum(n_atoms)}, 3)"
                )
            forces = np.split(flat, np.cumsum(n_atoms)[:-1])
        if len(forces) != n_frames:
            raise ValueError(f"predicted forces for {len(forces)} frames, expected {n_frames}")
        for frame, (value, n) in enumerate(zip(forces, n_atoms, strict=True)):
            value = np.asarray(value, dtype=np.float64)
            if value.shape != (n, 3):
                raise ValueError(
                    f"frame {frame}: predicted forces {value.shape}, expected ({n}, 3)"
                )
            per_frame[frame]["forces"] = value
    if predictions.get("stress") is not None:
        stress = np.asarray(predictions["stress"], dtype=np.float64)
        if stress.shape != (n_frames, 3, 3):
            raise ValueError(
                f"predicted stress has shape {stress.shape}, expected ({n_frames}, 3, 3)"
            )
        for frame in range(n_frames):
            per_frame[frame]["stress"] = stress[frame]
    return per_frame


def _clip(text: str, limit: int = 80) -> str:
    text = text.rstrip("\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."
