"""The starting structure of `equimd md`: read, checked, as `ase.Atoms` (Å).

With the OpenMM engine, PDB and PDBx/mmCIF files are read by OpenMM's own readers
(`openmm.app.PDBFile`, `PDBxFile`), which infer elements from residue and atom names the way
the rest of an OpenMM workflow does: ASE's PDB reader turns a protein's `CA` without an element
column into calcium, OpenMM into an α-carbon. Everything else (and every file with the ASE
engine) is read by `ase.io.read`; extxyz first goes through the data reader's structural scan.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from equimd.checks import check_cell, symbol
from equimd.errors import EquimdError, StructureError

if TYPE_CHECKING:
    from ase import Atoms

OPENMM_PDB_SUFFIXES = (".pdb", ".ent")
OPENMM_PDBX_SUFFIXES = (".cif", ".mmcif", ".pdbx")


def read_structure(path: str | Path, frame: int = -1, engine: str = "ase") -> Atoms:
    """ase.Atoms from extxyz, PDB, mmCIF, ... (frame: index into a multi-frame file).

    engine "openmm": PDB/PDBx/mmCIF through OpenMM's readers (see the module docstring).
    A truncated or malformed extxyz file is a `DataFormatError` naming file, frame and line;
    any other file the reader cannot parse, or a frame it does not have, is a
    `StructureError` naming the file. The frame's positions must be finite and its periodic
    cell vectors valid (`CellError`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such structure file")
    suffix = path.suffix.lower()
    if engine == "openmm" and suffix in OPENMM_PDB_SUFFIXES + OPENMM_PDBX_SUFFIXES:
        atoms = read_with_openmm(path, frame)
    else:
        atoms = read_with_ase(path, frame)
    check_structure(atoms, f"{path}, frame {frame}")
    return atoms


def read_with_ase(path: Path, frame: int) -> Atoms:
    from ase.io import read

    from equimd.potentials.data.extxyz_scan import scan_extxyz
    from equimd.potentials.data.io import EXTXYZ_SUFFIXES

    if path.suffix.lower() in EXTXYZ_SUFFIXES:
        _check_frame(path, frame, len(scan_extxyz(path)))
    try:
        return read(path, index=frame)
    except (EquimdError, OSError):
        raise
    except Exception as error:  # ASE's parsers raise anything from IndexError to KeyError
        raise StructureError(
            f"{path}: cannot be read as a structure ({type(error).__name__}: {error}); give "
            "an extxyz, PDB or another file ase.io.read reads, with --frame in range"
        ) from error


def read_with_openmm(path: Path, frame: int) -> Atoms:
    """A PDB or PDBx/mmCIF file through OpenMM: elements as OpenMM infers them, positions of
    model `frame`, and the CRYST1 / cell box (periodic in all directions) if the file has one."""
    import openmm.app as app
    from ase import Atoms
    from openmm import unit

    reader = app.PDBxFile if path.suffix.lower() in OPENMM_PDBX_SUFFIXES else app.PDBFile
    try:
        structure = reader(str(path))
    except Exception as error:  # OpenMM's readers raise ValueError, KeyError, IndexError, ...
        raise StructureError(f"{path}: OpenMM's {reader.__name__} cannot read it "
                             f"({type(error).__name__}: {error})") from error
    frames = structure.getNumFrames()
    _check_frame(path, frame, frames)
    numbers = []
    for atom in structure.topology.atoms():
        if atom.element is None:
            raise StructureError(
                f"{path}: atom {atom.index} ({atom.name!r} of residue {atom.residue.name} "
                f"{atom.residue.id}) has no element OpenMM can infer; give its element in "
                "columns 77-78 (PDB) or type_symbol (mmCIF)")
        numbers.append(atom.element.atomic_number)
    positions = structure.getPositions(asNumpy=True, frame=frame % frames)
    box = structure.topology.getPeriodicBoxVectors()
    cell = np.zeros((3, 3)) if box is None else np.array(box.value_in_unit(unit.angstrom))
    return Atoms(numbers=numbers, positions=np.asarray(positions.value_in_unit(unit.angstrom)),
                 cell=cell, pbc=box is not None)


def _check_frame(path: Path, frame: int, frames: int) -> None:
    if not -frames <= frame < frames:
        raise StructureError(f"{path}: --frame {frame} does not exist: the file has "
                             f"{frames} frame(s)")


def check_structure(atoms: Atoms, source: str) -> None:
    """Non-finite positions (`StructureError`) or an invalid periodic cell (`CellError`),
    named as what they are before an engine sees them."""
    positions = atoms.get_positions()
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if len(bad):
        names = ", ".join(f"{i} ({symbol(int(atoms.numbers[i]))})" for i in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise StructureError(f"{source}: positions of atoms {names}{more} are not finite; fix "
                             "the structure file")
    check_cell(atoms.cell.array, atoms.pbc, source)
