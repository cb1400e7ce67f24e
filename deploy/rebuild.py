"""A fresh, frozen copy of a model for export (shared by the TorchScript and AOTInductor paths
and by `equimd.deploy.verify`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from equimd.potentials.models.base import Potential, build_model
from equimd.potentials.nn.convolution import apply_convolution_backend, convolution_backend


@contextlib.contextmanager
def e3nn_optimization_defaults(**options: Any) -> Iterator[None]:
    """Temporarily set `e3nn.set_optimization_defaults` (restored on exit)."""
    import e3nn

    saved = e3nn.get_optimization_defaults()
    e3nn.set_optimization_defaults(**options)
    try:
        yield
    finally:
        e3nn.set_optimization_defaults(**saved)


def rebuild_model(model: Potential, dtype: torch.dtype, jit_script_fx: bool = True) -> Potential:
    """A fresh copy of `model` in `dtype`, eval mode, parameters frozen.

    Rebuilt from (model_type, hyperparameters) + its convolution backend + state dict, so the
    caller's model is never modified and e3nn's code generation follows `jit_script_fx` (off
    for torch.export). The global RNG is left as it was (construction draws random weights).
    """
    backend = convolution_backend(model)
    with torch.random.fork_rng(devices=[]), e3nn_optimization_defaults(jit_script_fx=jit_script_fx):
        copy = build_model(model.model_type, **model.hyperparameters())
        if backend is not None:
            apply_convolution_backend(copy, backend)
    copy = copy.to(dtype)
    copy.load_state_dict(model.state_dict())
    copy.eval()
    for parameter in copy.parameters():
        parameter.requires_grad_(False)
    return copy
