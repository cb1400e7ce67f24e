"""Refit of the per-species energy reference after training.

A trained network's energies can carry a constant error: the E0s are fitted to the data before
training, but a readout without a bias learns a constant slowly, and the forces (3N labels per
energy) are blind to it. With rMD17 aspirin after 10 CPU-minutes the test energy error was
almost all constant (MAE 136 meV ≈ RMSE 140 meV per molecule; 27 meV once the constant is
removed). The refit removes it by linear least squares on the training frames:

    δ = argmin_δ Σ_f (E_f − Ê_f − Σ_s n_fs δ_s)²        E0_s ← E0_s + δ_s

n_fs: atoms of species s in frame f; Ê: the trained model's energies. Where the compositions do
not determine δ (one molecule throughout: only Σ_s n_s δ_s is fixed) the minimum-norm δ is
taken, which gives the same energies for every composition seen in training. The forces do not
change (a per-species constant has no gradient).
"""

from __future__ import annotations

import torch
from torch import Tensor

from equimd.potentials.forcefield import ForceField
from equimd.potentials.train.batching import (
    LabelledBatch,
    batch_indices,
    batch_to,
    collate_labelled,
)


def species_counts(batch: LabelledBatch, species: list[int]) -> Tensor:
    """n_fs [B, S]: atoms of each of the model's `species` (atomic numbers) per structure."""
    graph = batch.graph
    one_hot = (graph.numbers.unsqueeze(1) == torch.as_tensor(species, device=graph.numbers.device)).double()
    counts = torch.zeros(int(graph.ptr.shape[0]) - 1, len(species), dtype=torch.float64, device=one_hot.device)
    return counts.index_add_(0, graph.batch, one_hot)


@torch.no_grad()
def energy_reference_correction(
    forcefield: ForceField,
    graphs: list[LabelledBatch],
    species: list[int],
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor | None:
    """δ [S] (eV, float64, in the order of `species`) that minimises the squared energy error of
    `forcefield` on the frames of `graphs` with an energy label; None where none has one."""
    forcefield.eval()
    rows, residuals = [], []
    for indices in batch_indices(len(graphs), batch_size):
        batch = batch_to(collate_labelled([graphs[i] for i in indices]), device, dtype)
        if not bool(batch.energy_mask.any()):
            continue
        predicted = forcefield(batch.graph, compute_forces=False, compute_stress=False)["energy"]
        labelled = batch.energy_mask
        residuals.append((batch.graph.energy - predicted)[labelled].double().cpu())  # [B'] eV
        rows.append(species_counts(batch, species)[labelled].cpu())  # [B', S]
    if not rows:
        return None
    counts, residual = torch.cat(rows), torch.cat(residuals)
    # minimum-norm least squares (the pseudo-inverse handles compositions that repeat)
    return torch.linalg.pinv(counts) @ residual


def shift_energy_reference(potential: torch.nn.Module, correction: Tensor) -> None:
    """E0_s ← E0_s + δ_s in `potential.scale_shift` (every equimd `Potential` has one)."""
    e0 = potential.scale_shift.e0
    with torch.no_grad():
        e0.add_(correction.to(dtype=e0.dtype, device=e0.device))
