"""DEMO dataset: fcc Cu labelled with ASE's EMT calculator (NOT ab initio data).

Used by `equimd demo` so a fresh machine can run the whole pipeline without downloads:
bulk, vacancy and (001) surface configurations sampled from short Langevin MD at 300–1200 K.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100
from ase.calculators.emt import EMT
from ase.md import velocitydistribution
from ase.md.langevin import Langevin

# ASE >= 3.29 names it thermalize_momenta (MaxwellBoltzmannDistribution is deprecated there)
thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or (
    velocitydistribution.MaxwellBoltzmannDistribution
)

DEMO_LABEL = "DEMO data: fcc Cu labelled by ASE's EMT calculator (not ab initio)"


def _starting_structures() -> dict[str, Atoms]:
    cell_bulk = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)  # 32 atoms
    vacancy = cell_bulk.copy()
    del vacancy[5]
    surface = fcc100("Cu", size=(2, 2, 4), vacuum=6.0, periodic=True)
    surface.pbc = (True, True, False)
    return {"bulk": cell_bulk, "vacancy": vacancy, "surface": surface}


def generate_demo_dataset(
    path: str | Path,
    frames_per_run: int = 20,
    temperatures: tuple[float, ...] = (300.0, 600.0, 1200.0),
    seed: int = 0,
    strain: float = 0.02,
) -> Path:
    """Sample EMT-labelled Cu frames (energy, forces, stress) and write them to extxyz.

    One Langevin run (2 fs step, 10 steps between frames) per structure kind and temperature;
    bulk frames also get a random ±`strain` cell deformation so stress is learnable.
    """
    from equimd.potentials.data.configuration import Configuration
    from equimd.potentials.data.io import write_extxyz

    rng = np.random.default_rng(seed)
    configs: list[Configuration] = []
    for kind, start in _starting_structures().items():
        for temperature in temperatures:
            atoms = start.copy()
            if kind == "bulk":
                deformation = np.eye(3) + rng.uniform(-strain, strain, (3, 3))
                deformation = 0.5 * (deformation + deformation.T)
                atoms.set_cell(atoms.get_cell() @ deformation, scale_atoms=True)
            atoms.calc = EMT()
            thermalize(
                atoms, temperature_K=temperature, rng=np.random.default_rng(rng.integers(1 << 31))
            )
            dynamics = Langevin(
                atoms,
                2.0 * units.fs,
                temperature_K=temperature,
                friction=0.02,
                fixcm=False,
                rng=np.random.default_rng(rng.integers(1 << 31)),
            )
            for frame in range(frames_per_run):
                dynamics.run(10)
                stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
                configs.append(
                    Configuration(
                        positions=atoms.get_positions(),
                        numbers=atoms.get_atomic_numbers(),
                        cell=atoms.get_cell().array,
                        pbc=atoms.get_pbc(),
                        energy=atoms.get_potential_energy(),
                        forces=atoms.get_forces(),
                        stress=stress,
                        source=f"demo {kind} {temperature:.0f} K frame {frame}",
                    )
                )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_extxyz(configs, path)
    return path
