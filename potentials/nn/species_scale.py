"""Per-species scale of the network's atomic energies (nequip's `per_type_energy_scales`)."""

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
