"""Export formats on CPU: eager vs TorchScript vs AOTInductor, same model, same structures.

    python benchmarks/bench_export_formats.py [--sizes 2 3 4] [--calls 20] [--dtype float32]
                                              [--threads 1] [--no-aoti] [--json out.json]

A random NequIP of a typical MD size (l_max 2, 32 features, 3 layers, r_max 5 Å, species Cu)
is exported in both formats; the structures are rattled fcc Cu supercells (4·n³ atoms for
each n in --sizes). Every row includes the neighbor list (the same torch cell list
everywhere) and returns energy + forces:

  eager            `equimd.deploy.module.DeployedPotential` run as plain Python modules
  torchscript      the TorchScript file through `equimd.deploy.load` (forces only)
  torchscript+σ    the same, also computing stress/virial
  aoti             the AOTInductor package through `equimd.deploy.load`; its compiled graph always
                   computes stress/virial too, so compare it with torchscript+σ

The formats are timed in turn (round robin), so load changes on a shared machine affect all
rows alike; still, compare rows of one run. The AOTInductor compile of this model takes a few
minutes on two cores (much longer on a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def benchmark_model(dtype: str):
    """A random NequIP of MD size for Cu (float64 weights; exported in `dtype`)."""
    import torch

    from equimd.potentials.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("nequip", species=[29], r_max=5.0, l_max=2, num_features=32,
                            num_layers=3, avg_num_neighbors=40.0).double()
    model.scale_shift.set_statistics([-3.5], scale=0.3, shift=0.0)
    return model.eval()


def copper(repeat: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.05, seed=0)
    return atoms


def interleaved_medians(functions: dict, calls: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time (s) of each function, calling them in turn (round robin) so that a
    change of machine load during the run affects every row alike."""
    for function in functions.values():
        for _ in range(warmup):  # TorchScript's profiling executor specialises on first runs
            function()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(calls):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def eager_runner(model, dtype: str):
    """The deployed computation as plain Python modules (no TorchScript, no compile)."""
    import torch

    from equimd.deploy.export import DTYPES
    from equimd.deploy.module import DeployedPotential
    from equimd.deploy.rebuild import rebuild_model
    from equimd.potentials.forcefield import ForceField

    copy = rebuild_model(model, DTYPES[dtype])
    module = DeployedPotential(ForceField(copy), copy.r_max, copy.species)

    def run(positions, numbers, cell, pbc, stress):
        with torch.enable_grad():
            return module.compute(positions, numbers, cell, pbc, True, stress)

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 4],
                        help="fcc Cu supercell repeats (4·n³ atoms)")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-aoti", action="store_true", help="skip the AOTInductor compile")
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from equimd.deploy import load
    from equimd.deploy.export import export_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = benchmark_model(args.dtype)
    runners = {"eager": eager_runner(model, args.dtype)}
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        script = load(export_model(model, Path(directory) / "model.pt", dtype=args.dtype))
        print(f"TorchScript export + load: {time.perf_counter() - start:.1f} s")
        runners["torchscript"] = lambda *a: script(*a[:4], compute_stress=False)
        runners["torchscript+σ"] = lambda *a: script(*a[:4], compute_stress=True)
        if not args.no_aoti:
            start = time.perf_counter()
            aoti = load(export_model(model, Path(directory) / "model.pt2", dtype=args.dtype,
                                     format="aoti"))
            print(f"AOTInductor export (trace + compile) + load: {time.perf_counter() - start:.1f} s")
            runners["aoti"] = lambda *a: aoti(*a[:4], compute_stress=True)

        dtype = getattr(torch, args.dtype)
        print(f"\nCPU, {torch.get_num_threads()} threads, {args.dtype}, median of {args.calls} "
              "calls, ms per energy+forces evaluation (neighbor list included)")
        print(f"{'atoms':>6} {'edges':>7} " + " ".join(f"{name:>14}" for name in runners))
        timings: dict[str, dict[str, float]] = {}
        for repeat in args.sizes:
            atoms = copper(repeat)
            inputs = (
                torch.tensor(atoms.get_positions(), dtype=dtype),
                torch.tensor(atoms.numbers),
                torch.tensor(np.asarray(atoms.cell), dtype=dtype),
                torch.tensor(atoms.pbc),
            )
            n_edges = count_edges(script.r_max, inputs)
            functions = {
                name: (lambda run=run, inputs=inputs: run(*inputs, False))
                for name, run in runners.items()
            }
            row = {
                name: 1e3 * seconds
                for name, seconds in interleaved_medians(functions, args.calls).items()
            }
            timings[str(len(atoms))] = row
            print(f"{len(atoms):>6} {n_edges:>7} " + " ".join(f"{row[name]:>14.2f}" for name in runners))

    print()
    for size, row in timings.items():
        fastest = min(row, key=row.get)
        pairs = [("torchscript", "eager"), ("aoti", "torchscript+σ")]
        ratios = ", ".join(
            f"{a} vs {b}: {row[b] / row[a]:.2f}x speed-up" for a, b in pairs if a in row and b in row
        )
        print(f"{size:>6} atoms: fastest {fastest}; {ratios}")
    if "aoti" in runners:
        wins = sum(row["aoti"] < row["torchscript+σ"] for row in timings.values())
        verdict = "AOTInductor" if wins > len(timings) / 2 else "TorchScript"
        print(f"faster format on this machine (energy+forces+stress): {verdict} "
              f"({wins}/{len(timings)} sizes for AOTInductor)")
    if args.json:
        Path(args.json).write_text(json.dumps(timings, indent=2))
        print(f"wrote {args.json}")
    return timings


def count_edges(r_max: float, inputs) -> int:
    """Number of directed edges of the structure (the in-graph cell list)."""
    from equimd.deploy.module import NeighborList

    edge_index, _ = NeighborList(r_max)(inputs[0], inputs[2], inputs[3])
    return int(edge_index.shape[1])


if __name__ == "__main__":
    main()
