"""Structure checks shared by every layer: element symbols, cell validity, species.

Dependency-free (NumPy only), so the data readers, the deployed-model loader and the MD
drivers apply the same rules and raise the same errors (`equimd.errors`). Each check names
its `source` (e.g. "train.xyz, frame 12") first in the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from equimd.errors import CellError, UnknownElementError

SYMBOLS: tuple[str, ...] = tuple(
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge "
    "As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm "
    "Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U "
    "Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og".split()
)
"""Element symbols indexed by atomic number (0 is "X", a dummy atom, as in ASE)."""
NUMBERS: dict[str, int] = {s: z for z, s in enumerate(SYMBOLS)}


def symbol(z: int) -> str:
    """29 → "Cu"; an atomic number outside the table → "Z<number>"."""
    return SYMBOLS[z] if 0 <= z < len(SYMBOLS) else f"Z{z}"


def atomic_number(name: str | int) -> int:
    """'Cu', '29' or 29 → 29 (ValueError for an unknown symbol)."""
    if isinstance(name, int):
        return name
    if name.isdigit():
        return int(name)
    if name not in NUMBERS:
        raise ValueError(f"unknown element symbol {name!r}")
    return NUMBERS[name]


def check_species(
    numbers: Any,
    species: Sequence[int],
    source: str = "structure",
    atom_indices: Sequence[int] | None = None,
) -> None:
    """Raise `UnknownElementError` naming the first atom whose element is not in `species`.

    numbers: [N] atomic numbers (sequence, NumPy array or CPU tensor); atom_indices: the atoms'
    indices in a larger system (e.g. the ML region of an OpenMM System), used only to name the
    atom; source starts the message.
    """
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    unknown = np.flatnonzero(~np.isin(numbers, np.asarray(list(species), dtype=np.int64)))
    if len(unknown) == 0:
        return
    position = int(unknown[0])
    index = position if atom_indices is None else int(atom_indices[position])
    z = int(numbers[position])
    names = ", ".join(symbol(int(s)) for s in species)
    raise UnknownElementError(
        f"{source}: atom {index} is {symbol(z)} (Z={z}), which this model does not know; "
        f"the model's species are: {names}"
    )


def check_cell(cell: Any, pbc: Any, source: str = "structure") -> None:
    """Raise `CellError` naming the cell vector(s) at fault (and the determinant of a
    degenerate 3D cell) if the periodic part of the cell cannot define periodic images.

    cell: [3, 3] Å (rows are cell vectors); pbc: [3] bools. Only the vectors along periodic
    directions are checked: open directions may have zero vectors (a molecule may use
    ``cell = zeros``). A left-handed cell (negative determinant) is valid: it spans the same
    lattice as the right-handed cell with one vector negated.
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    periodic = np.flatnonzero(np.asarray(pbc, dtype=bool).reshape(3)).tolist()
    lengths = np.zeros(3)
    for axis in periodic:
        vector = cell[axis]
        if not np.isfinite(vector).all():
            raise CellError(
                f"{source}: cell vector {axis} is not finite ({vector_text(vector)} Å) and pbc "
                f"is True along axis {axis}"
            )
        lengths[axis] = np.linalg.norm(vector)
        if lengths[axis] < 1e-8:
            raise CellError(
                f"{source}: pbc is True along axis {axis} but cell vector {axis} is zero "
                f"({vector_text(vector)} Å); give a non-zero cell vector or set pbc False "
                f"along axis {axis}"
            )
    for position, first in enumerate(periodic):
        for second in periodic[position + 1 :]:
            sine = np.linalg.norm(np.cross(cell[first], cell[second])) / (
                lengths[first] * lengths[second]
            )
            if sine < 1e-10:
                raise CellError(
                    f"{source}: periodic cell vectors {first} and {second} are parallel "
                    f"({vector_text(cell[first])} and {vector_text(cell[second])} Å): "
                    "linearly dependent, the cell is degenerate"
                )
    if len(periodic) == 3:
        determinant = float(np.linalg.det(cell))
        volume = abs(determinant)
        if volume / np.prod(lengths) < 1e-10:
            raise CellError(
                f"{source}: periodic cell vectors 0, 1 and 2 are coplanar (determinant "
                f"{determinant:.3g} Å³, volume {volume:.3g} Å³): linearly dependent, the cell "
                "is degenerate"
            )
        if volume < 1e-6:
            raise CellError(
                f"{source}: periodic cell is degenerate (determinant {determinant:.3g} Å³, "
                f"volume {volume:.3g} Å³)"
            )


def vector_text(vector: Any) -> str:
    """[x, y, z] with 6 significant digits, for messages."""
    return "[" + ", ".join(f"{value:.6g}" for value in np.asarray(vector).reshape(-1)) + "]"
