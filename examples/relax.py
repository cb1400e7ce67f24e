"""Relax atomic positions and the cell with a deployed equimd model (ASE FrechetCellFilter).

    python examples/relax.py --model model.pt                          # strained fcc Cu
    python examples/relax.py --model model.pt --structure POSCAR --output relaxed.extxyz

The structure is an ASE-readable file or an element symbol (its cubic bulk crystal, strained
by `--strain` so there is something to relax). Stops when every atomic force and every
generalised cell force is below `--fmax` eV/Å (FrechetCellFilter's cell force is
volume × stress / number of atoms, so the stress is then below fmax · N / V eV/Å³), and prints
the lattice, energy, maximum force and stress before and after.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.optimize import BFGS

from equimd.md_drivers.ase import EquimdCalculator


def build_structure(structure: str, strain: float, seed: int) -> Atoms:
    """An ASE-readable file (last frame), or a strained, rattled 2x2x2 cubic crystal."""
    if Path(structure).is_file():
        return read(structure, index=-1)
    atoms = bulk(structure, cubic=True) * (2, 2, 2)
    deformation = np.eye(3) + strain * np.array([[1.0, 0.2, 0.0], [0.2, -0.5, 0.0], [0.0, 0.0, 0.5]])
    atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
    atoms.rattle(0.03, seed=seed)
    return atoms


def describe(atoms: Atoms, label: str) -> None:
    lengths_angles = atoms.cell.cellpar()
    stress = atoms.get_stress()  # eV/Å³, Voigt xx yy zz yz xz xy
    print(f"{label}: E = {atoms.get_potential_energy():.6f} eV, "
          f"max |F| = {np.abs(atoms.get_forces()).max():.2e} eV/Å, "
          f"max |σ| = {np.abs(stress).max():.2e} eV/Å³ ({np.abs(stress).max() * 160.21766:.3f} GPa)")
    print(f"  a, b, c = {np.round(lengths_angles[:3], 5).tolist()} Å, "
          f"α, β, γ = {np.round(lengths_angles[3:], 3).tolist()}°, V = {atoms.get_volume():.4f} Å³")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model file from `equimd deploy`")
    parser.add_argument("--structure", default="Cu", help="structure file or element (default Cu)")
    parser.add_argument("--strain", type=float, default=0.03, help="initial strain for an element")
    parser.add_argument("--fmax", type=float, default=1e-3, help="convergence, eV/Å (default 1e-3)")
    parser.add_argument("--steps", type=int, default=500, help="maximum optimizer steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the relaxed structure here (any ASE format)")
    args = parser.parse_args(argv)

    atoms = build_structure(args.structure, args.strain, args.seed)
    if not atoms.pbc.all():
        parser.error("cell relaxation needs a 3D-periodic structure")
    atoms.calc = EquimdCalculator(args.model, device=args.device)
    describe(atoms, "initial")
    optimizer = BFGS(FrechetCellFilter(atoms), logfile="-")
    converged = optimizer.run(fmax=args.fmax, steps=args.steps)
    describe(atoms, "relaxed" if converged else f"NOT converged after {args.steps} steps")
    if args.output:
        write(args.output, atoms)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
