"""Choose the convolution backend of a built model (a model modifier, as in nequip).

    model = apply_convolution_backend(build_model("mace", ...), "e3nn")

Models are built with `DEFAULT_BACKEND`; the modifier swaps the backend of every
`EdgeConvolution` in place. Weights, state-dict keys and hyperparameters stay the same, so the
numbers change only by rounding (every backend is tested against the e3nn reference).
Checkpoints record the backend (`convolution_backend(model)`) and reapply it when loaded.
"""

from __future__ import annotations

import itertools
from typing import TypeVar

import torch
from torch import nn

from equimd.potentials.nn.convolution.backends import check_backend
from equimd.potentials.nn.convolution.edge_convolution import EdgeConvolution
from equimd.potentials.nn.dtype import default_dtype

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def apply_convolution_backend(model: ModuleT, backend: str) -> ModuleT:
    """Make every `EdgeConvolution` of `model` compute with `backend`; returns `model`.

    The backends' constants are built in the dtype of the model's weights (exact there) and
    placed on their device. A module whose structure depends on the backend defines
    `convolution_backend_changed(backend)`, called afterwards (NequIP: the e3nn reference
    computes every path, the other backends only those the energy reads).
    Raises ValueError for an unknown backend or a model without convolutions.
    """
    check_backend(backend)
    convolutions = [m for m in model.modules() if isinstance(m, EdgeConvolution)]
    if not convolutions:
        raise ValueError(
            f"{type(model).__name__} has no EdgeConvolution: a convolution backend does not apply"
        )
    tensors = itertools.chain(model.parameters(), model.buffers())
    weight = next((t for t in tensors if t.is_floating_point()), None)
    dtype = weight.dtype if weight is not None else torch.get_default_dtype()
    with default_dtype(dtype):
        for convolution in convolutions:
            convolution.use_backend(backend)
        for module in list(model.modules()):
            changed = getattr(module, "convolution_backend_changed", None)
            if changed is not None:
                changed(backend)
    return model


def convolution_backend(model: nn.Module) -> str | None:
    """The backend of `model`'s convolutions (None: it has none)."""
    backends = {m.backend for m in model.modules() if isinstance(m, EdgeConvolution)}
    if len(backends) > 1:
        raise ValueError(f"{type(model).__name__} mixes convolution backends {sorted(backends)}")
    return backends.pop() if backends else None
