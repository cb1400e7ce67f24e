"""One ScaleShiftMACE constructor for the mace peer's scripts (runs in .peers/mace; never
imports equimd): the benchmark workers and the parity fixtures build their models from the
same hyperparameter dictionary here, so a model of a given `cfg` is the same everywhere."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from e3nn import o3
from mace import modules


def mace_kwargs(
    cfg: dict[str, Any],
    atomic_numbers: Sequence[int],
    atomic_energies: np.ndarray,
    avg_num_neighbors: float,
    gate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reduced_cg: bool | None = False,
) -> dict[str, Any]:
    """The keyword arguments `modules.MACE` and `modules.ScaleShiftMACE` share, from `cfg` (r_max
    Å, num_bessel, num_polynomial_cutoff, max_ell, interaction / interaction_first class names,
    num_interactions, hidden_irreps, MLP_irreps, correlation, radial_MLP; `gate` default SiLU)
    for the elements `atomic_numbers`, in e3nn's coupling basis (`reduced_cg=False`, equimd's;
    None: mace-torch's default)."""
    options = {} if reduced_cg is None else {"use_reduced_cg": reduced_cg}
    return dict(
        r_max=cfg["r_max"],
        num_bessel=cfg["num_bessel"],
        num_polynomial_cutoff=cfg["num_polynomial_cutoff"],
        max_ell=cfg["max_ell"],
        interaction_cls=modules.interaction_classes[cfg["interaction"]],
        interaction_cls_first=modules.interaction_classes[cfg["interaction_first"]],
        num_interactions=cfg["num_interactions"],
        num_elements=len(atomic_numbers),
        hidden_irreps=o3.Irreps(cfg["hidden_irreps"]),
        MLP_irreps=o3.Irreps(cfg["MLP_irreps"]),
        atomic_energies=atomic_energies,
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=list(atomic_numbers),
        correlation=cfg["correlation"],
        gate=modules.gate_dict["silu"] if gate is None else gate,
        radial_MLP=cfg["radial_MLP"],
        **options,
    )


def scale_shift_mace(
    cfg: dict[str, Any],
    atomic_numbers: Sequence[int],
    atomic_energies: np.ndarray,
    avg_num_neighbors: float,
    atomic_inter_scale: float,
    atomic_inter_shift: float,
    gate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reduced_cg: bool | None = False,
) -> torch.nn.Module:
    """`modules.ScaleShiftMACE` of `mace_kwargs(cfg, ...)` with this scale and shift."""
    return modules.ScaleShiftMACE(
        atomic_inter_scale=atomic_inter_scale,
        atomic_inter_shift=atomic_inter_shift,
        **mace_kwargs(cfg, atomic_numbers, atomic_energies, avg_num_neighbors, gate, reduced_cg),
    )
