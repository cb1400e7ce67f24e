"""Exceptions raised by `deploy` (no dependency on `potentials`)."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A file that cannot be used as a deployed equimd model; the message says why and what
    to do (e.g. run `equimd deploy` on a training checkpoint)."""


class UnknownElementError(ValueError):
    """A structure contains an element the deployed model was not trained on.

    Same meaning as `equimd.potentials.nn.species.UnknownElementError`, raised by the deployed-model
    side (which does not import `potentials`).
    """


class StructureError(ValueError):
    """A structure a deployed model cannot evaluate: arrays of the wrong shape, non-finite
    positions, or positions for which the model's results are not finite (coincident atoms).
    The message names the structure (`source`) and the atoms at fault."""


class CellError(StructureError):
    """A periodic direction whose cell vector is zero or not finite, or periodic cell vectors
    that are linearly dependent (or a cell too small for the cutoff).

    Same meaning as `equimd.potentials.data.neighbors.CellError`, raised by the deployed-model side
    (which does not import `potentials`).
    """


class DeviceError(ValueError):
    """A requested device that does not exist on this machine (e.g. "cuda" without CUDA)."""
