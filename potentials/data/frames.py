"""Frame selection shared by the readers: an ASE-style index (None, 5, -1, "10:20", "::2", a
slice) turned into the frames of a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["frame_slice", "select_frames"]


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
