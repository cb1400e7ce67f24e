"""Atomic structures and their labels: `Configuration` (NumPy, eV/Å), file readers and writers
(extxyz, equimd HDF5, rMD17/sGDML npz). Importing this package loads NumPy and ase.units only;
h5py, ase.io and torch (`equimd.potentials.data.graph`) are imported when used."""

from equimd.potentials.data.configuration import Configuration, voigt_to_matrix
from equimd.potentials.data.hdf5 import HDF5Dataset, write_hdf5
from equimd.potentials.data.io import (
    DataFormatError,
    DatasetKeys,
    convert,
    read_configurations,
    read_isolated_atom_energies,
    write_extxyz,
)

__all__ = [
    "Configuration",
    "DataFormatError",
    "DatasetKeys",
    "HDF5Dataset",
    "convert",
    "read_configurations",
    "read_isolated_atom_energies",
    "voigt_to_matrix",
    "write_extxyz",
    "write_hdf5",
]
