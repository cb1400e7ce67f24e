"""Append-safe output files for long MD runs: thermo CSV, DCD and extxyz trajectories.

Every writer reports its byte `offset()` after `sync()` (flush + fsync). A checkpoint stores
these offsets; on restart each file is truncated back to its offset, so the continued run adds
exactly the frames and rows after the checkpoint — no duplicates, no gaps.
"""

from __future__ import annotations

import csv
import io
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from equimd.files import reporting_write_errors, sync_handle, truncate_file

THERMO_COLUMNS = (
    "step", "time_ps", "T_K", "Epot_eV", "Ekin_eV", "Etot_eV", "volume_A3", "ns_per_day",
)


class AppendFile:
    """Base for the writers: a binary handle opened for appending, with offset/sync/close.

    A failed write, flush or fsync (disk full, ...) raises `OutputWriteError` naming `what`
    and the file; the data up to the last checkpoint's offset stays as it was.
    """

    what = "output file"

    def __init__(self, path: str | os.PathLike, restart_offset: int | None) -> None:
        self.path = Path(path)
        with self.reporting():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if restart_offset is None:
                self.handle = open(self.path, "w+b")
            else:
                truncate_file(self.path, restart_offset)
                self.handle = open(self.path, "r+b")
                self.handle.seek(0, os.SEEK_END)

    def reporting(self):
        """Context: an OSError inside becomes an `OutputWriteError` naming this file."""
        return reporting_write_errors(self.what, self.path)

    def _append(self, data: bytes) -> None:
        with self.reporting():
            self.handle.write(data)

    def sync(self) -> None:
        with self.reporting():
            sync_handle(self.handle)

    def offset(self) -> int:
        with self.reporting():
            self.handle.flush()
            return self.handle.seek(0, os.SEEK_END)

    def close(self) -> None:
        """Sync and close; the handle is closed even when the sync fails."""
        if self.handle.closed:
            return
        try:
            self.sync()
        finally:
            with self.reporting():
                self.handle.close()


class ThermoCSV(AppendFile):
    """step, time_ps, T_K, Epot_eV, Ekin_eV, Etot_eV, volume_A3 (empty if not periodic),
    ns_per_day (wall-clock speed since the previous row; empty on a run's first row)."""

    what = "thermo log"

    def __init__(self, path: str | os.PathLike, restart_offset: int | None = None) -> None:
        super().__init__(path, restart_offset)
        if self.offset() == 0:
            self._write_row(THERMO_COLUMNS)

    def _write_row(self, values) -> None:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(values)
        self._append(text.getvalue().encode())

    def write(self, row: dict[str, float]) -> None:
        def fmt(key: str) -> str:
            value = row.get(key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return ""
            if key == "step":
                return str(int(value))
            if key == "ns_per_day":
                return f"{value:.4g}"
            return f"{value:.10g}"

        self._write_row([fmt(key) for key in THERMO_COLUMNS])


def read_thermo(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a thermo CSV as dicts of strings."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class ExtxyzTrajectory(AppendFile):
    """Append ASE Atoms frames to an extxyz file (positions Å, plus energy/forces when the
    Atoms carry a calculator; `info` gets step and time_ps)."""

    what = "trajectory"

    def write(self, atoms, step: int, time_ps: float) -> None:
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.io import write

        frame = atoms.copy()
        results = getattr(atoms.calc, "results", None) or {}
        kept = {key: results[key] for key in ("energy", "forces", "stress") if key in results}
        if kept:
            frame.calc = SinglePointCalculator(frame, **kept)
        frame.info["step"] = int(step)
        frame.info["time_ps"] = float(time_ps)
        text = io.StringIO()
        write(text, frame, format="extxyz")
        self._append(text.getvalue().encode())


# ---------------------------------------------------------------------------------------------
# DCD (CHARMM flavour, as written by openmm.app.DCDFile)

_DCD_COUNT_OFFSET = 8  # int32 NSET: number of frames
_DCD_LAST_STEP_OFFSET = 20  # int32 NSTEP: step of the last frame (as OpenMM writes it)


class DCDTrajectory(AppendFile):
    """openmm.app.DCDFile with restart support: positions in nm in, Å in the file.

    Frames are written at steps first_step + k · interval. On restart the file is truncated to
    the checkpoint's byte offset and the frame count in the header rewritten before appending.
    """

    what = "trajectory"

    def __init__(
        self,
        path: str | os.PathLike,
        topology,
        timestep_ps: float,
        interval: int,
        first_step: int = 0,
        restart_offset: int | None = None,
        restart_frames: int = 0,
    ) -> None:
        from openmm.app import DCDFile

        self.path = Path(path)
        self.frames = 0
        with self.reporting():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if restart_offset is None or restart_offset == 0:
                self.handle = open(self.path, "w+b")
                self.dcd = DCDFile(self.handle, topology, timestep_ps, first_step, interval)
            else:
                truncate_file(self.path, restart_offset)
                self.handle = open(self.path, "r+b")
                self.handle.seek(_DCD_COUNT_OFFSET)
                self.handle.write(struct.pack("<i", restart_frames))
                self.handle.seek(_DCD_LAST_STEP_OFFSET)
                self.handle.write(struct.pack("<i", first_step + max(restart_frames - 1, 0) * interval))
                self.handle.flush()
                self.dcd = DCDFile(self.handle, topology, timestep_ps, first_step, interval,
                                   append=True)
                self.frames = restart_frames

    def write(self, positions_nm: np.ndarray, box_vectors_nm: np.ndarray | None) -> None:
        from openmm import Vec3
        from openmm.unit import nanometer

        box = None
        if box_vectors_nm is not None:
            box = [Vec3(*map(float, row)) for row in box_vectors_nm] * nanometer
        with self.reporting():
            self.dcd.writeModel(np.asarray(positions_nm), periodicBoxVectors=box)
        self.frames += 1


def read_dcd(path: str | os.PathLike) -> dict[str, Any]:
    """Read a DCD written by OpenMM: {"positions": [F, N, 3] Å (float32), "cells":
    [F, 6] (a, cos γ, b, cos β, cos α, c as stored, or None), "first_step", "interval",
    "frames", "timestep_ps"}."""
    data = Path(path).read_bytes()
    (magic_len,) = struct.unpack_from("<i", data, 0)
    if magic_len != 84 or data[4:8] != b"CORD":
        raise ValueError(f"{path}: not a DCD file")
    frames, first_step, interval = struct.unpack_from("<3i", data, 8)
    (delta,) = struct.unpack_from("<f", data, 44)
    (has_box,) = struct.unpack_from("<i", data, 48)
    (title_len,) = struct.unpack_from("<i", data, 92)
    offset = 96 + title_len + 4 + 4
    (n_atoms,) = struct.unpack_from("<i", data, offset)
    offset += 8
    positions, cells = [], []
    for _ in range(frames):
        if has_box:
            cells.append(struct.unpack_from("<6d", data, offset + 4))
            offset += 56
        xyz = []
        for _axis in range(3):
            xyz.append(np.frombuffer(data, dtype="<f4", count=n_atoms, offset=offset + 4))
            offset += 8 + 4 * n_atoms
        positions.append(np.stack(xyz, axis=1))
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} trailing bytes after {frames} frames")
    return {
        "positions": np.array(positions).reshape(frames, n_atoms, 3),
        "cells": np.array(cells) if has_box else None,
        "first_step": first_step,
        "interval": interval,
        "frames": frames,
        "timestep_ps": float(delta) * 0.04888821,
    }
