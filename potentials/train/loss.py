"""Weighted squared-error loss on energy per atom, forces and stress (masked by labels).

    L = w_E · ⟨((Ê_b − E_b) / N_b)²⟩_b  +  w_F · ⟨(F̂_ia − F_ia)²⟩_{i,a}  +  w_S · ⟨(σ̂_bαβ − σ_bαβ)²⟩

Averages run over the frames (atoms, components) that carry the label; a term whose label
no frame in the batch has contributes zero. With `LabelCounts` of a larger (global) batch as
the denominators, the losses of its parts (one per data-parallel rank) sum to the loss of the
whole batch (equimd.potentials.train.distributed). Units: eV/atom, eV/Å, eV/Å³ (so the weights
carry the inverse squared units, documented in `TrainingConfig`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from equimd.potentials.train.batching import LabelledBatch


@dataclass(frozen=True)
class LossWeights:
    """energy: (eV/atom)⁻², forces: (eV/Å)⁻², stress: (eV/Å³)⁻²."""

    energy: float = 1.0
    forces: float = 100.0
    stress: float = 100.0


@dataclass(frozen=True)
class LabelCounts:
    """How many rows carry each label: frames with an energy, atoms with forces, frames with a
    stress (the denominators of the loss averages)."""

    energy: int
    forces: int
    stress: int

    @classmethod
    def of(cls, batches: Sequence[LabelledBatch]) -> LabelCounts:
        """The counts of the batches taken together (e.g. all structures of a global batch)."""
        return cls(
            energy=sum(int(b.energy_mask.sum()) for b in batches),
            forces=sum(int(b.forces_mask.sum()) for b in batches),
            stress=sum(int(b.stress_mask.sum()) for b in batches),
        )


def masked_mean_square(error: Tensor, mask: Tensor, count: int | None = None) -> Tensor:
    """Mean of error² over the rows selected by `mask` [rows] (all trailing components
    averaged); zero (still differentiable) when no row is selected. `count`: the denominator
    (rows of a larger batch this one is part of); None: the rows selected here."""
    squared = error.pow(2).reshape(error.shape[0], -1).mean(dim=1)
    weights = mask.to(squared.dtype)
    if count is None:
        return (squared * weights).sum() / weights.sum().clamp(min=1.0)
    return (squared * weights).sum() / float(max(count, 1))


def loss_terms(
    predictions: dict[str, Tensor], batch: LabelledBatch, counts: LabelCounts | None = None
) -> dict[str, Tensor]:
    """Unweighted mean-square errors {"energy", "forces", "stress"} available for this batch
    (`counts`: denominators of a global batch this batch is part of; None: this batch's)."""
    graph = batch.graph
    energy_count, forces_count, stress_count = (
        (counts.energy, counts.forces, counts.stress) if counts is not None else (None, None, None)
    )
    terms = {
        "energy": masked_mean_square(
            (predictions["energy"] - graph.energy) / batch.num_atoms, batch.energy_mask, energy_count
        )
    }
    if "forces" in predictions:
        terms["forces"] = masked_mean_square(
            predictions["forces"] - graph.forces, batch.forces_mask, forces_count
        )
    if "stress" in predictions:
        terms["stress"] = masked_mean_square(
            predictions["stress"] - graph.stress, batch.stress_mask, stress_count
        )
    return terms


def weighted_loss(
    predictions: dict[str, Tensor],
    batch: LabelledBatch,
    weights: LossWeights,
    counts: LabelCounts | None = None,
) -> Tensor:
    """The scalar training loss L (see the module docstring); with `counts` of a global batch,
    this batch's share of the global batch's L."""
    terms = loss_terms(predictions, batch, counts)
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
