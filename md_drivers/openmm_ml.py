"""openmm-ml plugin: ``MLPotential('equimd', modelPath='model.pt')``.

Registered through the entry point ``equimd = "equimd.md_drivers.openmm_ml:EquimdPotentialImplFactory"``
(group ``openmmml.potentials`` in pyproject.toml), so after ``pip install`` it is available
wherever openmm-ml is::

    from openmmml import MLPotential

    potential = MLPotential("equimd", modelPath="model.pt")
    system = potential.createSystem(topology)                       # everything ML
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)  # ML/MM
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms, interpolate=True)
    # → global parameter "lambda_interpolate": 0 = pure MM, 1 = ML/MM

Semantics are those of openmm-ml's MACE and NequIP potentials: mechanical embedding by
openmm-ml itself (bonds, angles, torsions and nonbonded interactions inside the ML region are
removed from the MM System; ML–MM interactions stay MM), atom types from the topology's
elements. The model is local (finite cutoff), so `getMLLongRange` is False.

This module is imported whenever openmm-ml is imported (entry-point discovery), so it
imports torch and the model code only when a force is actually created.

Import order: openmm-ml loads its entry points at the end of importing
`openmmml.mlpotential`. If this module is imported first, that import (below) loads this
module's entry point while the module is still half-initialised; the factory is therefore
defined before `openmmml` is imported. It duck-types `MLPotentialImplFactory` (openmm-ml only
calls `createImpl`).
"""

from __future__ import annotations

from collections.abc import Iterable

import openmm
import openmm.app


class EquimdPotentialImplFactory:
    """Creates `EquimdPotentialImpl` objects for ``MLPotential('equimd', modelPath=...)``
    (an `openmmml.mlpotential.MLPotentialImplFactory`)."""

    def createImpl(self, name: str, modelPath: str | None = None, **args) -> EquimdPotentialImpl:
        return EquimdPotentialImpl(name, modelPath)


from openmmml.mlpotential import MLPotentialImpl  # noqa: E402  (after the factory, see above)


class EquimdPotentialImpl(MLPotentialImpl):
    """An equimd deployed model (``equimd deploy``) as an openmm-ml potential.

    >>> potential = MLPotential('equimd', modelPath='model.pt')
    >>> system = potential.createSystem(topology, precision='double')

    Options of createSystem/createMixedSystem (passed on to `addForces`):

    precision: None (default: the dtype the model was exported in), 'single' or 'double'.
        Only TorchScript model files can change precision (AOTInductor: one dtype).
    forceType: 'torch' (an openmmtorch TorchForce, no Python in the MD loop), 'python' (an
        openmm.PythonForce; the path for torch.export/AOTInductor model files) or None
        (default): 'torch', except for the ML terms of ``interpolate=True`` (see below).
    device: torch device for forceType='python' (default 'cpu'). The TorchForce runs where
        the OpenMM platform runs (CUDA platform → the same GPU).
    properties: TorchForce properties (strings), passed to `TorchForce.setProperty`;
        `useCUDAGraphs` is not supported (the exported graph synchronises with the host).

    Interpolation: openmm-ml builds the ML terms of ``createMixedSystem(..., interpolate=True)``
    in an empty temporary System and deep-copies them into a CustomCVForce. A deep copy goes
    through XmlSerializer, and deserializing a TorchForce crashes (segmentation fault in
    TorchForceProxy::deserialize) with openmmtorch 1.5 wheels on OpenMM 8.6, so with
    forceType=None a force for an empty System is a PythonForce (TorchScript model files work
    there too). Pass forceType='torch' to insist.
    """

    def __init__(self, name: str, modelPath: str | None) -> None:
        if modelPath is None:
            raise ValueError(
                "MLPotential('equimd') needs modelPath='model.pt' (a file written by equimd deploy)"
            )
        self.name = name
        self.modelPath = str(modelPath)

    def addForces(
        self,
        topology: openmm.app.Topology,
        system: openmm.System,
        atoms: Iterable[int] | None,
        forceGroup: int,
        precision: str | None = None,
        forceType: str | None = None,
        device: str | None = None,
        properties: dict[str, str] | None = None,
        **args,
    ) -> None:
        from equimd.md_drivers.openmm import (
            atomic_numbers_from_topology,
            create_python_force,
            create_torch_force,
        )

        atom_list = None if atoms is None else [int(i) for i in atoms]
        numbers = atomic_numbers_from_topology(topology, atom_list)
        periodic = (
            topology.getPeriodicBoxVectors() is not None
        ) or system.usesPeriodicBoundaryConditions()
        if forceType is None:
            # an empty System: openmm-ml's InterpolationHelper, which deep-copies the force
            forceType = "python" if system.getNumParticles() == 0 else "torch"
        if forceType == "torch":
            force = create_torch_force(
                self.modelPath, numbers, atom_list, periodic, dtype=precision,
                force_group=forceGroup, properties=properties,
            )
        elif forceType == "python":
            force = create_python_force(
                self.modelPath, numbers, atom_list, periodic, device=device or "cpu",
                dtype=precision, force_group=forceGroup,
            )
        else:
            raise ValueError(f"forceType must be 'torch' or 'python', got {forceType!r}")
        system.addForce(force)

    def getMLLongRange(self) -> bool | None:
        """equimd models have a finite cutoff: no long-range ML interactions."""
        return False

