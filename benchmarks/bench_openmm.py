"""MD step time through OpenMM and ASE against the bare model evaluation, same model, same run.

    python benchmarks/bench_openmm.py [--system water|cu] [--model model.pt] [--steps 50]
        [--repeats 5] [--threads 2] [--platform CPU] [--dtype float32] [--aoti]
        [--quiet-load 0.15] [--max-wait 120] [--json bench_out/md.json]

Without --model, a NequIP with the benchmark's typical hyperparameters (`bench_models.MODEL_ROWS
["nequip"]`: l_max 2, 64 features, 4 layers, r_max 5 Å; seeded random weights, energies
scaled to a few eV) is exported as TorchScript. Systems: `water` = 192-atom liquid water box
(frame 0 of ../shared/data/water_rpbe_d3, the issue's reference system), `cu` = 256-atom fcc Cu.

Rows (each the median of `--repeats` blocks of `--steps` steps, after warm-up; 1 fs steps):
  model call       `equimd.deploy.load(path)(positions, numbers, cell, pbc)`: energy + forces including
                   the in-graph neighbor list, no MD engine (the bare model evaluation)
  TorchForce       OpenMM LangevinMiddleIntegrator with openmmtorch.TorchForce (no Python per step)
  PythonForce      the same with openmm.PythonForce calling the model from Python
  ASE VelocityVerlet  ase.md.VelocityVerlet with `EquimdCalculator` (stress off)
  PythonForce (AOTI)  with `--aoti`, the model exported by AOTInductor (compiling takes minutes)

Reported per engine: ms per step, steps/s, ns/day, and overhead = step time / model call
(the issue's target: TorchForce ≤ 1.10 on the water box). The foreign CPU load during every
measurement is reported next to it (`harness.LoadWindow`): trust rows with load ~0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_models  # noqa: E402
import harness as bench  # noqa: E402

TIMESTEP_FS = 1.0


def benchmark_model(directory: Path, numbers: list[int], dtype: str, kind: str) -> Path:
    """Export the typical NequIP (seeded random weights) for these elements."""
    import torch

    from equimd.deploy.export import export_model
    from equimd.potentials.models import build_model

    torch.manual_seed(0)
    species = sorted(set(numbers))
    row = bench_models.MODEL_ROWS["nequip"]
    model = build_model(
        row["equimd"]["model_type"], species=species, r_max=row["r_max"],
        avg_num_neighbors=30.0, **row["equimd"]["hyperparameters"],
    )  # fmt: skip
    model.scale_shift.set_statistics([0.0] * len(species), scale=0.1, shift=0.0)
    suffix = "pt2" if kind == "aoti" else "pt"
    return export_model(model, directory / f"bench_{dtype}.{suffix}", dtype=dtype, format=kind)


def timed_blocks(block: Callable[[], Any], repeats: int, args: argparse.Namespace) -> dict:
    """Median/min seconds of `block()` over `repeats` calls after one warm-up call, with the
    foreign load before (after waiting for a quiet machine) and during."""
    block()
    result: dict[str, Any] = bench.wait_for_quiet(args.quiet_load, args.max_wait)
    window = bench.LoadWindow()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        block()
        samples.append(time.perf_counter() - start)
    result.update(median_s=statistics.median(samples), min_s=min(samples),
                  load_during=round(window.foreign_cores(), 3))
    return result


def model_call(model_path: Path, atoms, args: argparse.Namespace) -> dict:
    from equimd.deploy import load

    model = load(model_path)
    inputs = (atoms.get_positions(), atoms.numbers, atoms.cell.array, atoms.pbc)
    for _ in range(3):  # TorchScript's profiling runs
        model(*inputs, compute_stress=False)

    def block() -> None:
        for _ in range(args.steps):
            model(*inputs, compute_stress=False)

    return timed_blocks(block, args.repeats, args)


def openmm_simulation(model_path: Path, atoms, path: str, platform: str = "CPU"):
    """An OpenMM Context with the model as its only force (`path`: "torch" = TorchForce,
    "python" = PythonForce), LangevinMiddleIntegrator at 300 K, 1/ps, 1 fs; velocities drawn at
    300 K (seed 1). Returns (context, integrator)."""
    import openmm
    from openmm import unit

    from equimd.md_drivers.openmm import create_force

    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*(row / 10)) for row in atoms.cell.array])
    system.addForce(create_force(model_path, atoms.numbers, None, True, path=path))
    integrator = openmm.LangevinMiddleIntegrator(
        300 * unit.kelvin, 1 / unit.picosecond, TIMESTEP_FS * unit.femtosecond
    )
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
    context.setPositions(atoms.get_positions() / 10)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    return context, integrator


def openmm_steps(model_path: Path, atoms, path: str, args: argparse.Namespace) -> dict:
    """Steps as `equimd md` takes them: inside `repeatable_execution()` (TorchScript's optimising
    executor off: the same plan for every call, and on the CPU no slower; docs/md.md)."""
    from equimd.deploy.load import repeatable_execution

    context, integrator = openmm_simulation(model_path, atoms, path, args.platform)
    with repeatable_execution():
        integrator.step(3)
        return timed_blocks(lambda: integrator.step(args.steps), args.repeats, args)


def ase_dynamics(model_path: Path, atoms):
    """ase.md.VelocityVerlet (1 fs) on a copy of `atoms` with `EquimdCalculator` (stress off),
    Maxwell-Boltzmann velocities at 300 K (seed 0): `harness.velocity_verlet`, as the peers'."""
    from equimd.md_drivers.ase import EquimdCalculator

    atoms = atoms.copy()
    atoms.calc = EquimdCalculator(str(model_path), compute_stress=False)
    return bench.velocity_verlet(atoms, TIMESTEP_FS)


def ase_steps(model_path: Path, atoms, args: argparse.Namespace) -> dict:
    dynamics = ase_dynamics(model_path, atoms)
    dynamics.run(3)
    return timed_blocks(lambda: dynamics.run(args.steps), args.repeats, args)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--system", default="water", choices=("water", "cu"))
    parser.add_argument("--model", help="deployed TorchScript model (default: typical NequIP)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--aoti", action="store_true", help="also time an AOTInductor export")
    parser.add_argument("--quiet-load", type=float, default=0.15)
    parser.add_argument("--max-wait", type=float, default=120.0)
    parser.add_argument("--json", default=str(bench.ROOT / "bench_out" / "md.json"))
    bench.add_data_argument(parser)
    args = parser.parse_args(argv)
    bench.use_data_argument(args)

    import torch

    torch.set_num_threads(args.threads)
    atoms = bench.SYSTEMS["water" if args.system == "water" else "cu256"]()
    report: dict[str, Any] = {
        "system": args.system, "atoms": len(atoms), "platform": args.platform,
        "dtype": args.dtype, "threads": args.threads, "steps_per_block": args.steps,
        "timestep_fs": TIMESTEP_FS, "rows": {},
    }  # fmt: skip
    rows = report["rows"]
    with tempfile.TemporaryDirectory() as scratch:
        model_path = Path(args.model) if args.model else benchmark_model(
            Path(scratch), list(atoms.numbers), args.dtype, "torchscript")
        rows["model call"] = model_call(model_path, atoms, args)
        rows["TorchForce"] = openmm_steps(model_path, atoms, "torch", args)
        rows["PythonForce"] = openmm_steps(model_path, atoms, "python", args)
        rows["ASE VelocityVerlet"] = ase_steps(model_path, atoms, args)
        if args.aoti:
            aoti_path = benchmark_model(Path(scratch), list(atoms.numbers), args.dtype, "aoti")
            rows["PythonForce (AOTI)"] = openmm_steps(aoti_path, atoms, "python", args)

    call_s = rows["model call"]["median_s"] / args.steps
    print(f"{report['atoms']} atoms ({args.system}), {args.platform}, {args.dtype}, "
          f"{args.threads} threads, {TIMESTEP_FS} fs steps; overhead = step / model call")
    print(f"  {'':<20} {'ms/step':>9} {'steps/s':>8} {'ns/day':>8} {'overhead':>9} {'load':>10}")
    for name, row in rows.items():
        per_step = row["median_s"] / args.steps
        row.update(ms_per_step=1e3 * per_step, steps_per_s=1.0 / per_step,
                   ns_per_day=TIMESTEP_FS * 1e-6 * 86400.0 / per_step,
                   overhead=per_step / call_s)
        print(f"  {name:<20} {row['ms_per_step']:9.2f} {row['steps_per_s']:8.2f} "
              f"{row['ns_per_day']:8.3f} {row['overhead']:9.3f} "
              f"{row['load_before']:.2f}/{row['load_during']:.2f}")
    bench.write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
