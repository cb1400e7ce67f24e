"""`default_dtype`: build modules under a given torch default dtype, restored afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Within the block, `torch.get_default_dtype()` is `dtype` (constants computed when a
    module is built follow it); the previous default is restored on exit, also on error."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
