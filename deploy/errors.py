"""Exceptions raised by `equimd.deploy`; the structure errors are the shared ones of
`equimd.errors` (re-exported here), so loading a model imports nothing from `potentials`."""

from __future__ import annotations

from equimd.errors import CellError, DeviceError, EquimdError, StructureError, UnknownElementError

__all__ = ["CellError", "DeviceError", "ModelFileError", "StructureError", "UnknownElementError"]


class ModelFileError(EquimdError, ValueError):
    """A file that cannot be used as a deployed equimd model; the message says why and what
    to do (e.g. run `equimd deploy` on a training checkpoint)."""

