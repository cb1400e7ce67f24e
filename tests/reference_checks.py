"""Shared checks of a model against a dense reference of its paper's equations.

A reference is a function `reference(state, model, positions, numbers, edge_index, shifts,
cell) -> total energy` (eV) that reads the model's weights from `state` (its state dict) and
shares no code with the fast path; these helpers build the randomised model, compare energy
and forces, check that the comparison can fail, and that the energy is smooth at r_max.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from ase import Atoms

from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from tests.model_zoo import R_MAX, SPECIES, STRUCTURES, graph_of

Reference = Callable[..., torch.Tensor]


def perturbed_model(model_type: str, hyperparameters: dict, seed: int = 0) -> torch.nn.Module:
    """`model_type` in float64 with every parameter (biases included) randomised, and E0s,
    scale and shift set: a reference that ignores any weight disagrees."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        model = build_model(model_type, species=SPECIES, r_max=R_MAX, **hyperparameters)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
        model.scale_shift.set_statistics([0.1, -0.2, 0.3, -0.4], scale=1.3, shift=-0.2)
    finally:
        torch.set_default_dtype(previous)
    return model


def _reference_arguments(model: torch.nn.Module, graph, positions: torch.Tensor) -> tuple:
    return (model, positions, graph.numbers, graph.edge_index, graph.edge_shift, graph.cell[0])


def assert_matches_reference(model: torch.nn.Module, structure: str, reference: Reference,
                             tolerance: float = 1e-6) -> None:
    """Energy and forces of the model = the reference's (and its gradient), within
    `tolerance` (eV, eV/Å) in float64, on a structure of `tests.model_zoo.STRUCTURES`."""
    graph = graph_of(STRUCTURES[structure]())
    state = {k: v.detach() for k, v in model.state_dict().items()}
    out = ForceField(model)(graph)
    positions = graph.positions.clone().requires_grad_(True)
    energy = reference(state, *_reference_arguments(model, graph, positions))
    (forces,) = torch.autograd.grad(-energy, positions)
    assert graph.edge_index.shape[1] > 0
    assert abs(float(out["energy"].detach().sum()) - float(energy.detach())) <= tolerance
    assert torch.allclose(out["forces"], forces, atol=tolerance, rtol=0)


def assert_reference_sees_weight(model: torch.nn.Module, reference: Reference, key: str,
                                 index: tuple[int, ...], change: float = 0.1) -> None:
    """The comparison can fail: changing one weight moves the reference energy by far more
    than the comparison's tolerance."""
    graph = graph_of(STRUCTURES["molecule"]())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    arguments = _reference_arguments(model, graph, graph.positions)
    before = float(reference(state, *arguments))
    state[key][index] += change
    assert abs(float(reference(state, *arguments)) - before) > 1e-4


def assert_smooth_at_cutoff(model: torch.nn.Module) -> None:
    """A third atom crossing r_max changes neither energy nor forces abruptly."""
    forcefield = ForceField(model)

    def evaluate(distance: float) -> tuple[float, torch.Tensor]:
        atoms = Atoms("COH", positions=[[0, 0, 0], [1.2, 0, 0], [-distance, 0.3, 0]])
        out = forcefield(graph_of(atoms))
        return float(out["energy"].detach().sum()), out["forces"]

    inside_energy, inside_forces = evaluate(R_MAX - 1e-7)
    outside_energy, outside_forces = evaluate(R_MAX + 1e-7)
    assert abs(inside_energy - outside_energy) < 1e-9
    assert torch.allclose(inside_forces, outside_forces, atol=1e-7)


def assert_matches_atomic_reference(model: torch.nn.Module, reference: Callable, molecules: list,
                                    tolerance: float = 1e-10) -> None:
    """Per-atom energies and forces of the model = `reference(model, positions [N, 3] Å,
    species [N] indices) -> per-atom energies [N]` on each molecule (float64), and the
    energies are not trivially small (the comparison means something)."""
    for index, atoms in enumerate(molecules):
        out = ForceField(model)(graph_of(atoms))
        positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
        species = model.species_index(torch.tensor(atoms.numbers))
        energies = reference(model, positions, species)
        (gradient,) = torch.autograd.grad(energies.sum(), positions)
        assert torch.allclose(out["atomic_energies"].detach(), energies.detach(),
                              atol=tolerance, rtol=0), index
        assert torch.allclose(out["forces"], -gradient, atol=tolerance, rtol=0), index
        assert float(energies.abs().max()) > 1e-3
