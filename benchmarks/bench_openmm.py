"""OpenMM speed: TorchForce vs PythonForce on the same system, and the bare model call.

    python benchmarks/bench_openmm.py [--model model.pt] [--repeat 3] [--steps 50]
                                      [--platform CPU] [--dtype float32] [--aoti] [--json out.json]

Without --model a random NequIP (l_max 2, 16 features, 2 layers, r_max 4.5 Å) is
exported. The system is periodic fcc Cu (4·repeat³ atoms, 2.0 fs Langevin steps).

Rows:
  model call      `deploy.load(path)(positions, ...)` alone (energy + forces), no OpenMM
  TorchForce      openmmtorch.TorchForce around the TorchScript model (no Python per step)
  PythonForce     openmm.PythonForce calling the same model file from Python every step
  PythonForce (AOTI)  the same with the model exported by AOTInductor (--aoti; compiling takes
                  about a minute)

Timings on a shared machine vary: compare rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def benchmark_model(directory: Path, dtype: str, kind: str) -> Path:
    """Export a random NequIP (species Cu) as `kind` ('torchscript' | 'aoti')."""
    import torch

    from deploy.export import export_model
    from potentials.models import build_model

    torch.manual_seed(0)
    model = build_model("nequip", species=[29], r_max=4.5, l_max=2, num_features=16,
                        num_layers=2, avg_num_neighbors=40.0)
    model.scale_shift.set_statistics([-3.5], scale=0.3, shift=0.0)
    suffix = "pt2" if kind == "aoti" else "pt"
    return export_model(model, directory / f"bench_{dtype}.{suffix}", dtype=dtype, format=kind)


def copper(repeat: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.05, seed=0)
    return atoms


def time_model_call(model_path: Path, atoms, calls: int) -> float:
    """Seconds per energy+forces evaluation of the deployed model alone."""
    from deploy import load

    model = load(model_path)
    args = (atoms.get_positions(), atoms.numbers, atoms.cell.array, atoms.pbc)
    for _ in range(3):  # warm-up: TorchScript's profiling runs and graph optimisation
        model(*args, compute_stress=False)
    start = time.perf_counter()
    for _ in range(calls):
        model(*args, compute_stress=False)
    return (time.perf_counter() - start) / calls


def ns_per_day(model_path: Path, atoms, path: str, steps: int, platform: str,
               timestep_fs: float = 2.0) -> float:
    """Simulated ns per wall-clock day of Langevin MD with the model as the only force."""
    import openmm
    from openmm import unit

    from md_drivers.openmm import create_force

    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*(row / 10)) for row in atoms.cell.array])
    system.addForce(create_force(model_path, atoms.numbers, None, True, path=path))
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                 timestep_fs * unit.femtosecond)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
    context.setPositions(atoms.get_positions() / 10)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator.step(3)  # warm-up
    start = time.perf_counter()
    integrator.step(steps)
    elapsed = time.perf_counter() - start
    return steps * timestep_fs * 1e-6 / (elapsed / 86400.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="deployed TorchScript model (default: random NequIP)")
    parser.add_argument("--repeat", type=int, default=3, help="Cu cells per side (4·n³ atoms)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--aoti", action="store_true", help="also time an AOTInductor export")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()

    import torch

    atoms = copper(args.repeat)
    results: dict[str, float | str | int] = {
        "atoms": len(atoms), "platform": args.platform, "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(), "steps": args.steps,
    }
    with tempfile.TemporaryDirectory() as scratch:
        model_path = Path(args.model) if args.model else benchmark_model(
            Path(scratch), args.dtype, "torchscript")
        call = time_model_call(model_path, atoms, max(args.steps // 5, 3))
        results["model_call_ms"] = 1e3 * call
        results["model_call_ns_per_day_bound"] = 2.0 * 1e-6 / (call / 86400.0)
        results["torchforce_ns_per_day"] = ns_per_day(model_path, atoms, "torch", args.steps,
                                                      args.platform)
        results["pythonforce_ns_per_day"] = ns_per_day(model_path, atoms, "python", args.steps,
                                                       args.platform)
        if args.aoti:
            aoti_path = benchmark_model(Path(scratch), args.dtype, "aoti")
            results["aoti_model_call_ms"] = 1e3 * time_model_call(aoti_path, atoms,
                                                                  max(args.steps // 5, 3))
            results["pythonforce_aoti_ns_per_day"] = ns_per_day(aoti_path, atoms, "python",
                                                                args.steps, args.platform)

    print(f"{results['atoms']} atoms, {args.platform}, {args.dtype}, "
          f"{results['torch_threads']} torch threads, 2 fs steps")
    print(f"  {'model call':<22} {results['model_call_ms']:9.2f} ms/eval "
          f"(≤ {results['model_call_ns_per_day_bound']:.3g} ns/day)")
    for key, label in [("torchforce_ns_per_day", "TorchForce"),
                       ("pythonforce_ns_per_day", "PythonForce"),
                       ("pythonforce_aoti_ns_per_day", "PythonForce (AOTI)")]:
        if key in results:
            print(f"  {label:<22} {results[key]:9.3g} ns/day")
    if "aoti_model_call_ms" in results:
        print(f"  {'AOTI model call':<22} {results['aoti_model_call_ms']:9.2f} ms/eval")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
