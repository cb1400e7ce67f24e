"""ML/MM in OpenMM: ethanol treated by an equimd model, TIP3P water by Amber14.

    python examples/openmm_mlmm.py [--model model.pt] [--steps 100] [--padding 1.0]
                                   [--interpolate] [--platform CPU]

Without --model a tiny random NequIP model (species H, C, N, O) is built and exported to a
temporary file: its forces are not physical, only the mechanics are shown — it does not hold
the ethanol together (its MM bonds are gone in the mixed System), so a long run with it heats
up and falls apart. Use a trained model for real runs.

What happens:
1. Ethanol (one residue "ETH"; Amber14 atom types with hand-set charges, see ETHANOL_FFXML —
   a demo parameter set, not a validated force field) is solvated in TIP3P with
   `openmm.app.Modeller.addSolvent`.
2. The all-MM System is built from amber14-all.xml + amber14/tip3p.xml (PME).
3. `MLPotential('equimd', modelPath=...).createMixedSystem(topology, mm_system, ml_atoms)`
   (openmm-ml, mechanical embedding) removes the ethanol's internal MM terms (bonds, angles,
   torsions; intra-ethanol nonbonded pairs become exceptions) and adds the equimd TorchForce
   on the 9 ethanol atoms. Ethanol–water interactions stay MM (charges + Lennard-Jones).
   With --interpolate the System gets the global parameter `lambda_interpolate`
   (0 = all MM, 1 = ML/MM).
4. A short Langevin run at 300 K with 1 fs steps (no constraints on the ML atoms).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np

ETHANOL_FFXML = """<ForceField>
 <Residues>
  <Residue name="ETH">
   <Atom name="C1" type="protein-CT" charge="-0.30"/>
   <Atom name="C2" type="protein-CT" charge="0.18"/>
   <Atom name="O" type="protein-OH" charge="-0.60"/>
   <Atom name="HO" type="protein-HO" charge="0.40"/>
   <Atom name="H21" type="protein-H1" charge="0.04"/>
   <Atom name="H22" type="protein-H1" charge="0.04"/>
   <Atom name="H11" type="protein-HC" charge="0.08"/>
   <Atom name="H12" type="protein-HC" charge="0.08"/>
   <Atom name="H13" type="protein-HC" charge="0.08"/>
   <Bond atomName1="C1" atomName2="C2"/>
   <Bond atomName1="C2" atomName2="O"/>
   <Bond atomName1="O" atomName2="HO"/>
   <Bond atomName1="C2" atomName2="H21"/>
   <Bond atomName1="C2" atomName2="H22"/>
   <Bond atomName1="C1" atomName2="H11"/>
   <Bond atomName1="C1" atomName2="H12"/>
   <Bond atomName1="C1" atomName2="H13"/>
  </Residue>
 </Residues>
</ForceField>
"""
"""Ethanol as one residue with Amber14 (ff14SB) atom types; charges sum to zero."""

# ase.build.molecule("CH3CH2OH") atom order: C(H3), C(H2), O, H(O), H, H (on C2), H, H, H (on C1)
ETHANOL_NAMES = ["C1", "C2", "O", "HO", "H21", "H22", "H11", "H12", "H13"]
ETHANOL_BONDS = [(0, 1), (1, 2), (2, 3), (1, 4), (1, 5), (0, 6), (0, 7), (0, 8)]


def ethanol_topology():
    """(Topology, positions [9, 3] nm) of one ethanol residue "ETH", from ASE's geometry."""
    import openmm.app as app
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue("ETH", chain)
    created = []
    for name, symbol in zip(ETHANOL_NAMES, atoms.get_chemical_symbols(), strict=True):
        created.append(topology.addAtom(name, app.Element.getBySymbol(symbol), residue))
    for i, j in ETHANOL_BONDS:
        topology.addBond(created[i], created[j])
    return topology, atoms.get_positions() / 10.0


def forcefield():
    """Amber14 + TIP3P + the ethanol residue template."""
    import openmm.app as app

    return app.ForceField("amber14-all.xml", "amber14/tip3p.xml", io.StringIO(ETHANOL_FFXML))


def ethanol_in_water(padding_nm: float = 1.0, periodic: bool = True):
    """(topology, positions nm, mm_system, ml_atoms): ethanol solvated in a TIP3P box.

    Modeller makes a cubic box of max(solute diameter + padding, 2 · padding).
    periodic=True: PME, cutoff min(1 nm, padding) (at most half the box). periodic=False: the
    same waters as an isolated cluster with no cutoff (exact energy bookkeeping in tests).
    """
    import openmm.app as app
    from openmm import unit

    topology, positions = ethanol_topology()
    ff = forcefield()
    modeller = app.Modeller(topology, positions * unit.nanometer)
    modeller.addSolvent(ff, model="tip3p", padding=padding_nm * unit.nanometer)
    topology = modeller.getTopology()
    positions = np.asarray(modeller.getPositions().value_in_unit(unit.nanometer))
    if periodic:
        cutoff = min(1.0, padding_nm) * unit.nanometer
        system = ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=cutoff,
                                 constraints=app.HBonds, rigidWater=True)
    else:
        topology.setPeriodicBoxVectors(None)
        system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds,
                                 rigidWater=True)
    ml_atoms = [atom.index for atom in topology.atoms() if atom.residue.name == "ETH"]
    return topology, positions, system, ml_atoms


def demo_model(path: str | Path, seed: int = 0) -> Path:
    """Export a tiny random NequIP model (H, C, N, O; float32) — mechanics only, not physics."""
    import torch

    from equimd.deploy.export import export_model
    from equimd.potentials.models import build_model

    torch.manual_seed(seed)
    model = build_model("nequip", species=[1, 6, 7, 8], r_max=4.0, l_max=1, num_features=8,
                        num_layers=2, avg_num_neighbors=8.0)
    model.scale_shift.set_statistics([0.0] * 4, scale=0.05, shift=0.0)
    return export_model(model, path, dtype="float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="deployed equimd model (default: a tiny random one)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--padding", type=float, default=1.0, help="water padding, nm")
    parser.add_argument("--interpolate", action="store_true",
                        help="add lambda_interpolate and run at lambda = 0.5")
    parser.add_argument("--platform", default=None, help="OpenMM platform (default: fastest)")
    args = parser.parse_args()

    import openmm
    import openmm.app as app
    from openmm import unit
    from openmmml import MLPotential

    with tempfile.TemporaryDirectory() as scratch:
        model_path = args.model
        if model_path is None:
            model_path = demo_model(Path(scratch) / "demo_model.pt")
            print("random demo model: mechanics only, energies and temperatures are meaningless")
        topology, positions, mm_system, ml_atoms = ethanol_in_water(args.padding)
        print(f"{topology.getNumAtoms()} atoms; ML region: ethanol atoms {ml_atoms}")
        potential = MLPotential("equimd", modelPath=str(model_path))
        system = potential.createMixedSystem(topology, mm_system, ml_atoms,
                                             interpolate=args.interpolate)
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                     1.0 * unit.femtosecond)
        platform = openmm.Platform.getPlatformByName(args.platform) if args.platform else None
        simulation = app.Simulation(topology, system, integrator, platform)
        simulation.context.setPositions(positions)
        if args.interpolate:
            simulation.context.setParameter("lambda_interpolate", 0.5)
        simulation.minimizeEnergy(maxIterations=100)
        simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
        simulation.reporters.append(app.StateDataReporter(
            __import__("sys").stdout, max(args.steps // 10, 1), step=True,
            potentialEnergy=True, temperature=True, speed=True))
        simulation.step(args.steps)
        print(f"platform {simulation.context.getPlatform().getName()}; done")


if __name__ == "__main__":
    main()
