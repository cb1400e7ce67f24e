"""The openmm-ml plugin through the real openmm-ml package: MLPotential('equimd', ...).

ML/MM bookkeeping is checked on ethanol (ML) in a TIP3P water cluster (MM, Amber14) built by
examples/openmm_mlmm.py: the mixed energy must equal the all-MM energy minus the ethanol's
internal MM energy plus the ML energy of the ethanol.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401
from openmm import unit

from equimd.md_drivers.openmm import EV_TO_KJ_PER_MOL, FORCE_TO_KJ_PER_MOL_NM, ModelSpeciesError
from tests.test_openmm import assert_close, loaded, model_file

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "openmm_mlmm.py"


@functools.cache
def example():
    spec = importlib.util.spec_from_file_location("openmm_mlmm_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def solvated(periodic: bool):
    return example().ethanol_in_water(padding_nm=0.6 if not periodic else 0.8, periodic=periodic)


def energy_of(system, positions, groups: set[int] | None = None) -> float:
    """Potential energy kJ/mol on the Reference platform (optionally of some force groups)."""
    import openmm

    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    kwargs = {"groups": groups} if groups is not None else {}
    state = context.getState(getEnergy=True, **kwargs)
    return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def ml_reference(positions_nm: np.ndarray, numbers, model_path) -> tuple[float, np.ndarray]:
    out = loaded(model_path)(positions_nm * 10.0, numbers, None, None)
    return float(out["energy"]) * EV_TO_KJ_PER_MOL, out["forces"].numpy() * FORCE_TO_KJ_PER_MOL_NM


def test_equimd_is_registered_with_openmm_ml():
    from openmmml import MLPotential

    assert "equimd" in MLPotential._implFactories
    with pytest.raises(ValueError, match="modelPath"):
        MLPotential("equimd")


def test_plugin_module_imported_before_openmm_ml_registers_cleanly():
    """Importing equimd.md_drivers.openmm_ml first makes openmm-ml load its entry point mid-import."""
    import subprocess
    import sys

    code = ("import equimd.md_drivers.openmm_ml as plugin\n"
            "from openmmml import MLPotential\n"
            "assert isinstance(MLPotential._implFactories['equimd'],"
            " plugin.EquimdPotentialImplFactory)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("force_type", ["torch", "python"])
def test_create_system_energy_and_forces_are_the_models(force_type):
    import openmm
    from openmmml import MLPotential

    topology, positions = example().ethanol_topology()
    model_path = model_file("float64")
    potential = MLPotential("equimd", modelPath=str(model_path))
    system = potential.createSystem(topology, forceType=force_type)
    numbers = [atom.element.atomic_number for atom in topology.atoms()]
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    energy, forces = ml_reference(positions, numbers, model_path)
    assert_close(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), energy, 1e-6)
    assert_close(state.getForces(asNumpy=True).value_in_unit(
        unit.kilojoule_per_mole / unit.nanometer), forces, 1e-6)


def test_mixed_energy_is_mm_without_ml_internal_terms_plus_ml_energy():
    import openmm.app as app
    from openmmml import MLPotential

    topology, positions, mm_system, ml_atoms = solvated(periodic=False)
    model_path = model_file("float64")
    mixed = MLPotential("equimd", modelPath=str(model_path)).createMixedSystem(
        topology, mm_system, ml_atoms)
    # the ethanol's internal MM energy: the same force field on the ethanol alone
    ethanol_topology, _ = example().ethanol_topology()
    ethanol_system = example().forcefield().createSystem(
        ethanol_topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    numbers = [atom.element.atomic_number for atom in ethanol_topology.atoms()]
    e_ml, _ = ml_reference(positions[ml_atoms], numbers, model_path)
    expected = (energy_of(mm_system, positions) - energy_of(ethanol_system, positions[ml_atoms])
                + e_ml)
    assert energy_of(mixed, positions) == pytest.approx(expected, rel=1e-9, abs=1e-6)
    # the ML-ML constraints are gone, the water's remain
    for index in range(mixed.getNumConstraints()):
        p1, p2, _ = mixed.getConstraintParameters(index)
        assert not (p1 in ml_atoms and p2 in ml_atoms)
    assert mixed.getNumConstraints() == mm_system.getNumConstraints() - 6  # the 6 X–H bonds


def test_lambda_interpolate_endpoints_are_the_pure_systems():
    from openmmml import MLPotential

    topology, positions, mm_system, ml_atoms = solvated(periodic=True)
    potential = MLPotential("equimd", modelPath=str(model_file("float64")))
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)
    interpolated = potential.createMixedSystem(topology, mm_system, ml_atoms, interpolate=True)

    import openmm

    context = openmm.Context(interpolated, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    endpoints = {}
    for value in (0.0, 1.0):
        context.setParameter("lambda_interpolate", value)
        state = context.getState(getEnergy=True)
        endpoints[value] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert endpoints[0.0] == pytest.approx(energy_of(mm_system, positions), rel=1e-7, abs=1e-5)
    assert endpoints[1.0] == pytest.approx(energy_of(mixed, positions), rel=1e-7, abs=1e-5)
    assert abs(endpoints[1.0] - endpoints[0.0]) > 1.0  # the two really differ


def test_unknown_element_in_ml_region_names_atom_and_element():
    import openmm.app as app
    from openmmml import MLPotential

    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for name, symbol in [("C", "C"), ("S", "S"), ("H", "H")]:
        topology.addAtom(name, app.Element.getBySymbol(symbol), residue)
    potential = MLPotential("equimd", modelPath=str(model_file("float64")))
    with pytest.raises(ModelSpeciesError, match=r"atom 1 is S \(Z=16\)"):
        potential.createSystem(topology)
