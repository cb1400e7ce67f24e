"""`Potential` interface and model registry.

A potential maps an `AtomicGraph` to per-atom energies [N] in eV. Everything else (forces,
stress) is derived by `equimd.potentials.forcefield.ForceField`. Models are rebuilt from
``(model_type, hyperparameters)`` plus a state dict: the model file never pickles code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph
from equimd.potentials.nn.scale_shift import AtomicEnergyScaleShift
from equimd.potentials.nn.species import SpeciesIndex

MODELS: dict[str, type[Potential]] = {}


def register_model(name: str):
    """Class decorator: make a `Potential` constructible by `build_model(name, ...)`."""

    def decorate(cls: type[Potential]) -> type[Potential]:
        cls.model_type = name
        MODELS[name] = cls
        return cls

    return decorate


def build_model(model_type: str, **hyperparameters: Any) -> Potential:
    """Construct a registered model from its name and hyperparameters."""
    if model_type not in MODELS:
        import difflib

        close = difflib.get_close_matches(model_type, list(MODELS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model type {model_type!r}; available: {sorted(MODELS)}.{hint}")
    return MODELS[model_type](**hyperparameters)


class Potential(nn.Module):
    """Base class: species handling, cutoff, per-species E0 and scale/shift.

    Subclasses call `super().__init__(species, r_max, hyperparameters)` and implement
    `forward(graph) -> Tensor[N]` (eV per atom), applying `self.scale_shift` last.
    """

    model_type: str = "potential"

    def __init__(self, species: list[int], r_max: float, hyperparameters: dict[str, Any]) -> None:
        super().__init__()
        species = [int(z) for z in species]
        if len(set(species)) != len(species) or not species:
            raise ValueError(f"species must be a non-empty list of distinct atomic numbers, got {species}")
        self.species: list[int] = species
        self.r_max: float = float(r_max)
        self.num_species: int = len(species)
        self.species_index = SpeciesIndex(species)
        self.scale_shift = AtomicEnergyScaleShift(len(species))
        self._hyperparameters = dict(hyperparameters, species=species, r_max=float(r_max))

    @torch.jit.unused
    def hyperparameters(self) -> dict[str, Any]:
        """Everything `build_model(model_type, **hyperparameters)` needs to rebuild this model."""
        return dict(self._hyperparameters)

    def forward(self, graph: AtomicGraph) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
