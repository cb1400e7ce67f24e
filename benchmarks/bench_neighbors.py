"""Neighbor-list speed: our TorchScript cell list vs matscipy and vesin, in one run.

    python benchmarks/bench_neighbors.py [--repeats 20] [--threads 2] [--json PATH]
                                         [--device cpu|cuda] [--dtype float64|float32]
                                         [--clock wall|cpu] [--crossover]

Systems: fcc Cu with 32, 256 and 2048 atoms (a = 3.61 Å, 0.05 Å noise, r_max = 5 and 6 Å,
fully periodic) and a 27-atom molecule (nine water molecules, zero cell, no periodicity).
Per system, the methods are called round-robin (so that load from other processes hits
them alike) `--repeats` times after warm-up:

    ours       `neighbor_list_torch`, method "auto" (eager)
    scripted   the same under `torch.jit.script`
    cell list  method="cell_list" (always the binned search)
    O(N²)      method="brute_force" (one bin, all pairs and images; skipped above 512 atoms)
    matscipy   `matscipy.neighbours.neighbour_list("ijS")` (C, numpy in/out, CPU)
    vesin      `vesin.NeighborList(full_list=True).compute(..., "ijS")` (C++, CPU)

The table gives median wall times in ms and the ratios peer / ours (> 1: ours is faster);
the JSON also has the minimum of each. All methods' pair counts are checked against ours.
Peers always run on the CPU with numpy inputs; ours get prebuilt tensors on `--device`.
`--crossover` also times the cell list against the O(N²) path (and "auto", which picks
between them) for growing fcc Cu boxes and water clusters: the measurement behind the
O(N²) choice documented in `potentials/data/cell_list.py`.

Timings on a shared machine are noisy: compare ratios from the same run, and prefer the
minimum where the median is visibly disturbed. On an oversubscribed host (more runnable
processes than cores), torch's OpenMP workers spin while waiting and multi-threaded torch
timings become erratic (10-20x slower); run with ``OMP_WAIT_POLICY=PASSIVE`` there, or with
``--threads 1 --clock cpu``. The header line shows the setting used.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import run_stamp  # noqa: E402  (benchmarks/harness.py)

from equimd.potentials.data.cell_grid import BIN_SUBDIVISION  # noqa: E402
from equimd.potentials.data.cell_list import neighbor_list_torch  # noqa: E402

LATTICE_CONSTANT_CU = 3.61  # Å


def fcc_copper(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cubic fcc Cu supercell of 4 * prod(shape) atoms, thermal-like noise of 0.05 Å.

    Returns positions [N, 3] Å and cell [3, 3] Å.
    """
    basis = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    fractional = (grid.reshape(-1, 1, 3) + basis[None, :, :]).reshape(-1, 3)
    rng = np.random.default_rng(0)
    positions = fractional * LATTICE_CONSTANT_CU + rng.normal(scale=0.05, size=fractional.shape)
    cell = np.diag(np.array(shape, dtype=float) * LATTICE_CONSTANT_CU)
    return positions, cell


def water_cluster(n_molecules: int = 9, seed: int = 0) -> np.ndarray:
    """A molecule-like cluster of water molecules on a 3 Å grid: [3 n, 3] Å."""
    rng = np.random.default_rng(seed)
    oh = 0.9572  # Å
    angle = np.deg2rad(104.52)
    local = np.array(
        [[0.0, 0.0, 0.0], [oh, 0.0, 0.0], [oh * np.cos(angle), oh * np.sin(angle), 0.0]]
    )
    positions = []
    side = int(np.ceil(n_molecules ** (1 / 3) - 1e-9))
    for index in range(n_molecules):
        corner = np.array(np.unravel_index(index, (side, side, side)), dtype=float) * 3.0
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        positions.append(local @ q.T + corner + rng.normal(scale=0.2, size=3))
    return np.concatenate(positions)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def time_round_robin(
    functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """{name: {"median_ms", "min_ms"}}, calling the functions in turn `repeats` times."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = clock()
            function()
            times[name].append(clock() - start)
    return {
        name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t)}
        for name, t in times.items()
    }


def synchronized(function: Callable[[], object], device: torch.device) -> Callable[[], object]:
    if device.type != "cuda":
        return function

    def run() -> object:
        result = function()
        torch.cuda.synchronize(device)
        return result

    return run


def benchmark_system(
    name: str,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    r_max: float,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    scripted: Callable,
) -> dict:
    from matscipy.neighbours import neighbour_list
    from vesin import NeighborList

    inputs = (
        torch.tensor(positions, dtype=dtype, device=device),
        torch.tensor(cell, dtype=dtype, device=device),
        torch.tensor(pbc, dtype=torch.bool, device=device),
        r_max,
    )
    n_atoms = len(positions)
    edges = neighbor_list_torch(*inputs)[0].shape[1]
    # matscipy needs a non-degenerate box even without periodicity
    box = cell if abs(np.linalg.det(cell)) > 1e-8 else np.eye(3) * (np.ptp(positions) + 50)
    calculator = NeighborList(cutoff=r_max, full_list=True)

    functions = {
        "ours": synchronized(functools.partial(neighbor_list_torch, *inputs, "auto"), device),
        "scripted": synchronized(functools.partial(scripted, *inputs, "auto"), device),
        "cell_list": synchronized(
            functools.partial(neighbor_list_torch, *inputs, "cell_list"), device
        ),
        "matscipy": functools.partial(
            neighbour_list, "ijS", positions=positions, cell=box, pbc=pbc, cutoff=r_max
        ),
        "vesin": functools.partial(calculator.compute, positions, cell, pbc, quantities="ijS"),
    }
    # the O(N²) path computes N² · images / 2 distances
    if n_atoms <= 512:
        functions["brute_force"] = synchronized(
            functools.partial(neighbor_list_torch, *inputs, "brute_force"), device
        )
    for method, function in functions.items():
        result = function()
        # ours: (edge_index [2, E], shifts); peers: (i [E], j [E], S [E, 3])
        count = result[0].shape[-1] if isinstance(result[0], torch.Tensor) else len(result[0])
        if count != edges:
            raise AssertionError(f"{name}: {method} finds {count} pairs, ours {edges}")

    timings = time_round_robin(functions, repeats)
    row = {"system": name, "n_atoms": n_atoms, "r_max": r_max, "edges": edges}
    for method in ("ours", "scripted", "cell_list", "brute_force", "matscipy", "vesin"):
        timing = timings.get(method, {"median_ms": None, "min_ms": None})
        row[f"{method}_ms"] = timing["median_ms"]
        row[f"{method}_min_ms"] = timing["min_ms"]
    for peer in ("matscipy", "vesin"):
        row[f"{peer}_over_ours"] = row[f"{peer}_ms"] / row["ours_ms"]
        row[f"{peer}_over_ours_min"] = row[f"{peer}_min_ms"] / row["ours_min_ms"]
    return row


def crossover(repeats: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Cell list vs O(N²) vs auto over atom counts: fcc Cu boxes and water clusters."""
    cases = []
    for shape in [(2, 2, 2), (3, 2, 2), (3, 3, 2), (3, 3, 3), (4, 3, 3), (4, 4, 4), (5, 5, 4)]:
        positions, cell = fcc_copper(shape)
        for r_max in (5.0, 6.0):
            cases.append((f"Cu {len(positions)}", positions, cell, np.ones(3, bool), r_max))
    for n_molecules in [9, 27, 64, 125, 216, 343]:
        positions = water_cluster(n_molecules)
        cases.append(
            (f"water {len(positions)}", positions, np.zeros((3, 3)), np.zeros(3, bool), 5.0)
        )
    rows = []
    for name, positions, cell, pbc, r_max in cases:
        inputs = (
            torch.tensor(positions, dtype=dtype, device=device),
            torch.tensor(cell, dtype=dtype, device=device),
            torch.tensor(pbc, device=device),
            r_max,
        )
        functions = {
            method: synchronized(functools.partial(neighbor_list_torch, *inputs, method), device)
            for method in ("cell_list", "brute_force", "auto")
        }
        timings = time_round_robin(functions, repeats)
        row = {"system": name, "n_atoms": len(positions), "r_max": r_max}
        for method, timing in timings.items():
            row[f"{method}_ms"] = timing["median_ms"]
            row[f"{method}_min_ms"] = timing["min_ms"]
        row["faster"] = (
            "O(N²)" if row["brute_force_min_ms"] < row["cell_list_min_ms"] else "cell list"
        )
        rows.append(row)
    return rows


def format_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument(
        "--clock",
        default="wall",
        choices=sorted(CLOCKS),
        help="wall: elapsed time; cpu: process CPU time (all threads; steadier on a busy host)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--crossover", action="store_true", help="also time O(N²) vs cell list")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be positive")

    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    scripted = torch.jit.script(neighbor_list_torch)

    systems = []
    for repeat in (2, 4, 8):
        positions, cell = fcc_copper((repeat, repeat, repeat))
        for r_max in (5.0, 6.0):
            systems.append((f"fcc Cu {len(positions)}", positions, cell, np.ones(3, bool), r_max))
    systems.append(("molecule 27", water_cluster(9), np.zeros((3, 3)), np.zeros(3, bool), 5.0))

    print(
        f"torch {torch.__version__}, {args.threads} threads, device {device}, {args.dtype}, "
        f"{args.clock} clock, median of {args.repeats} round-robin calls (ms); "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"BIN_SUBDIVISION = {BIN_SUBDIVISION}"
    )
    header = (
        f"{'system':<14}{'r_max':>6}{'edges':>8}{'ours':>9}{'scripted':>9}{'cell list':>10}"
        f"{'O(N²)':>9}{'matscipy':>9}{'vesin':>9}{'ms/ours':>9}{'vs/ours':>9}"
    )
    print(header + "\n" + "-" * len(header))
    rows = []
    for name, positions, cell, pbc, r_max in systems:
        row = benchmark_system(
            name, positions, cell, pbc, r_max, args.repeats, device, dtype, scripted
        )
        rows.append(row)
        print(
            f"{name:<14}{r_max:>6.1f}{row['edges']:>8d}{format_ms(row['ours_ms']):>9}"
            f"{format_ms(row['scripted_ms']):>9}{format_ms(row['cell_list_ms']):>10}"
            f"{format_ms(row['brute_force_ms']):>9}{format_ms(row['matscipy_ms']):>9}"
            f"{format_ms(row['vesin_ms']):>9}{row['matscipy_over_ours']:>9.2f}"
            f"{row['vesin_over_ours']:>9.2f}",
            flush=True,
        )
    print("ms/ours = matscipy median / ours, vs/ours = vesin median / ours (> 1: ours faster)")

    crossover_rows = []
    if args.crossover:
        print("\ncrossover, minimum of the round-robin calls (ms):")
        print(f"{'system':<12}{'r_max':>6}{'cell list':>11}{'O(N²)':>9}{'auto':>9}  faster")
        for row in crossover(args.repeats, device, dtype):
            crossover_rows.append(row)
            print(
                f"{row['system']:<12}{row['r_max']:>6.1f}{format_ms(row['cell_list_min_ms']):>11}"
                f"{format_ms(row['brute_force_min_ms']):>9}{format_ms(row['auto_min_ms']):>9}"
                f"  {row['faster']}",
                flush=True,
            )

    if args.json is not None:
        result = {
            **run_stamp(),
            "settings": {"threads": args.threads},
            "torch": torch.__version__,
            "threads": args.threads,
            "device": str(device),
            "dtype": args.dtype,
            "repeats": args.repeats,
            "clock": args.clock,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "machine": platform.processor() or platform.machine(),
            "bin_subdivision": BIN_SUBDIVISION,
            "systems": rows,
            "crossover": crossover_rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
