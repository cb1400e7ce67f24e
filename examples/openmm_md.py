"""MD in OpenMM with an equimd model as a TorchForce (or PythonForce), in a few lines.

    python examples/openmm_md.py [--model model.pt] [--structure start.xyz] [--steps 1000]
                                 [--force python] [--platform CPU] [--out openmm_md_out]

Without --structure a rattled 2×2×2 fcc Cu cell (32 atoms, periodic) is used; without
--model a tiny random NequIP for Cu is exported first (mechanics only, not physics). The
model file from `equimd deploy` is what a real run uses. For long runs with checkpoints and
restarts use `equimd md` instead (docs/md.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def demo_model(path: Path) -> Path:
    """Export a tiny random NequIP for Cu (float32)."""
    import torch

    from equimd.deploy.export import export_model
    from equimd.potentials.models import build_model

    torch.manual_seed(0)
    model = build_model("nequip", species=[29], r_max=4.5, l_max=1, num_features=8,
                        num_layers=2, avg_num_neighbors=18.0)
    model.scale_shift.set_statistics([-3.5], scale=0.05, shift=0.0)
    return export_model(model, path, dtype="float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="deployed equimd model (default: tiny random Cu model)")
    parser.add_argument("--structure", help="extxyz/PDB/... start (default: fcc Cu, 32 atoms)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--force", choices=("torch", "python"), default="torch")
    parser.add_argument("--platform", default=None, help="OpenMM platform (default: fastest)")
    parser.add_argument("--out", default="openmm_md_out", help="output directory")
    args = parser.parse_args()

    import openmm
    import openmm.app as app
    from ase.build import bulk
    from ase.io import read
    from openmm import unit

    from equimd.md_drivers.openmm import create_python_force, create_torch_force

    if args.structure:
        atoms = read(args.structure)
    else:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
        atoms.rattle(0.05, seed=0)
    periodic = bool(atoms.pbc.all())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as scratch:
        model_path = args.model or demo_model(Path(scratch) / "demo_model.pt")

        # 1. an OpenMM System: one particle per atom (mass in Da), the box in nm
        system = openmm.System()
        for mass in atoms.get_masses():
            system.addParticle(float(mass))
        topology = app.Topology()
        residue = topology.addResidue("MOL", topology.addChain())
        for z in atoms.numbers:
            element = app.Element.getByAtomicNumber(int(z))
            topology.addAtom(element.symbol, element, residue)
        if periodic:
            box = [openmm.Vec3(*(row / 10.0)) for row in atoms.cell.array]  # Å → nm
            system.setDefaultPeriodicBoxVectors(*box)
            topology.setPeriodicBoxVectors(box * unit.nanometer)

        # 2. the model as a Force: energy kJ/mol, forces kJ/mol/nm (converted inside)
        create = create_torch_force if args.force == "torch" else create_python_force
        system.addForce(create(model_path, atoms.numbers, periodic=periodic))
        system.addForce(openmm.CMMotionRemover())

        # 3. Langevin dynamics at 300 K, 1 fs
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                     1.0 * unit.femtosecond)
        platform = openmm.Platform.getPlatformByName(args.platform) if args.platform else None
        simulation = app.Simulation(topology, system, integrator, platform)
        simulation.context.setPositions(atoms.get_positions() / 10.0)  # Å → nm
        simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
        interval = max(args.steps // 20, 1)
        simulation.reporters.append(app.DCDReporter(str(out / "trajectory.dcd"), interval))
        simulation.reporters.append(app.StateDataReporter(
            sys.stdout, interval, step=True, potentialEnergy=True, temperature=True,
            speed=True, separator="  "))
        with open(out / "topology.pdb", "w") as handle:
            app.PDBFile.writeFile(topology, atoms.get_positions() / 10.0, handle)
        simulation.step(args.steps)
    print(f"platform {simulation.context.getPlatform().getName()}; wrote "
          f"{out / 'trajectory.dcd'} and {out / 'topology.pdb'}")


if __name__ == "__main__":
    main()
