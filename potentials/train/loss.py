"""Weighted squared-error loss on energy per atom, forces and stress (masked by labels).

    L = w_E · ⟨((Ê_b − E_b) / N_b)²⟩_b  +  w_F · ⟨(F̂_ia − F_ia)²⟩_{i,a}  +  w_S · ⟨(σ̂_bαβ − σ_bαβ)²⟩

Averages run over the frames (atoms, components) that carry the label; a term whose label
no frame in the batch has contributes zero. Units: eV/atom, eV/Å, eV/Å³ (so the weights
carry the inverse squared units, documented in `TrainingConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from equimd.potentials.train.batching import LabelledBatch


@dataclass(frozen=True)
class LossWeights:
    """energy: (eV/atom)⁻², forces: (eV/Å)⁻², stress: (eV/Å³)⁻²."""

    energy: float = 1.0
    forces: float = 100.0
    stress: float = 100.0


def masked_mean_square(error: Tensor, mask: Tensor) -> Tensor:
    """Mean of error² over the rows selected by `mask` [rows] (all trailing components
    averaged); zero (still differentiable) when no row is selected."""
    squared = error.pow(2).reshape(error.shape[0], -1).mean(dim=1)
    weights = mask.to(squared.dtype)
    return (squared * weights).sum() / weights.sum().clamp(min=1.0)


def loss_terms(predictions: dict[str, Tensor], batch: LabelledBatch) -> dict[str, Tensor]:
    """Unweighted mean-square errors {"energy", "forces", "stress"} available for this batch."""
    graph = batch.graph
    terms = {
        "energy": masked_mean_square(
            (predictions["energy"] - graph.energy) / batch.num_atoms, batch.energy_mask
        )
    }
    if "forces" in predictions:
        terms["forces"] = masked_mean_square(predictions["forces"] - graph.forces, batch.forces_mask)
    if "stress" in predictions:
        terms["stress"] = masked_mean_square(predictions["stress"] - graph.stress, batch.stress_mask)
    return terms


def weighted_loss(
    predictions: dict[str, Tensor], batch: LabelledBatch, weights: LossWeights
) -> Tensor:
    """The scalar training loss L (see the module docstring)."""
    terms = loss_terms(predictions, batch)
    loss = weights.energy * terms["energy"]
    if "forces" in terms and weights.forces > 0:
        loss = loss + weights.forces * terms["forces"]
    if "stress" in terms and weights.stress > 0:
        loss = loss + weights.stress * terms["stress"]
    return loss


def needs_forces(batch: LabelledBatch, weights: LossWeights) -> bool:
    return weights.forces > 0 and batch.has_forces


def needs_stress(batch: LabelledBatch, weights: LossWeights) -> bool:
    return weights.stress > 0 and batch.has_stress




def loss_from_metrics(metrics: dict[str, float], weights: LossWeights) -> float:
    """The loss over a whole data set from its RMSEs (meV units, see `metrics.UNITS`):
    Σ w · RMSE², identical to `weighted_loss` evaluated on the full set at once."""
    import math

    total = 0.0
    for quantity, weight in (("energy", weights.energy), ("forces", weights.forces), ("stress", weights.stress)):
        rmse = metrics.get(f"{quantity}_rmse", math.nan)
        if weight > 0 and not math.isnan(rmse):
            total += weight * (rmse / 1000.0) ** 2
    return total
