"""ASE calculator for deployed equimd models.

    from equimd.md_drivers.ase import EquimdCalculator
    atoms.calc = EquimdCalculator("model.pt")          # file from `equimd deploy`
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

Properties: energy and free_energy (eV), forces (eV/Å), energies (per atom, eV) and, for
3D-periodic cells only, stress (eV/Å³, ASE sign and Voigt order xx yy zz yz xz xy). The
atom count, species, cell and pbc may change between calls. Imports `deploy` and ASE only —
never `potentials` or training code — and changes no global torch state (default dtype,
threads, grad mode).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator as ASECalculator
from ase.calculators.calculator import PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from equimd.deploy.load import DeployedModel, load

__all__ = ["Calculator", "EquimdCalculator"]


class EquimdCalculator(ASECalculator):
    """ASE calculator running a deployed model file (TorchScript or AOTInductor).

    model_path: file written by `equimd deploy` (ignored if `model` is given).
    device: "cpu", "cuda", "cuda:1", ...; one this machine lacks raises
        `equimd.deploy.errors.DeviceError` (e.g. "cuda" without CUDA).
    dtype: None keeps the file's dtype; "float32"/"float64" (or a torch dtype) converts a
        TorchScript model (an AOTInductor package is compiled for one dtype and refuses).
    compute_stress: if True (default), stress is computed with every evaluation of a
        3D-periodic structure (one strain derivative, cheap), so `get_stress` after
        `get_forces` costs nothing; if False, only when stress is requested.
    model: an already loaded `DeployedModel` (shared between calculators).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        *,
        compute_stress: bool = True,
        model: DeployedModel | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if model is None:
            if model_path is None:
                raise ValueError("EquimdCalculator needs a model file (model_path) or a model")
            model = load(model_path, device=device)
        if dtype is not None:
            model = _with_dtype(model, dtype)
        self.model = model
        self.compute_stress = bool(compute_stress)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        properties = properties or ["energy"]
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        numbers = atoms.get_atomic_numbers()
        source = f"atoms ({atoms.get_chemical_formula()})"
        self.model.check_species(numbers, source=source)
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                f"stress is only defined for 3D-periodic cells; these atoms have pbc={atoms.pbc.tolist()}"
            )
        with_stress = periodic and (self.compute_stress or "stress" in properties)
        out = self.model(
            atoms.get_positions(), numbers, np.asarray(atoms.get_cell()), atoms.pbc,
            compute_forces=True, compute_stress=with_stress, source=source,
        )
        energy = float(out["energy"])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": _numpy(out["forces"]),
            "energies": _numpy(out["atomic_energies"]),
        }
        if with_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(_numpy(out["stress"]))


Calculator = EquimdCalculator


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()


def _with_dtype(model: DeployedModel, dtype: str | torch.dtype) -> DeployedModel:
    """The model in `dtype` (TorchScript: weights converted; AOTInductor: must match)."""
    target = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if target not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64' (or None: the file's), got {dtype!r}")
    if target == model.dtype:
        return model
    if model.kind != "torchscript":
        raise ValueError(
            f"{model.path}: an AOTInductor package is compiled for {model.metadata['dtype']}; "
            f"export it again with `equimd deploy --dtype {str(target).replace('torch.', '')}`"
        )
    return model.to(target)
