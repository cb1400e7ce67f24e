"""Speed and memory of equimd's models against the peers, measured in the same run.

    python benchmarks/bench_models.py [--rows nequip] [--systems 3bpa water cu256 cu2048]
        [--dtypes float32 float64] [--repeats 20] [--warmup 3] [--threads 2]
        [--no-peers] [--reference-backend] [--no-train] [--no-flops]
        [--quiet-load 0.15] [--max-wait 120] [--json bench_out/models.json] [--quick]

What is measured, for every (row, system, dtype) and every implementation:

- energy + forces wall time per evaluation of the model alone (neighbor list built beforehand):
  median (and min) of `--repeats` evaluations after `--warmup` ones, `torch.set_num_threads`
  (`--time-budget` s per measurement: an evaluation that takes tens of seconds is timed fewer
  times, at least 5, the same rule for every implementation; the count is reported);
- peak memory: the RSS high-water mark of the process that ran the evaluations (one fresh
  subprocess per measurement, read before any training step);
- for equimd: training throughput (frames/s: energy + forces loss, backward with
  `create_graph`, Adam step, one frame per step) and the achieved FLOP/s of the tensor-product
  core (`EdgeConvolution.aggregate` of the last interaction, forward, useful FLOPs counted by
  `convolution_flops`) next to the FLOP/s of a plain matmul measured in the same process;
- with `--thp`, every worker (equimd's and the peers') runs with torch's transparent-huge-page
  allocation (`THP_MEM_ALLOC_ENABLE=1`), which removes most page faults of large allocations;
- the foreign CPU load (cores busy with other processes, from /proc/stat, minus this process's
  own CPU time) before and during every measurement. Before measuring, a worker waits (at most
  `--max-wait` s) until the foreign load is below `--quiet-load` cores; the load it saw is
  reported next to the figure either way. On a 2-core machine any foreign load distorts a
  2-thread measurement: trust only rows whose load is ~0.

Ratios are peer time / equimd time (> 1: equimd is faster).

Worker protocol (how peers plug in): every implementation runs in its own subprocess,
``<python> <worker script> --row-json '<row>' --system NAME --dtype float32 --threads 2
--repeats 20 --warmup 3 --quiet-load 0.15 --max-wait 120`` (see `worker_arguments`), and prints
one line ``BENCH_RESULT {json}``. equimd's worker is this file (``--worker equimd``); a peer's
worker is `PEER_WORKERS[name]`, run by the Python of `.peers/<name>` (created by
``benchmarks/peers/setup_peers.sh <name>``). Peer workers import this module for the systems and
the measurement code (it imports only the standard library, numpy, ase and torch at module
level), so both sides are timed by the same code.

Adding a model (e.g. the MACE rows): add an entry to `MODEL_ROWS` with the equimd model type and
hyperparameters and the peer's name and keyword arguments, and (for a new peer) a worker script
in `PEER_WORKERS`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data")
RESULT_PREFIX = "BENCH_RESULT "

# ----------------------------------------------------------------------------- what is compared

MODEL_ROWS: dict[str, dict[str, Any]] = {
    "nequip": {
        "description": "NequIP l_max 2, 64 features (both parities), 4 layers, r_max 5 Å",
        "r_max": 5.0,
        "equimd": {
            "model_type": "nequip",
            "hyperparameters": {
                "l_max": 2,
                "num_features": 64,
                "num_layers": 4,
                "parity": True,
                "num_bessel": 8,
                "polynomial_p": 6,
                "radial_mlp_hidden": [64, 64],
            },
        },
        # nequip 0.19.1's NequIPGNNModel; its last layer keeps only scalars (cheaper than
        # equimd's, which keeps all irreps in every layer): the comparison is conservative.
        "peer": {
            "name": "nequip",
            "kwargs": {
                "l_max": 2,
                "num_features": 64,
                "num_layers": 4,
                "parity": True,
                "num_bessels": 8,
                "polynomial_cutoff_p": 6,
                "radial_mlp_depth": 2,
                "radial_mlp_width": 64,
            },
        },
    },
    # MACE rows (mace-torch MACE-MP small `128x0e` / medium `128x0e+128x1o`, max_ell 3,
    # correlation 3, 2 interactions, r_max 6) go here once equimd's MACE exists, with
    # "peer": {"name": "mace", "kwargs": {...}} and a worker `benchmarks/peers/mace_worker.py`.
}

PEER_WORKERS: dict[str, Path] = {
    "nequip": ROOT / "benchmarks" / "peers" / "nequip_worker.py",
    "mace": ROOT / "benchmarks" / "peers" / "mace_worker.py",
}


def peer_python(name: str) -> Path:
    return ROOT / ".peers" / name / "bin" / "python"


def system_3bpa():
    import ase.io

    return ase.io.read(DATA / "3bpa" / "train_300K.xyz", index=0)


def system_water():
    import ase.io

    return ase.io.read(DATA / "water_rpbe_d3" / "test-H2O_RPBE-D3.xyz", index=0)


def _copper(repeat: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.05, seed=0)
    return atoms


SYSTEMS: dict[str, Callable[[], Any]] = {
    "3bpa": system_3bpa,  # 27 atoms, molecule (no pbc)
    "water": system_water,  # 192 atoms, liquid water, periodic
    "cu256": lambda: _copper(4),  # 256 atoms, fcc Cu, periodic
    "cu2048": lambda: _copper(8),  # 2048 atoms, fcc Cu, periodic
}

# ----------------------------------------------------------------------------- measurement


def _cpu_jiffies() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [float(x) for x in handle.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    hz = float(os.sysconf("SC_CLK_TCK"))
    busy = user + nice + system + irq + softirq + steal
    return busy / hz, (busy + idle + iowait) / hz


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class LoadWindow:
    """Foreign CPU load (cores busy with other processes) over a time window."""

    def __init__(self) -> None:
        self.busy, _ = _cpu_jiffies()
        self.own = _own_cpu_seconds()
        self.wall = time.perf_counter()

    def foreign_cores(self) -> float:
        busy, _ = _cpu_jiffies()
        elapsed = max(time.perf_counter() - self.wall, 1e-9)
        return max(0.0, (busy - self.busy) - (_own_cpu_seconds() - self.own)) / elapsed


def wait_for_quiet(threshold: float, max_wait: float, window: float = 1.0) -> dict[str, float]:
    """Sleep until the foreign load over `window` seconds is below `threshold` cores, at most
    `max_wait` seconds. Returns the last load seen and the time waited."""
    start = time.perf_counter()
    while True:
        probe = LoadWindow()
        time.sleep(window)
        load = probe.foreign_cores()
        waited = time.perf_counter() - start
        if load < threshold or waited >= max_wait:
            return {"load_before": round(load, 3), "waited_s": round(waited, 1)}


def measure(
    fn: Callable[[], Any],
    repeats: int,
    warmup: int,
    quiet_load: float,
    max_wait: float,
    time_budget: float | None = None,
    min_repeats: int | None = None,
) -> dict[str, Any]:
    """Warm up, wait for a quiet machine, then time `repeats` calls of `fn` one by one.

    `time_budget` (s; default: the `EQUIMD_BENCH_TIME_BUDGET` environment variable the
    orchestrators set for every worker alike, 0 = none) bounds slow measurements: warm-up stops
    after one call once it has used a fifth of the budget, and the number of timed calls is
    cut to what fits in the budget, never below `min_repeats` (default:
    `EQUIMD_BENCH_MIN_REPEATS`, else 5). The count used is reported."""
    if time_budget is None:
        time_budget = float(os.environ.get("EQUIMD_BENCH_TIME_BUDGET", "0") or 0)
    if min_repeats is None:
        min_repeats = int(os.environ.get("EQUIMD_BENCH_MIN_REPEATS", "5") or 5)
    warm_start = time.perf_counter()
    last = 0.0
    for done in range(warmup):
        if done and time_budget and time.perf_counter() - warm_start > 0.2 * time_budget:
            break
        start = time.perf_counter()
        fn()
        last = time.perf_counter() - start
    if time_budget and last > 0:
        repeats = min(repeats, max(min_repeats, int(time_budget / last)))
    result: dict[str, Any] = wait_for_quiet(quiet_load, max_wait)
    window = LoadWindow()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    result.update(
        median_s=statistics.median(samples),
        min_s=min(samples),
        repeats=repeats,
        load_during=round(window.foreign_cores(), 3),
    )
    return result


def peak_rss_mb() -> float:
    """RSS high-water mark of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_flops(dtype_name: str, n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a plain [n, n] @ [n, n] matmul in this process (same threads)."""
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype_name))
    b = torch.randn(n, n, dtype=a.dtype)
    torch.mm(a, b)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        samples.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(samples)


def emit(result: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def worker_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Arguments every worker (equimd's and the peers') understands."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", default="equimd")
    parser.add_argument("--row-json", required=True, help="an entry of MODEL_ROWS, as JSON")
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quiet-load", type=float, default=0.15)
    parser.add_argument("--max-wait", type=float, default=120.0)
    parser.add_argument("--backend", default=None, help="equimd: tensor-product backend")
    parser.add_argument("--train-steps", type=int, default=0, help="equimd: training steps")
    parser.add_argument("--flops", action="store_true", help="equimd: tensor-product FLOP/s")
    args = parser.parse_args(argv)
    args.row = json.loads(args.row_json)
    return args


# ----------------------------------------------------------------------------- equimd worker


def convolution_flops(convolution, num_edges: int) -> float:
    """Useful FLOPs of one forward of a "uvu" `EdgeConvolution` over `num_edges` edges.

    Per path (l1 ⊗ l2 → l3, U channels): 2·U·d1·d3 for the contraction with the per-edge
    coupling matrix, U·d3 for the weight, 2·D_sh·d1·d3 for the coupling matrix itself.
    The same count is used for every backend (e3nn's outer-product algorithm does more).
    """
    from e3nn import o3

    irreps_node, irreps_sh = convolution.irreps_node, convolution.irreps_sh
    _, instructions = _instructions(convolution)
    total = 0.0
    for i_in1, _i_in2, i_out, *_ in instructions:
        mul, ir_in = irreps_node[i_in1]
        d1, d3 = ir_in.dim, o3.Irreps(convolution.irreps_out)[i_out].ir.dim
        total += 2 * mul * d1 * d3 + mul * d3 + 2 * irreps_sh.dim * d1 * d3
    return total * num_edges


def _instructions(convolution):
    from e3nn import o3

    from equimd.potentials.nn.tensor_product import convolution_irreps

    return convolution_irreps(
        convolution.irreps_node, convolution.irreps_sh, o3.Irreps(convolution.irreps_out)
    )


def _time(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run_equimd(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from equimd.potentials.data.configuration import Configuration
    from equimd.potentials.data.graph import configuration_to_graph, edge_vectors
    from equimd.potentials.forcefield import ForceField
    from equimd.potentials.models import build_model

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    row = args.row
    atoms = SYSTEMS[args.system]()
    graph = configuration_to_graph(Configuration.from_atoms(atoms), row["r_max"], dtype=dtype)
    num_atoms, num_edges = len(atoms), int(graph.edge_index.shape[1])
    hyperparameters = dict(row["equimd"]["hyperparameters"])
    if args.backend:
        hyperparameters["tp_backend"] = args.backend
    torch.manual_seed(0)
    model = build_model(
        row["equimd"]["model_type"],
        species=sorted({int(z) for z in atoms.numbers}),
        r_max=row["r_max"],
        avg_num_neighbors=num_edges / num_atoms,
        **hyperparameters,
    ).to(dtype)
    forcefield = ForceField(model)

    def evaluate() -> None:
        forcefield(graph)["forces"].sum().item()

    result: dict[str, Any] = {
        "implementation": "equimd" + (f"[{args.backend}]" if args.backend else ""),
        "atoms": num_atoms,
        "edges": num_edges,
    }
    result.update(measure(evaluate, args.repeats, args.warmup, args.quiet_load, args.max_wait))
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)

    if args.flops and hasattr(model, "interactions"):
        convolution = model.interactions[-1].convolution
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(num_atoms, convolution.irreps_node.dim, generator=generator)
        weights = torch.randn(num_edges, convolution.weight_numel, generator=generator)
        features, weights = features.to(dtype), weights.to(dtype)
        with torch.no_grad():
            edge_sh = model.spherical_harmonics(edge_vectors(graph))
            sender, receiver = graph.edge_index[0], graph.edge_index[1]
            window = LoadWindow()
            seconds = _time(
                lambda: convolution.aggregate(
                    features, edge_sh, weights, sender, receiver, num_atoms
                ),
                repeats=5,
            )
            flops = convolution_flops(convolution, num_edges)
            result["tp_core"] = {
                "backend": convolution.backend,
                "irreps_in": str(convolution.irreps_node),
                "forward_s": seconds,
                "gflops": flops / seconds / 1e9,
                "matmul_gflops": matmul_flops(args.dtype) / 1e9,
                "load_during": round(window.foreign_cores(), 3),
            }
            result["tp_core"]["fraction_of_matmul"] = (
                result["tp_core"]["gflops"] / result["tp_core"]["matmul_gflops"]
            )

    if args.train_steps > 0:
        reference = forcefield(graph)
        target_energy = reference["energy"].detach() + 0.1
        target_forces = reference["forces"].detach() * 0.9
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def train_step() -> None:
            out = forcefield(graph, training=True)
            loss = ((out["energy"] - target_energy) ** 2).mean() / num_atoms**2 + (
                (out["forces"] - target_forces) ** 2
            ).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        training = measure(train_step, args.train_steps, 1, args.quiet_load, args.max_wait)
        result["train"] = {
            "frames_per_s": 1.0 / training["median_s"],
            "step_median_s": training["median_s"],
            "batch_frames": 1,
            "load_during": training["load_during"],
            "load_before": training["load_before"],
        }
    return result


# ----------------------------------------------------------------------------- orchestration


def memory_limit_mb() -> float:
    """Default RSS cap of one worker: `EQUIMD_BENCH_MEMORY_MB`, else 90 % of MemTotal."""
    if os.environ.get("EQUIMD_BENCH_MEMORY_MB"):
        return float(os.environ["EQUIMD_BENCH_MEMORY_MB"])
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return 0.9 * float(line.split()[1]) / 1024.0
    return float("inf")


def _rss_mb(pid: int) -> float:
    """Current resident memory of a process (MiB), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run_worker(
    command: list[str],
    timeout: float,
    env: dict[str, str] | None = None,
    memory_mb: float | None = None,
) -> dict[str, Any]:
    """Run one worker subprocess; return its result line, or an error record.

    The worker is killed when its resident memory exceeds `memory_mb` (default
    `memory_limit_mb()`): a peer that runs out of memory is reported as such instead of
    pushing the whole machine into swap or the kernel's OOM killer."""
    limit = memory_limit_mb() if memory_mb is None else memory_mb
    started = time.perf_counter()
    peak = 0.0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            command, stdout=out, stderr=err, text=True, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        reason = None
        while process.poll() is None:
            peak = max(peak, _rss_mb(process.pid))
            if peak > limit:
                reason = f"out of memory: resident memory passed the {limit / 1024:.1f} GiB cap"
            elif time.perf_counter() - started > timeout:
                reason = f"timed out after {timeout:.0f} s"
            if reason:
                process.kill()
                process.wait()
                return {"error": reason, "peak_rss_mb": round(peak, 1)}
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            result["process_s"] = round(time.perf_counter() - started, 1)
            return result
    if process.returncode in (-9, 137):
        return {"error": "killed (SIGKILL): out of memory?"}
    tail = (stderr or stdout).strip().splitlines()[-3:]
    return {"error": f"exit code {process.returncode}: " + " | ".join(tail)}


def _format_row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['implementation']:<16} {r['error'][:150]}"
    load = f"{r['load_before']:.2f}/{r['load_during']:.2f}"
    text = (
        f"{r['implementation']:<16} {r['median_s'] * 1e3:>10.1f} {r['min_s'] * 1e3:>10.1f} "
        f"{r['peak_rss_mb']:>9.0f} {load:>11}"
    )
    if "ratio" in r:
        text += f"  ratio {r['ratio']:.2f}"
    if "train" in r:
        text += f"  train {r['train']['frames_per_s']:.2f} frames/s"
    if "tp_core" in r:
        core = r["tp_core"]
        text += (
            f"  TP core {core['gflops']:.2f} GFLOP/s "
            f"({100 * core['fraction_of_matmul']:.1f}% of matmul {core['matmul_gflops']:.0f})"
        )
    return text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None:
        argv = sys.argv[1:]
    if "--worker" in argv:
        args = worker_arguments(argv)
        emit(run_equimd(args))
        return {}

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=sorted(MODEL_ROWS), choices=sorted(MODEL_ROWS))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet-load", type=float, default=0.15, help="cores (default 0.15)")
    parser.add_argument("--max-wait", type=float, default=120.0, help="s per measurement")
    parser.add_argument("--timeout", type=float, default=3600.0, help="s per subprocess")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--reference-backend", action="store_true",
        help="also time equimd with the e3nn reference tensor-product backend",
    )
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument(
        "--train-systems", nargs="+", default=["3bpa", "water"],
        help="systems whose training throughput is measured (default: 3bpa water)",
    )
    parser.add_argument(
        "--thp", action="store_true",
        help="run every worker (equimd and peers alike) with THP_MEM_ALLOC_ENABLE=1: torch "
        "backs allocations >= 2 MiB with transparent huge pages (fewer page faults)",
    )
    parser.add_argument(
        "--time-budget", type=float, default=240.0,
        help="s per measurement (default 240): slow evaluations (the 2048-atom system) are "
        "timed fewer times, never fewer than 5; 0: always --repeats",
    )
    parser.add_argument("--json", default=str(ROOT / "bench_out" / "models.json"))
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: 3 repeats, 1 warm-up, no waiting, 2 training steps",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.max_wait, args.train_steps = 3, 1, 0.0, 2

    common = [
        "--threads", str(args.threads), "--repeats", str(args.repeats),
        "--warmup", str(args.warmup), "--quiet-load", str(args.quiet_load),
        "--max-wait", str(args.max_wait),
    ]
    report: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "results": [],
    }
    print(
        f"{'implementation':<16} {'median ms':>10} {'min ms':>10} {'peak MiB':>9} "
        f"{'load b/d':>11}   (load: foreign cores before/during; ratio: peer time / equimd time)"
    )
    for row_name in args.rows:
        row = MODEL_ROWS[row_name]
        row_json = json.dumps(row)
        peer = row.get("peer")
        for system in args.systems:
            for dtype in args.dtypes:
                print(f"--- {row_name} | {system} | {dtype}", flush=True)
                base = ["--row-json", row_json, "--system", system, "--dtype", dtype, *common]
                equimd_command = [sys.executable, str(Path(__file__).resolve()), "--worker", "equimd", *base]
                extra = []
                if not args.no_train and system in args.train_systems:
                    extra += ["--train-steps", str(args.train_steps)]
                if not args.no_flops:
                    extra.append("--flops")
                runs: list[tuple[str, list[str]]] = [("equimd", equimd_command + extra)]
                if args.reference_backend:
                    runs.append(("equimd[e3nn]", equimd_command + ["--backend", "e3nn"]))
                if peer and not args.no_peers:
                    python, worker = peer_python(peer["name"]), PEER_WORKERS.get(peer["name"])
                    if python.exists() and worker is not None and worker.exists():
                        runs.append((peer["name"], [str(python), str(worker), *base]))
                    else:
                        print(
                            f"{peer['name']:<16} skipped: no {python} (run "
                            f"benchmarks/peers/setup_peers.sh {peer['name']}) or no worker"
                        )
                results = []
                env = {"EQUIMD_BENCH_TIME_BUDGET": str(args.time_budget)}
                if args.thp:
                    env["THP_MEM_ALLOC_ENABLE"] = "1"
                for name, command in runs:
                    result = run_worker(command, args.timeout, env)
                    result.setdefault("implementation", name)
                    result.update(row=row_name, system=system, dtype=dtype)
                    results.append(result)
                equimd_result = results[0]
                for result in results[1:]:
                    if "error" not in result and "error" not in equimd_result:
                        result["ratio"] = result["median_s"] / equimd_result["median_s"]
                for result in results:
                    print(_format_row(result), flush=True)
                report["results"].extend(results)

    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
