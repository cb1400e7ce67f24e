"""Molecular dynamics in ASE with a deployed equimd model: NVT (Langevin), then NVE.

    equimd deploy run/best.ckpt -o model.pt
    python examples/ase_md.py --model model.pt                       # fcc Cu, 3x3x3 cubic
    python examples/ase_md.py --model model.pt --structure water.xyz --temperature 350

Prints the temperature and energies during the run and, at the end, the drift of the total
energy in NVE (slope of a linear fit, meV/atom/ps) — a quick check that the model and the
time step conserve energy. The structure is an ASE-readable file or an element symbol (its
cubic bulk crystal, `--repeat` times along each axis).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.io import read
from ase.md import velocitydistribution
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet

from equimd.md_drivers.ase import EquimdCalculator


def build_structure(structure: str, repeat: int) -> Atoms:
    """An ASE-readable file (last frame), or the cubic bulk crystal of an element symbol."""
    if Path(structure).is_file():
        return read(structure, index=-1)
    return bulk(structure, cubic=True) * (repeat, repeat, repeat)


def thermalize(atoms: Atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann velocities at `temperature` K, zero total momentum."""
    # ASE ≥ 3.29 names it thermalize_momenta; MaxwellBoltzmannDistribution before
    function = getattr(velocitydistribution, "thermalize_momenta", None) or (
        velocitydistribution.MaxwellBoltzmannDistribution
    )
    function(atoms, temperature_K=temperature, rng=rng)
    velocitydistribution.Stationary(atoms)


def run(dynamics, atoms: Atoms, steps: int, interval: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Run `steps`, printing a line every `interval`; return times (ps) and E_total/atom (eV)."""
    times, totals = [], []
    start = dynamics.get_time()

    def report() -> None:
        time_ps = (dynamics.get_time() - start) / (1000 * units.fs)
        potential = atoms.get_potential_energy() / len(atoms)
        total = atoms.get_total_energy() / len(atoms)
        times.append(time_ps)
        totals.append(total)
        print(f"{label:<4} {dynamics.nsteps:>7d} {time_ps:>9.3f} {atoms.get_temperature():>9.1f} "
              f"{potential:>14.6f} {total:>14.6f}")

    dynamics.attach(report, interval=interval)
    report()
    dynamics.run(steps)
    return np.asarray(times), np.asarray(totals)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model file from `equimd deploy`")
    parser.add_argument("--structure", default="Cu", help="structure file or element (default Cu)")
    parser.add_argument("--repeat", type=int, default=3, help="supercell repeats for an element")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    parser.add_argument("--nvt-steps", type=int, default=500)
    parser.add_argument("--nve-steps", type=int, default=1000)
    parser.add_argument("--friction", type=float, default=0.02, help="Langevin friction, 1/fs")
    parser.add_argument("--interval", type=int, default=50, help="steps between printed lines")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trajectory", help="write the NVE trajectory here (ASE .traj)")
    args = parser.parse_args(argv)

    atoms = build_structure(args.structure, args.repeat)
    # MD reads forces only: skip the strain derivative (stress) at every step
    atoms.calc = EquimdCalculator(args.model, device=args.device, compute_stress=False)
    print(f"{len(atoms)} atoms ({atoms.get_chemical_formula()}), model {atoms.calc.model}")
    rng = np.random.default_rng(args.seed)
    thermalize(atoms, args.temperature, rng)

    print(f"{'':<4} {'step':>7} {'time/ps':>9} {'T/K':>9} {'E_pot/eV/atom':>14} {'E_tot/eV/atom':>14}")
    timestep = args.timestep * units.fs
    nvt = Langevin(atoms, timestep, temperature_K=args.temperature,
                   friction=args.friction / units.fs, rng=rng)
    run(nvt, atoms, args.nvt_steps, args.interval, "NVT")

    nve = VelocityVerlet(atoms, timestep, trajectory=args.trajectory)
    times, totals = run(nve, atoms, args.nve_steps, max(1, args.interval // 5), "NVE")
    if len(times) > 2:
        slope = np.polyfit(times, totals, 1)[0]
        print(f"NVE energy drift: {slope * 1e3:+.4f} meV/atom/ps over {times[-1]:.2f} ps "
              f"(fluctuation {np.std(totals) * 1e3:.4f} meV/atom)")
    if args.trajectory:
        print(f"wrote {args.trajectory}")


if __name__ == "__main__":
    main()
