"""Crash-safe file writes, shared by every layer (standard library only).

Whole files (checkpoints, model files, datasets, configs) are replaced atomically with
`atomic_output`: temporary file next to the target, fsync, rename over the target, fsync the
directory; a crash leaves the old file or the complete new one. Append-only files (MD
trajectories, thermo logs, training metrics) are fsynced with `sync_handle` and cut back to a
checkpoint's byte offset with `truncate_file` on restart.

Every failed write (disk full, read-only directory, quota, ...) raises `OutputWriteError`
naming what was written, the file and the operating system's reason.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from equimd.errors import EquimdError

__all__ = [
    "OutputWriteError",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "reporting_write_errors",
    "sync_handle",
    "truncate_file",
]


class OutputWriteError(EquimdError, OSError, RuntimeError):
    """A file could not be written (disk full, read-only directory, quota, ...).

    The message names what was written, the file and the operating system's reason, e.g.
    "could not write checkpoint runs/x/last.pt: No space left on device (runs/x/last.pt is
    unchanged)". An `OSError` (``errno`` is the cause's) and a `RuntimeError`, so the
    `equimd` command prints it as one line instead of a traceback.
    """

    def __init__(self, what: str, path: str | os.PathLike, reason: str, errno: int | None = None) -> None:
        super().__init__(f"could not write {what} {path}: {reason}")
        self.errno = errno
        self.what, self.path, self.reason = what, Path(path), reason

    def __reduce__(self):
        return type(self), (self.what, self.path, self.reason, self.errno)

    def with_note(self, note: str) -> OutputWriteError:
        """The same error with `note` appended to the reason (e.g. how to continue)."""
        return OutputWriteError(self.what, self.path, f"{self.reason}; {note}", self.errno)


def _os_error_of(error: BaseException) -> OSError | None:
    """`error` or the OSError that caused it (torch.save, h5py, ... re-raise a failed write
    as a RuntimeError whose context is the OSError)."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


@contextmanager
def reporting_write_errors(what: str, path: str | os.PathLike, note: str = "") -> Iterator[None]:
    """Turn a failed write inside the block (an `OSError`, or an error caused by one) into an
    `OutputWriteError` naming `what`, `path` and the reason (+ `note`)."""
    try:
        yield
    except OutputWriteError:
        raise
    except Exception as error:
        cause = _os_error_of(error)
        if cause is None:
            raise
        reason = cause.strerror or str(cause) or type(cause).__name__
        raise OutputWriteError(what, path, reason + (f" ({note})" if note else ""), cause.errno) from error


@contextmanager
def atomic_output(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """Yield a fresh temporary path next to `path`; when the block succeeds, fsync the file,
    rename it over `path` and fsync the directory. On error the temporary file is removed, so
    `path` holds either its old content or the complete new one; a failed write (disk full,
    read-only directory, ...) raises `OutputWriteError` naming `what` and `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    note = f"{path} is unchanged" if path.exists() else ""
    with reporting_write_errors(what, path, note):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            descriptor = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms
        return
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "file") -> None:
    """Replace `path` by `data` atomically (`atomic_output`)."""
    with atomic_output(path, what) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "file") -> None:
    """Replace `path` by `text` (UTF-8) atomically (`atomic_output`)."""
    with atomic_output(path, what) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, record: dict[str, Any], what: str = "file") -> None:
    """Replace `path` by `record` as indented JSON atomically (`atomic_output`)."""
    atomic_write_text(path, json.dumps(record, indent=1), what)


def sync_handle(handle: IO[Any]) -> None:
    """Flush `handle` and fsync its file: what was written so far survives a crash."""
    handle.flush()
    os.fsync(handle.fileno())


def truncate_file(path: Path, offset: int) -> None:
    """Cut `path` back to `offset` bytes (a checkpoint's offset, on restart); error if it is
    shorter (the file lost data)."""
    size = path.stat().st_size if path.exists() else 0
    if size < offset:
        raise ValueError(
            f"{path}: {size} bytes, shorter than the {offset} bytes the checkpoint recorded; "
            "the file was truncated or replaced since the checkpoint"
        )
    with open(path, "r+b") as handle:
        handle.truncate(offset)
        sync_handle(handle)
