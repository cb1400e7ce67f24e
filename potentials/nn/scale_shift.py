"""Per-atom energy = E0[species] + scale · e_i + shift (eV)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AtomicEnergyScaleShift(nn.Module):
    """Map dimensionless network outputs e_i [N] to atomic energies [N] eV.

    e0:    [num_species] per-species reference energies (eV), e.g. least-squares E0s
    scale: typical force RMS (eV/Å·Å = eV) so the network learns O(1) numbers
    shift: mean per-atom interaction energy (eV)
    """

    def __init__(self, num_species: int, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("e0", torch.zeros(num_species, dtype=torch.get_default_dtype()))
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.get_default_dtype()))
        self.register_buffer("shift", torch.tensor(float(shift), dtype=torch.get_default_dtype()))

    def set_statistics(self, e0: list[float], scale: float, shift: float) -> None:
        with torch.no_grad():
            self.e0.copy_(torch.as_tensor(e0, dtype=self.e0.dtype))
            self.scale.fill_(float(scale))
            self.shift.fill_(float(shift))

    def forward(self, interaction_energy: Tensor, species: Tensor) -> Tensor:
        return self.e0[species] + self.scale * interaction_energy + self.shift
