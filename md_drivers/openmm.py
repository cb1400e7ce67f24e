"""OpenMM forces from a deployed equimd model file — the one place where units change.

Two paths, same physics:

* `create_torch_force` — an `openmmtorch.TorchForce` around a TorchScript wrapper
  (`OpenMMModelWrapper`). No Python runs in the MD loop; this is the default path.
* `create_python_force` — an `openmm.PythonForce` that calls the model from Python each step.
  It works with every format `equimd.deploy.load` reads, including torch.export/AOTInductor packages
  that cannot be embedded in a TorchForce.

Units. OpenMM works in nm and kJ/mol, the model in Å and eV:

    positions_Å = 10 · positions_nm
    energy_kJ/mol = 96.48533212331 · energy_eV
    forces_kJ/mol/nm = 964.8533212331 · forces_eV/Å

The constants live in `equimd.units` (exact SI-2019 values, as `openmm.unit` computes them).

ML region. Either force may act on a subset of the particles (`atoms_subset`: indices into the
full System, e.g. a ligand in water): only those positions reach the model, the other particles
get zero force from it. The model sees the subset as periodic when `periodic=True` (the OpenMM box),
otherwise as an isolated molecule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from equimd import checks
from equimd.errors import UnknownElementError
from equimd.units import EV_TO_KJ_PER_MOL, FORCE_TO_KJ_PER_MOL_NM, NM_TO_ANGSTROM

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "single": torch.float32,
           "double": torch.float64}


ModelSpeciesError = UnknownElementError
"""The error for an ML atom whose element the model does not know (kept as a name for scripts
written against earlier versions; it is `equimd.errors.UnknownElementError`)."""


def import_openmmtorch():
    """Import `openmmtorch` after `torch` (its libraries link against torch's).

    openmmtorch 1.5 imports the deprecated `simtk.openmm` shim, which logs a warning on the root
    logger; that one message is filtered during the import and the filter removed again.
    """
    import torch  # noqa: F401  (must precede openmmtorch: libnvrtc is found through torch)

    class _SimtkWarning(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "simtk.openmm" not in record.getMessage()

    root = logging.getLogger()
    quiet = _SimtkWarning()
    root.addFilter(quiet)
    try:
        import openmmtorch
    finally:
        root.removeFilter(quiet)
    _reload_torch_kernel_plugins()
    return openmmtorch


_RELOADED_PLUGINS: set[str] = set()


def _reload_torch_kernel_plugins() -> None:
    """Load OpenMM-Torch's kernel plugins that failed because `openmm` was imported first.

    OpenMM loads its plugin directory on `import openmm`; without torch's libraries already
    in the process, libOpenMMTorchReference.so fails (libnvrtc.so.12 not found) and a Context
    with a TorchForce then reports "does not support all required kernels". With torch
    imported the library loads; plugins of absent back-ends (OpenCL) still fail and are skipped.
    """
    import openmm

    prefix = "Error loading library "
    for message in openmm.Platform.getPluginLoadFailures():
        if not message.startswith(prefix) or "OpenMMTorch" not in message:
            continue
        path = message[len(prefix):].split(": ", 1)[0]
        if path in _RELOADED_PLUGINS:
            continue
        _RELOADED_PLUGINS.add(path)
        try:
            openmm.Platform.loadPluginLibrary(path)
        except Exception:  # e.g. libOpenCL missing: that back-end is unavailable here
            pass


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype) -> torch.dtype:
    """'float32' | 'single' | torch.float32 | None (→ `default`) → torch dtype."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported precision {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def atomic_numbers_from_topology(topology, atoms: Sequence[int] | None = None) -> list[int]:
    """Atomic numbers of `atoms` (default: all) of an `openmm.app.Topology`.

    Raises `ModelSpeciesError` naming the atom for one without an element (virtual sites,
    extra particles) — such particles cannot be part of the ML region.
    """
    all_atoms = list(topology.atoms())
    selected = all_atoms if atoms is None else [all_atoms[int(i)] for i in atoms]
    numbers = []
    for atom in selected:
        if atom.element is None:
            raise ModelSpeciesError(
                f"atom {atom.index} ({atom.name} in residue {atom.residue.name} "
                f"{atom.residue.id}) has no element and cannot be treated by the ML model"
            )
        numbers.append(int(atom.element.atomic_number))
    return numbers


def load_model(model, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None):
    """A `deploy.DeployedModel` from a path (or one already loaded), in `dtype` if given.

    A changed dtype is a new object (`DeployedModel.to`: TorchScript files only); the
    argument itself is never modified.
    """
    from equimd.deploy import DeployedModel, load

    deployed = model if isinstance(model, DeployedModel) else load(model, device=str(device))
    target = resolve_dtype(dtype, deployed.dtype)
    return deployed if target == deployed.dtype else deployed.to(target)


class OpenMMModelWrapper(nn.Module):
    """TorchScript adapter between OpenMM (nm, kJ/mol) and a deployed model (Å, eV).

    forward(positions [N_system, 3] nm (float64 from OpenMM), box_vectors [3, 3] nm (only
    when periodic)) → (energy [] kJ/mol, forces [N_system, 3] kJ/mol/nm), both float64.

    Inside: select the ML atoms, cast to the model dtype, convert to Å, wrap periodic positions
    into the box, call the deployed module, convert back and scatter the ML forces into the
    full-system array (zeros elsewhere).
    """

    def __init__(
        self,
        model: nn.Module,
        numbers: Sequence[int],
        atoms: Sequence[int] | None,
        periodic: bool,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.model = model
        self.periodic = bool(periodic)
        self.use_subset = atoms is not None
        self.register_buffer("numbers", torch.tensor([int(z) for z in numbers], dtype=torch.long))
        subset = [] if atoms is None else [int(i) for i in atoms]
        self.register_buffer("atoms", torch.tensor(subset, dtype=torch.long))
        self.register_buffer("pbc", torch.tensor([self.periodic] * 3, dtype=torch.bool))
        # zero-dimensional buffer carrying the model dtype (and device, after .to(device))
        self.register_buffer("reference", torch.zeros((), dtype=dtype))
        self.length_scale = NM_TO_ANGSTROM
        self.energy_scale = EV_TO_KJ_PER_MOL

    def forward(self, positions: Tensor,
                box_vectors: Tensor | None = None) -> tuple[Tensor, Tensor]:
        dtype = self.reference.dtype
        ml_positions = positions
        if self.use_subset:
            ml_positions = positions.index_select(0, self.atoms)
        ml_positions = ml_positions.to(dtype) * self.length_scale
        if self.periodic and box_vectors is not None:
            cell = box_vectors.to(dtype) * self.length_scale
            fractional = torch.linalg.solve(cell.t(), ml_positions.t()).t()
            ml_positions = ml_positions - torch.floor(fractional) @ cell
        else:
            cell = torch.zeros((3, 3), dtype=dtype, device=positions.device)
        # DeployedPotential.compute(positions, numbers, cell, pbc, compute_forces,
        # compute_stress): forces yes, stress no (OpenMM never reads it; the barostat works
        # from energies)
        results = self.model.compute(ml_positions, self.numbers, cell, self.pbc, True, False)
        energy = results["energy"].to(torch.float64).reshape(()) * self.energy_scale
        ml_forces = results["forces"].to(torch.float64) * (self.energy_scale * self.length_scale)
        if not self.use_subset:
            return energy, ml_forces
        forces = torch.zeros(positions.shape, dtype=torch.float64, device=positions.device)
        forces = forces.index_copy(0, self.atoms, ml_forces)
        return energy, forces


def build_wrapper(
    model,
    numbers: Sequence[int],
    atoms: Sequence[int] | None = None,
    periodic: bool = False,
    dtype: str | torch.dtype | None = None,
) -> torch.jit.ScriptModule:
    """The scripted `OpenMMModelWrapper` for a TorchScript model (see `create_torch_force`)."""
    deployed = load_model(model, "cpu", dtype)
    if not isinstance(deployed.module, torch.jit.ScriptModule):
        raise ValueError(
            f"{deployed.path}: exported as {deployed.kind!r}, which a TorchForce cannot embed; "
            "use create_python_force, or export with --format torchscript"
        )
    numbers = [int(z) for z in numbers]
    if atoms is not None and len(atoms) != len(numbers):
        raise ValueError(f"{len(atoms)} ML atoms but {len(numbers)} atomic numbers")
    checks.check_species(numbers, deployed.species, "OpenMM System", atom_indices=atoms)
    wrapper = OpenMMModelWrapper(deployed.module, numbers, atoms, periodic, deployed.dtype)
    return torch.jit.script(wrapper)


def create_torch_force(
    model,
    numbers: Sequence[int],
    atoms_subset: Sequence[int] | None = None,
    periodic: bool = False,
    dtype: str | torch.dtype | None = None,
    force_group: int = 0,
    properties: dict[str, str] | None = None,
):
    """An `openmmtorch.TorchForce` evaluating a TorchScript model in OpenMM.

    model: path of a deployed model file (`equimd deploy ... --format torchscript`), or a
        `deploy.DeployedModel` already loaded (it is not modified).
    numbers: atomic numbers of the ML atoms, in the order of `atoms_subset` (or of the whole
        System when `atoms_subset` is None).
    atoms_subset: indices of the ML atoms in the System; other particles get no ML force.
    periodic: use the System's periodic box (the force then `usesPeriodicBoundaryConditions`).
    dtype: None (the model's own), 'float32'/'single' or 'float64'/'double'.
    properties: TorchForce properties (strings), passed to `TorchForce.setProperty`;
        `useCUDAGraphs` is not supported (the exported graph synchronises with the host).

    Energy kJ/mol, forces kJ/mol/nm (`setOutputsForces(True)`: the model's own forces, no
    second backward pass). Raises `ModelSpeciesError` for an element the model does not know.
    """
    openmmtorch = import_openmmtorch()
    wrapper = build_wrapper(model, numbers, atoms_subset, periodic, dtype)
    force = openmmtorch.TorchForce(wrapper, properties or {})
    force.setOutputsForces(True)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setForceGroup(int(force_group))
    force.setName("equimd TorchForce")
    return force


class PythonForceComputation:
    """The callable an `openmm.PythonForce` runs each step.

    __call__(state) → (energy kJ/mol, forces [N_ml, 3] kJ/mol/nm NumPy float64); the State
    holds only the ML particles (`PythonForce.setParticles`). Picklable: it pickles as the
    model path and options and loads the model again on unpickling, so Systems holding it can
    be serialized (XmlSerializer) and deep-copied (openmm-ml's interpolation does).
    """

    def __init__(
        self,
        model,
        numbers: Sequence[int],
        periodic: bool,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.model = load_model(model, device, dtype)
        self.model_path = str(self.model.path)
        self.dtype_name = str(self.model.dtype).replace("torch.", "")
        self.numbers_list = [int(z) for z in numbers]
        self.periodic = bool(periodic)
        self.device = str(device)
        self._setup()

    def _setup(self) -> None:
        self.dtype = self.model.dtype
        self.numbers = torch.tensor(self.numbers_list, dtype=torch.long, device=self.device)
        self.pbc = torch.tensor([self.periodic] * 3, dtype=torch.bool, device=self.device)
        self.no_cell = torch.zeros((3, 3), dtype=self.dtype, device=self.device)

    def __getstate__(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "dtype_name": self.dtype_name,
                "numbers_list": self.numbers_list, "periodic": self.periodic,
                "device": self.device}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.model = load_model(self.model_path, self.device, self.dtype_name)
        self._setup()

    def __call__(self, state) -> tuple[float, np.ndarray]:
        from openmm import unit

        positions_nm = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        positions = torch.as_tensor(np.asarray(positions_nm) * NM_TO_ANGSTROM, device=self.device)
        positions = positions.to(self.dtype)
        cell = self.no_cell
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
            cell = torch.as_tensor(np.asarray(box) * NM_TO_ANGSTROM, device=self.device)
            cell = cell.to(self.dtype)
            fractional = torch.linalg.solve(cell.t(), positions.t()).t()
            positions = positions - torch.floor(fractional) @ cell
        results = self.model(positions, self.numbers, cell, self.pbc, compute_stress=False)
        energy = float(results["energy"].detach().to(torch.float64)) * EV_TO_KJ_PER_MOL
        forces = results["forces"].detach().to(torch.float64).cpu().numpy() * FORCE_TO_KJ_PER_MOL_NM
        return energy, forces


def create_python_force(
    model,
    numbers: Sequence[int],
    atoms_subset: Sequence[int] | None = None,
    periodic: bool = False,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    force_group: int = 0,
):
    """An `openmm.PythonForce` evaluating any deployed model (TorchScript or AOTInductor).

    Arguments as `create_torch_force` (model: path or loaded `DeployedModel`); `device` is
    where the model runs ('cpu', 'cuda'); `dtype` can change only for TorchScript files.
    Positions travel OpenMM → NumPy → torch and forces back each step: slower than the
    TorchForce for small systems, but the only path for torch.export/AOTInductor models.
    """
    import openmm

    numbers = [int(z) for z in numbers]
    if atoms_subset is not None and len(atoms_subset) != len(numbers):
        raise ValueError(f"{len(atoms_subset)} ML atoms but {len(numbers)} atomic numbers")
    computation = PythonForceComputation(model, numbers, periodic, device, dtype)
    checks.check_species(numbers, computation.model.species, "OpenMM System",
                         atom_indices=atoms_subset)
    force = openmm.PythonForce(computation)
    if atoms_subset is not None:
        force.setParticles([int(i) for i in atoms_subset])
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setForceGroup(int(force_group))
    force.setName("equimd PythonForce")
    return force


def create_force(
    model,
    numbers: Sequence[int],
    atoms_subset: Sequence[int] | None = None,
    periodic: bool = False,
    path: str = "torch",
    **options: Any,
):
    """`create_torch_force` (path='torch') or `create_python_force` (path='python')."""
    if path == "torch":
        return create_torch_force(model, numbers, atoms_subset, periodic, **options)
    if path == "python":
        return create_python_force(model, numbers, atoms_subset, periodic, **options)
    raise ValueError(f"unknown force path {path!r}; use 'torch' or 'python'")
