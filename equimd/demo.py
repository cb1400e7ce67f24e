"""`equimd demo`: the whole pipeline on a DEMO dataset made here (EMT Cu, not ab initio).

1. sample EMT-labelled fcc Cu frames (bulk, vacancy, surface; 300–1200 K) → extxyz
2. train a small NequIP for a few minutes on the CPU
3. evaluate it on held-out frames (MAE/RMSE table, parity plot)
4. export it to one file (TorchScript, float64 and float32)
5. run ASE MD (Langevin NVT, then NVE) and print temperature and energy drift
6. run a short OpenMM simulation with the same file (TorchForce)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import yaml

from equimd.demo_data import DEMO_LABEL, generate_demo_dataset
from equimd.units import EV_TO_KJ_PER_MOL

R_MAX = 4.5


def demo_config(out: Path, data: Path, minutes: float, seed: int) -> dict:
    """Training config of the demo: a small, fast NequIP."""
    return {
        "data": {"train": str(data), "valid_fraction": 0.1, "e0s": "least_squares"},
        "model": {
            "model_type": "nequip",
            "r_max": R_MAX,
            "l_max": 1,
            "num_features": 16,
            "num_layers": 2,
            "num_bessel": 8,
            "radial_mlp_hidden": [32, 32],
        },
        "training": {
            "epochs": 200,
            "batch_size": 4,
            "lr": 0.01,
            "scheduler_patience": 5,
            "ema_decay": 0.99,
            "forces_weight": 100.0,
            "stress_weight": 100.0,
            "max_wall_time": minutes * 60.0,
            "seed": seed,
            "dtype": "float64",
            "device": "cpu",
        },
        "output": {"run_dir": str(out / "run"), "overwrite": True},
    }


def run_ase_md(model_path: Path, nvt_steps: int, nve_steps: int, seed: int) -> dict[str, float]:
    """Langevin NVT at 600 K, then NVE; returns mean temperature and NVE drift (meV/atom/ps)."""
    from ase import units
    from ase.build import bulk
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from equimd.md_drivers.ase import EquimdCalculator

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    atoms.calc = EquimdCalculator(model_path)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(seed))
    nvt = Langevin(
        atoms,
        2 * units.fs,
        temperature_K=600,
        friction=0.02,
        fixcm=False,
        rng=np.random.default_rng(seed),
    )
    temperatures = []
    nvt.attach(lambda: temperatures.append(atoms.get_temperature()), interval=10)
    nvt.run(nvt_steps)
    nve = VelocityVerlet(atoms, 1 * units.fs)
    times, energies = [], []

    def record() -> None:
        times.append(nve.get_time() / (1000 * units.fs))
        energies.append(atoms.get_total_energy())

    nve.attach(record, interval=10)
    nve.run(nve_steps)
    slope = np.polyfit(times, energies, 1)[0] if len(times) > 1 else 0.0
    return {
        "atoms": len(atoms),
        "nvt_mean_temperature_K": float(np.mean(temperatures[len(temperatures) // 2 :])),
        "nve_drift_meV_per_atom_ps": float(slope / len(atoms) * 1000),
        "nve_energy_std_meV_per_atom": float(np.std(energies) / len(atoms) * 1000),
    }


def run_openmm_md(model_path: Path, steps: int) -> dict[str, float]:
    """A short OpenMM NVT run of 108 Cu atoms through openmm-torch's TorchForce."""
    import openmm
    import torch  # noqa: F401  (must be imported before openmmtorch)
    from ase.build import bulk

    from equimd.md_drivers.openmm import create_torch_force

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))
    cell_nm = atoms.get_cell().array / 10.0
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in cell_nm))
    system.addForce(create_torch_force(model_path, atoms.get_atomic_numbers(), periodic=True))
    integrator = openmm.LangevinMiddleIntegrator(600, 1.0, 0.002)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(atoms.get_positions() / 10.0)
    context.setVelocitiesToTemperature(600, 1)
    start = time.perf_counter()
    integrator.step(steps)
    elapsed = time.perf_counter() - start
    state = context.getState(getEnergy=True)
    dof = 3 * len(atoms) - 3
    kinetic = state.getKineticEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    temperature = 2 * kinetic / (dof * openmm.unit.MOLAR_GAS_CONSTANT_R.value_in_unit(
        openmm.unit.kilojoule_per_mole / openmm.unit.kelvin))
    return {
        "steps": steps,
        "final_temperature_K": float(temperature),
        "potential_energy_eV": float(
            state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
        ),
        "ns_per_day": float(steps * 0.002 / 1000 / elapsed * 86400),
    }


def run_demo(out: str | Path = "demo_out", minutes: float = 4.0, seed: int = 0) -> int:
    """Run the demo end to end; every file it writes is under `out`."""
    from equimd.deploy.export import export_model
    from equimd.potentials.data.io import DatasetKeys
    from equimd.potentials.train.config import load_config
    from equimd.potentials.train.evaluate import evaluate
    from equimd.potentials.train.trainer import train

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"== equimd demo — {DEMO_LABEL}")
    print("== 1/6 generating the demo dataset with ASE's EMT calculator ...")
    train_data = generate_demo_dataset(out / "data" / "cu_emt_demo_train.extxyz", seed=seed)
    test_data = generate_demo_dataset(
        out / "data" / "cu_emt_demo_test.extxyz", frames_per_run=5, seed=seed + 1000
    )
    print(f"   {train_data}\n   {test_data}")

    print(f"== 2/6 training a small NequIP for up to {minutes:g} min on the CPU ...")
    config_path = out / "train.yaml"
    config_path.write_text(
        f"# {DEMO_LABEL}\n" + yaml.safe_dump(demo_config(out, train_data, minutes, seed))
    )
    result = train(load_config(config_path), resume=False, progress=True)

    print("== 3/6 evaluating on held-out frames ...")
    metrics = evaluate(
        result.best_checkpoint, test_data, keys=DatasetKeys(), output_dir=out / "evaluation"
    )

    print("== 4/6 exporting the model (TorchScript, float64 and float32) ...")
    model64 = export_model(result.best_checkpoint, out / "model_float64.pt", dtype="float64")
    model32 = export_model(result.best_checkpoint, out / "model_float32.pt", dtype="float32")

    print("== 5/6 ASE MD: 108 Cu atoms, Langevin NVT at 600 K (2 fs), then NVE (1 fs) ...")
    ase_md = run_ase_md(model64, nvt_steps=200, nve_steps=500, seed=seed)
    print(
        f"   NVT mean temperature {ase_md['nvt_mean_temperature_K']:.0f} K; NVE drift "
        f"{ase_md['nve_drift_meV_per_atom_ps']:+.3f} meV/atom/ps "
        f"(energy std {ase_md['nve_energy_std_meV_per_atom']:.3f} meV/atom)"
    )

    print("== 6/6 OpenMM: the same file as a TorchForce, 200 Langevin steps (2 fs) ...")
    openmm_md = run_openmm_md(model32, steps=200)
    print(
        f"   final T {openmm_md['final_temperature_K']:.0f} K, "
        f"{openmm_md['ns_per_day']:.2f} ns/day on this CPU (float32)"
    )

    summary = {"training": str(result.run_dir), "evaluation": metrics, "ase_md": ase_md,
               "openmm_md": openmm_md}
    (out / "summary.yaml").write_text(yaml.safe_dump(_plain(summary), sort_keys=False))
    print("\n== files")
    for path in [train_data, test_data, config_path, result.best_checkpoint,
                 result.metrics_csv, out / "evaluation", model64, model32, out / "summary.yaml"]:
        print(f"   {path}")
    return 0


def _plain(value):
    """YAML-safe copy (numpy scalars → float, paths → str)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
