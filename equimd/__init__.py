"""equimd: E(3)-equivariant interatomic potentials from training to long molecular dynamics.

The public API in one import (each name is loaded on first use, so `import equimd` is light):

    from equimd import load_model, EquimdCalculator
    model = load_model("model.pt")                 # a deployed model file (no training code)
    atoms.calc = EquimdCalculator("model.pt")      # ASE

    from equimd import build_model, ForceField, read_configurations, load_config, train
    result = train(load_config("train.yaml"))    # the same as `equimd train train.yaml`
    from equimd import EquimdError                 # base class of every equimd error

Layers (import names): `equimd.potentials` (data, blocks, models, training), `equimd.deploy`
(one model file), `equimd.md_drivers` (ASE, OpenMM, `equimd md`). Units: eV, Å.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute); resolved lazily by __getattr__ (PEP 562)
_PUBLIC: dict[str, tuple[str, str]] = {
    # errors (dependency-free)
    "EquimdError": ("equimd.errors", "EquimdError"),
    "StructureError": ("equimd.errors", "StructureError"),
    "CellError": ("equimd.errors", "CellError"),
    "UnknownElementError": ("equimd.errors", "UnknownElementError"),
    "OutputWriteError": ("equimd.files", "OutputWriteError"),
    # deployed models
    "load_model": ("equimd.deploy.load", "load"),
    "read_metadata": ("equimd.deploy.load", "read_metadata"),
    "DeployedModel": ("equimd.deploy.load", "DeployedModel"),
    "export_model": ("equimd.deploy.export", "export_model"),
    # MD engines
    "EquimdCalculator": ("equimd.md_drivers.ase", "EquimdCalculator"),
    "create_force": ("equimd.md_drivers.openmm", "create_force"),
    # models, data and training
    "build_model": ("equimd.potentials.models", "build_model"),
    "register_model": ("equimd.potentials.models", "register_model"),
    "Potential": ("equimd.potentials.models", "Potential"),
    "ForceField": ("equimd.potentials.forcefield", "ForceField"),
    "load_checkpoint": ("equimd.potentials.models.serialization", "load_model"),
    "read_configurations": ("equimd.potentials.data", "read_configurations"),
    "DatasetKeys": ("equimd.potentials.data", "DatasetKeys"),
    "load_config": ("equimd.potentials.train.config", "load_config"),
    "train": ("equimd.potentials.train.trainer", "train"),
    "evaluate": ("equimd.potentials.train.evaluate", "evaluate"),
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'equimd' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
