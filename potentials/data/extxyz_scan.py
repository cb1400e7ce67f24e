"""The structural scan of an extxyz file, run before `ase.io` parses it.

ASE stops silently at a blank line, ignores surplus columns and does not say where a parse
failed; `scan_extxyz` checks atom-count lines, comment lines, `Properties=`, column counts and
numeric fields first, and reports the file, frame and 1-based line of the first problem as a
`DataFormatError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from equimd.potentials.data.keys import DataFormatError, clip

__all__ = ["FrameLines", "scan_extxyz"]


@dataclass(frozen=True)
class FrameLines:
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


def scan_extxyz(path: Path) -> list[FrameLines]:
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
    frames: list[FrameLines] = []
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
                f"got {clip(lines[i])!r}"
            ) from None
        if n_atoms <= 0:
            raise DataFormatError(
                f"{path}, frame {frame}, line {i + 1}: atom count must be positive, got {n_atoms}"
            )
        where = FrameLines(i + 1, n_atoms)
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
    where: FrameLines,
) -> None:
    from ase.data import chemical_symbols

    n_columns = sum(count for _, _, count in columns)
    rows = [line.split() for line in atom_lines]
    for atom, row in enumerate(rows):
        if len(row) != n_columns:
            spec = ":".join(f"{n}:{k}:{c}" for n, k, c in columns)
            raise DataFormatError(
                f"{path}, frame {frame}, line {where.atom_line(atom)} (atom {atom}): expected "
                f"{n_columns} columns ({spec}), got {len(row)}: {clip(atom_lines[atom])!r}"
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
