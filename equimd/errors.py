"""Every equimd error derives from `EquimdError`: a script can `except equimd.EquimdError`.

Dependency-free (standard library only), so every layer — data, deploy, MD drivers — raises the
same classes. Messages name the file/frame/structure and the atom or cell vector at fault.
"""

from __future__ import annotations


class EquimdError(Exception):
    """Base class of every error equimd raises on purpose (bad input, file, setting, state)."""


class StructureError(EquimdError, ValueError):
    """A structure that cannot be evaluated: arrays of the wrong shape, non-finite positions,
    or positions for which the model's results are not finite (coincident atoms). The message
    names the structure (its `source`: file and frame, or "structure") and the atoms at fault."""


class CellError(StructureError):
    """A cell that cannot define periodic images: a periodic direction whose cell vector is zero
    or not finite, periodic vectors that are linearly dependent, or a cell too small for the
    neighbor list."""


class UnknownElementError(StructureError):
    """An atom whose element is not one of the model's species (the message names the atom's
    index, its element and the model's species)."""


class SettingsError(EquimdError, ValueError):
    """An option or configuration value that cannot work (a negative time step, an unknown
    OpenMM platform, ...); the message names the option, the value given and what is valid."""


class DeviceError(EquimdError, ValueError):
    """A requested device that does not exist on this machine (e.g. "cuda" without CUDA)."""
