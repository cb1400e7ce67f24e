"""`equimd md`'s starting structure: PDB and mmCIF through OpenMM's readers with the OpenMM
engine (elements as OpenMM infers them), everything else through ASE."""

from __future__ import annotations

import numpy as np
import pytest

from equimd.errors import StructureError
from equimd.md_drivers.structure_io import read_structure

# alanine without element columns (77-78), in a 20 Å periodic box
ALANINE_PDB = """\
CRYST1   20.000   20.000   20.000  90.00  90.00  90.00 P 1           1
ATOM      1  N   ALA A   1       1.204   1.082   0.000  1.00  0.00
ATOM      2  CA  ALA A   1       2.640   1.082   0.000  1.00  0.00
ATOM      3  C   ALA A   1       3.190   2.505   0.000  1.00  0.00
ATOM      4  O   ALA A   1       2.440   3.480   0.000  1.00  0.00
ATOM      5  CB  ALA A   1       3.160   0.310   1.215  1.00  0.00
END
"""


@pytest.fixture
def alanine_pdb(tmp_path):
    path = tmp_path / "ala.pdb"
    path.write_text(ALANINE_PDB)
    return path


def test_openmm_engine_reads_a_pdb_without_element_columns_as_openmm_does(alanine_pdb):
    atoms = read_structure(alanine_pdb, engine="openmm")
    assert atoms.get_chemical_symbols() == ["N", "C", "C", "O", "C"]  # CA: α-carbon
    assert atoms.pbc.all()
    np.testing.assert_allclose(atoms.cell.array, 20.0 * np.eye(3), atol=1e-6)
    np.testing.assert_allclose(atoms.positions[1], [2.640, 1.082, 0.0], atol=1e-6)
    # what ASE's own reader makes of the same file (why the OpenMM engine does not use it)
    assert read_structure(alanine_pdb, engine="ase").get_chemical_symbols()[1] == "Ca"


def test_openmm_engine_reads_mmcif(alanine_pdb, tmp_path):
    import openmm.app as app

    pdb = app.PDBFile(str(alanine_pdb))
    path = tmp_path / "ala.cif"
    with open(path, "w") as handle:
        app.PDBxFile.writeFile(pdb.topology, pdb.positions, handle)
    atoms = read_structure(path, engine="openmm")
    reference = read_structure(alanine_pdb, engine="openmm")
    assert atoms.get_chemical_symbols() == reference.get_chemical_symbols()
    np.testing.assert_allclose(atoms.positions, reference.positions, atol=1e-4)
    np.testing.assert_allclose(atoms.cell.array, reference.cell.array, atol=1e-4)


def test_an_atom_without_an_inferable_element_is_named(tmp_path):
    path = tmp_path / "odd.pdb"
    path.write_text("HETATM    1  XX1 UNK A   1       0.000   0.000   0.000  1.00  0.00\nEND\n")
    with pytest.raises(StructureError, match=r"odd\.pdb: atom 0 \('XX1' of residue UNK 1\) has "
                                             r"no element OpenMM can infer; give its element"):
        read_structure(path, engine="openmm")


def test_a_missing_model_frame_and_an_unreadable_pdb_are_one_line_errors(alanine_pdb, tmp_path):
    with pytest.raises(StructureError, match=r"ala\.pdb: --frame 3 does not exist: the file has 1"):
        read_structure(alanine_pdb, frame=3, engine="openmm")
    broken = tmp_path / "broken.cif"
    broken.write_text("data_x\nloop_\n_atom_site.id\n")
    with pytest.raises(StructureError, match=r"broken\.cif: OpenMM's PDBxFile cannot read it"):
        read_structure(broken, engine="openmm")
