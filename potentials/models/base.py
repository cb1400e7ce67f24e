"""`Potential` interface and model registry.

A potential maps an `AtomicGraph` to per-atom energies [N] in eV. Everything else (forces,
stress) is derived by `equimd.potentials.forcefield.ForceField`. Models are rebuilt from
``(model_type, hyperparameters)`` plus a state dict: the model file never pickles code.
The contract a model follows (what `forward` may and may not do, registration, export, the
shared tests) is docs/models.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph
from equimd.potentials.nn.scale_shift import AtomicEnergyScaleShift
from equimd.potentials.nn.species import SpeciesIndex

MODELS: dict[str, type[Potential]] = {}
# model type -> the small configuration the shared tests build (see `register_model`)
TEST_HYPERPARAMETERS: dict[str, dict[str, Any]] = {}
# module -> why it was not imported (an optional dependency is missing); filled by
# `equimd.potentials.models.import_model_modules` and named when such a model is asked for
SKIPPED_MODULES: dict[str, str] = {}


def register_model(name: str, *, test_hyperparameters: dict[str, Any] | None = None):
    """Class decorator: make a `Potential` constructible by `build_model(name, ...)`.

    test_hyperparameters: a small configuration of the model for the shared tests (physics,
        TorchScript and AOTInductor export, fuzzing; docs/models.md): every hyperparameter
        except `species` and `r_max`, which the tests set (H, C, O, Cu; 4 Å). Keep it tiny
        (a few features, l_max 1-2, 2 layers): every test runs it, on CPU. Plain JSON values.

    A second class under a name already taken raises ValueError (re-running the same class
    definition, e.g. a module reload, replaces it).
    """

    def decorate(cls: type[Potential]) -> type[Potential]:
        previous = MODELS.get(name)
        if previous is not None and _qualified_name(previous) != _qualified_name(cls):
            raise ValueError(
                f"model type {name!r} is already registered by {_qualified_name(previous)}; "
                f"{_qualified_name(cls)} needs another name"
            )
        if cls.equivariance not in ("O(3)", "SE(3)"):
            raise ValueError(
                f"{_qualified_name(cls)}.equivariance must be 'O(3)' or 'SE(3)', "
                f"got {cls.equivariance!r}"
            )
        cls.model_type = name
        MODELS[name] = cls
        if test_hyperparameters is not None:
            TEST_HYPERPARAMETERS[name] = dict(test_hyperparameters)
        return cls

    return decorate


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def build_model(model_type: str, **hyperparameters: Any) -> Potential:
    """Construct a registered model from its name and hyperparameters."""
    if model_type not in MODELS:
        import difflib

        close = difflib.get_close_matches(model_type, list(MODELS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        skipped = "".join(
            f" Not imported: {module} ({reason})." for module, reason in SKIPPED_MODULES.items()
        )
        raise ValueError(
            f"unknown model type {model_type!r}; available: {sorted(MODELS)}.{hint}{skipped}"
        )
    return MODELS[model_type](**hyperparameters)


class Potential(nn.Module):
    """Base class: species handling, cutoff, per-species E0 and scale/shift.

    Subclasses call `super().__init__(species, r_max, hyperparameters)` and implement
    `forward(graph) -> Tensor[N]` (eV per atom), applying `self.scale_shift` last; the full
    list of rules is docs/models.md.
    """

    model_type: str = "potential"
    # the symmetry group of the energy (forces follow): "O(3)" — invariant under rotations and
    # reflections (the default); "SE(3)" — rotations only (a model that uses cross products,
    # signed angles or chirality-sensitive frames). tests/test_physics.py checks exactly this.
    equivariance: str = "O(3)"

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

    @torch.jit.unused
    def start_from_constant_energy(self) -> bool:
        """Zero the last layer of the per-atom energy readout, so that the model predicts the
        constant E0 + shift until training moves it (a fresh run starts no worse than that
        constant, instead of from random energies the forces-dominated loss may never undo).
        Returns whether this model supports it; the trainer calls it for fresh runs
        (`training.zero_readout`). Optional: the default does nothing and returns False."""
        return False

    def forward(self, graph: AtomicGraph) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
