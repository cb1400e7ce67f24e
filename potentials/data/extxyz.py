"""extxyz files: `read_extxyz` (labels per `DatasetKeys`, converted to eV / Å) and
`write_extxyz` (eV, Å, eV/Å, eV/Å³, full float64 precision), both on top of `ase.io`'s format.

Reading first runs the structural scan (`equimd.potentials.data.extxyz_scan`), so every problem
is reported with the file, frame and 1-based line.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from equimd.files import atomic_write_text
from equimd.potentials.data.configuration import Configuration, voigt_to_matrix
from equimd.potentials.data.extxyz_scan import FrameLines, scan_extxyz
from equimd.potentials.data.frames import frame_slice
from equimd.potentials.data.keys import (
    DataFormatError,
    DatasetKeys,
    check_finite,
    clip,
    did_you_mean,
)

__all__ = ["read_extxyz", "write_extxyz"]


def read_extxyz(
    path: Path, keys: DatasetKeys, index: str | int | slice | None
) -> list[Configuration]:
    """The frames of an extxyz file picked by the ASE-style `index`, in eV / Å (labels and
    units per `keys`); warns when a label is in no frame but a similar key is."""
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
    lines: FrameLines,
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
        config_type=per_frame["config_type"] if isinstance(per_frame.get("config_type"), str) else None,
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
        f"{', '.join(sorted(values)) or '(none)'}{did_you_mean(key, values)}"
    )


def _as_number(value: Any, key: str | None, where: str) -> float:
    array = np.asarray(value)
    if isinstance(value, (bool, np.bool_)) or array.size != 1 or array.dtype.kind not in "iuf":
        raise DataFormatError(f"{where}: {key!r} must be one number, got {clip(repr(value))}")
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
            f"{where}: {key!r} must have 6 (Voigt) or 9 numbers, got {clip(repr(value))}"
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
        suggestion = did_you_mean(key, names) if key is not None and absent else ""
        if suggestion:
            warnings.warn(
                f"{path}: no frame has {what} under {key!r}{suggestion}; set "
                f"{what}_key in DatasetKeys",
                stacklevel=4,  # the caller of read_configurations
            )


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
    if config.config_type is not None and '"' not in config.config_type:
        labels.append(f'config_type="{config.config_type}"')
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
