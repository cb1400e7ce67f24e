"""Per-species scales: of the atomic energies (nequip's `per_type_energy_scales`) and of node
features (nequip's per-type `avg_num_neighbors`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpeciesEnergyScale(nn.Module):
    """e_i → scales[species_i] · e_i, dimensionless [N] → [N]; `scales`: [num_species]."""

    def __init__(self, num_species: int) -> None:
        super().__init__()
        self.register_buffer("scales", torch.ones(num_species, dtype=torch.get_default_dtype()))

    def forward(self, energy: Tensor, species: Tensor) -> Tensor:
        return energy * self.scales[species]


class NoSpeciesEnergyScale(nn.Module):
    """The identity, for models with one global scale (no buffer, no state-dict entry)."""

    def forward(self, energy: Tensor, species: Tensor) -> Tensor:
        return energy


class SpeciesFeatureScale(nn.Module):
    """features [N, F] → features · scales[species] (one number per species, e.g. NequIP's
    per-species 1/√⟨n_neighbors⟩ on the sending atoms); `node_attrs`: one-hot [N, S]."""

    def __init__(self, num_species: int) -> None:
        super().__init__()
        self.register_buffer("scales", torch.ones(num_species, dtype=torch.get_default_dtype()))

    def forward(self, features: Tensor, node_attrs: Tensor) -> Tensor:
        return features * (node_attrs @ self.scales).unsqueeze(-1)


class NoSpeciesFeatureScale(nn.Module):
    """The identity (no buffer, no state-dict entry)."""

    def forward(self, features: Tensor, node_attrs: Tensor) -> Tensor:
        return features
