"""Whether a tensor size is concrete or symbolic (tracing with symbolic shapes)."""

from __future__ import annotations

import torch


def is_symbolic_size(size: int) -> bool:
    """True while `size` (a tensor dimension) is a symbolic size of `torch.export` / `make_fx`
    tracing (AOTInductor export), where data-dependent sizes such as a largest in-degree
    cannot be read; False for concrete sizes and in TorchScript."""
    if torch.jit.is_scripting():
        return False
    return not isinstance(size, int)
