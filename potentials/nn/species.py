"""Chemical species: atomic number → model species index, one-hot node attributes."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpeciesIndex(nn.Module):
    """numbers [N] (atomic numbers) → species index [N] in 0..num_species-1.

    Unknown elements raise inside the graph too (exported models have no Python to check).
    """

    def __init__(self, species: list[int]) -> None:
        super().__init__()
        table = torch.full((119,), -1, dtype=torch.long)
        for index, z in enumerate(species):
            table[int(z)] = index
        self.register_buffer("z_to_index", table)
        self.num_species = len(species)

    def forward(self, numbers: Tensor) -> Tensor:
        index = self.z_to_index[numbers]
        if bool((index < 0).any()):
            bad = int(torch.nonzero(index < 0)[0, 0])
            raise RuntimeError(
                "atom " + str(bad) + " has atomic number " + str(int(numbers[bad]))
                + ", which is not one of the model's species"
            )
        return index


def one_hot(index: Tensor, num_species: int, dtype: torch.dtype) -> Tensor:
    """[N] → [N, num_species] node attributes (scalars, irreps num_species x 0e)."""
    return torch.nn.functional.one_hot(index, num_species).to(dtype)
