"""Exceptions raised by `deploy` (no dependency on `potentials`)."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A file that cannot be used as a deployed equimd model; the message says why and what
    to do (e.g. run `equimd deploy` on a training checkpoint)."""


class UnknownElementError(ValueError):
    """A structure contains an element the deployed model was not trained on.

    Same meaning as `potentials.nn.species.UnknownElementError`, raised by the deployed-model
    side (which does not import `potentials`).
    """
