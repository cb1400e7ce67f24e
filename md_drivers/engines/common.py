"""Helpers shared by the MD engines."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms


def default_device() -> str:
    """The torch device the model runs on when `--device` is not given: cuda if available."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def has_velocities(atoms: Atoms) -> bool:
    """Whether the starting structure carries velocities (momenta, not all zero) to keep."""
    return bool(atoms.has("momenta") and np.abs(atoms.get_momenta()).max() > 0)
