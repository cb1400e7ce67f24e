"""Potentials, registered by name ("nequip", "mace", ...; docs/models.md).

Every module of this package is imported here, so each `@register_model` class is available
to `build_model` without a list of imports to keep up to date. A module whose optional
dependency is missing is skipped and the reason kept in `SKIPPED_MODULES` (and named when
that model is asked for); any other import error is raised.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from equimd.potentials.models.base import (
    MODELS,
    SKIPPED_MODULES,
    TEST_HYPERPARAMETERS,
    Potential,
    build_model,
    register_model,
)

__all__ = [
    "MODELS",
    "SKIPPED_MODULES",
    "TEST_HYPERPARAMETERS",
    "Potential",
    "build_model",
    "import_model_modules",
    "register_model",
]


def import_model_modules(package: str, path: Iterable[str]) -> dict[str, str]:
    """Import every module of `package` (found on `path`, its ``__path__``) for its
    `@register_model` side effect; return {module: reason} of the modules skipped.

    A module is skipped only when what it failed to import lies outside equimd and outside
    `package`'s own top-level package (an optional third-party dependency such as
    cuequivariance or fairchem); a broken import of our own code is raised.
    """
    own = ("equimd", package.split(".")[0])
    skipped: dict[str, str] = {}
    for module in pkgutil.iter_modules(list(path)):
        name = f"{package}.{module.name}"
        try:
            importlib.import_module(name)
        except ImportError as error:
            missing = error.name or ""
            if missing.split(".")[0] in own:
                raise
            skipped[name] = f"{type(error).__name__}: {error}"
    return skipped


SKIPPED_MODULES.update(import_model_modules(__name__, __path__))
