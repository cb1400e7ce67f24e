"""Every benchmark row's exported model on one device: time per MD force call and peak memory.

    python benchmarks/bench_gpu.py [--device cuda] [--rows nequip escn ...] [--systems water cu2048]
        [--dtype float32] [--repeats 20] [--warmup 3] [--data DIR] [--json bench_out/gpu.json]
        [--profile]

For each row of `benchmarks/rows/*.json` (the same models and sizes as `bench_models.py`) and
each system, the model is built with random weights for the system's elements, exported to a
TorchScript file (`equimd deploy`'s format) and loaded on `--device`; one call is what an MD
step costs there: the neighbor list (inside the file, on the device), energy, forces and
stress. Reported: median wall time per call (after `--warmup` calls, the device synchronised
around each), MD steps/s and ns/day at 1 fs, and the device's peak memory (CUDA: the
allocator's high-water mark; CPU: the process's RSS high-water mark, which only grows). A row
that fails (out of memory, a model that does not export) is reported with its error and the
others go on. No peer runs here: on CPU, `bench_models.py` compares with the peers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import MODEL_ROWS  # noqa: E402
from harness import SYSTEMS, add_data_argument, peak_rss_mb, use_data_argument, write_report  # noqa: E402

from equimd.deploy.export import export_model  # noqa: E402
from equimd.deploy.load import load  # noqa: E402
from equimd.potentials.models import build_model  # noqa: E402

NS_PER_DAY_AT_1FS = 86400 * 1e-6  # one 1 fs step per call: steps/s × 86400 s/day × 1e-6 ns/fs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def print_profile(deployed, inputs: tuple, device: torch.device, title: str, calls: int = 3) -> None:
    """torch.profiler's table of the operators that take the most time over `calls` calls."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            deployed(*inputs)
            synchronize(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(f"--- profile: {title}, {calls} calls, sorted by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))


def measure_row(row: dict[str, Any], system: str, args: argparse.Namespace) -> dict[str, Any]:
    """Export the row's model for `system`'s elements and time calls of the file on the device."""
    device = torch.device(args.device)
    atoms = SYSTEMS[system]()
    species = sorted(set(int(z) for z in atoms.numbers))
    spec = row["equimd"]
    torch.manual_seed(0)
    model = build_model(spec["model_type"], species=species, r_max=row["r_max"],
                        **spec["hyperparameters"])
    with tempfile.TemporaryDirectory() as directory:
        path = export_model(model, Path(directory) / "model.pt", dtype=args.dtype)
        deployed = load(path, device=device)
    inputs = (atoms.positions, atoms.numbers, atoms.get_cell().array, atoms.pbc)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for index in range(args.warmup + args.repeats):
        synchronize(device)
        start = time.perf_counter()
        out = deployed(*inputs)
        synchronize(device)
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    if args.profile:
        print_profile(deployed, inputs, device, f"{spec['model_type']} on {system}")
    return {
        "atoms": len(atoms),
        "median_ms": 1e3 * median,
        "min_ms": 1e3 * min(times),
        "steps_per_s": 1.0 / median,
        "ns_per_day_1fs": NS_PER_DAY_AT_1FS / median,
        "peak_memory_mb": peak_memory_mb(device),
        "energy_eV": float(out["energy"].sum()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", nargs="+", default=sorted(MODEL_ROWS), choices=sorted(MODEL_ROWS))
    parser.add_argument("--systems", nargs="+", default=["water", "cu2048"], choices=sorted(SYSTEMS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default="bench_out/gpu.json")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's table of the costliest operators per row")
    add_data_argument(parser)
    args = parser.parse_args(argv)
    use_data_argument(args)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {"device": name, "dtype": args.dtype, "torch": torch.__version__,
                              "results": []}
    print(f"{name}, {args.dtype}, torch {torch.__version__}")
    print(f"{'row':<16} {'system':<8} {'atoms':>6} {'ms/call':>9} {'steps/s':>9} {'ns/day':>8} "
          f"{'peak MB':>9}")
    for row_name in args.rows:
        for system in args.systems:
            try:
                result = measure_row(MODEL_ROWS[row_name], system, args)
                line = (f"{result['atoms']:>6} {result['median_ms']:>9.2f} "
                        f"{result['steps_per_s']:>9.1f} {result['ns_per_day_1fs']:>8.2f} "
                        f"{result['peak_memory_mb']:>9.0f}")
            except Exception as error:  # noqa: BLE001 - a failing row is reported, the rest go on
                result = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
                line = result["error"]
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            result.update(row=row_name, system=system)
            report["results"].append(result)
            print(f"{row_name:<16} {system:<8} {line}", flush=True)
    write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
