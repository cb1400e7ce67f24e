"""Speed and memory of equimd's models against the peers, measured in the same run.

    python benchmarks/bench_models.py [--rows nequip] [--systems 3bpa water cu256 cu2048]
        [--dtypes float32 float64] [--repeats 20] [--warmup 3] [--threads 2]
        [--no-peers] [--reference-backend] [--no-train] [--no-flops]
        [--quiet-load 0.15] [--max-wait 120] [--json bench_out/models.json] [--quick]

What is measured, for every (row, system, dtype) and every implementation:

- energy + forces wall time per evaluation of the model alone (neighbor list built beforehand;
  parameters frozen, as in a deployed file and in every peer's worker, so autograd keeps only
  what the forces need — before 2026-12-05 equimd's and fairchem's/pyg's workers kept the inputs
  of every weight's gradient too, which inflated their memory, e.g. eSCN ×1.6):
  median (and min) of `--repeats` evaluations after `--warmup` ones, `torch.set_num_threads`
  (`--time-budget` s per measurement: an evaluation that takes tens of seconds is timed fewer
  times, at least 5, the same rule for every implementation; the count is reported);
- peak memory: the RSS high-water mark of the process that ran the evaluations (one fresh
  subprocess per measurement, read before any training step);
- for equimd: training throughput (frames/s: energy + forces loss, backward with
  `create_graph`, Adam step, one frame per step) and the achieved FLOP/s of the tensor-product
  core (`EdgeConvolution.aggregate` of the last interaction, forward, useful FLOPs counted by
  `tp_core.convolution_flops`) next to the FLOP/s of a plain matmul measured in the same process;
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
worker is ``benchmarks/peers/<name>_worker.py``, run by the Python of `.peers/<name>` (created by
``benchmarks/peers/setup_peers.sh <name>``). Peer workers import `benchmarks/harness.py` for the
systems and the measurement code, so both sides are timed by the same code. `--data DIR` names
the shared datasets (default ``../shared/data`` beside the repository).

Adding a model: one JSON file per row, ``benchmarks/rows/<row>.json`` (`load_rows`), with the
equimd model type and hyperparameters and, where a peer runs the same model, the peer's name and
keyword arguments; a new peer brings its worker script ``benchmarks/peers/<peer>_worker.py``.
A peer entry may add ``equimd_hyperparameters``: the equimd configuration that matches the peer
(e.g. eSCN's grid non-linearity for fairchem), run as ``equimd[name=value]`` in the same run,
and the peer's ratio is taken against it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    ROOT,
    SYSTEMS,
    add_data_argument,
    emit,
    measure,
    peak_rss_mb,
    peer_python,
    run_worker,
    use_cpu_backend,
    use_data_argument,
    worker_arguments,
    write_report,  # noqa: E402  (benchmarks/harness.py: systems, timing, workers)
)
from tp_core import describe as describe_tp_core  # noqa: E402  (benchmarks/tp_core.py)
from tp_core import measure_tp_core  # noqa: E402

# ----------------------------------------------------------------------------- what is compared

ROWS_DIR = ROOT / "benchmarks" / "rows"


def load_rows(directory: Path = ROWS_DIR) -> dict[str, dict[str, Any]]:
    """One row per `benchmarks/rows/<name>.json`: {"description", "r_max", "equimd":
    {"model_type", "hyperparameters"}, optional "peer": {"name", "kwargs", optional "model",
    "equimd_hyperparameters", "note"}, optional "note"}."""
    rows = {}
    for path in sorted(directory.glob("*.json")):
        row = json.loads(path.read_text())
        missing = {"description", "r_max", "equimd"} - set(row)
        if missing or not {"model_type", "hyperparameters"} <= set(row["equimd"]):
            raise SystemExit(f"{path}: a benchmark row needs description, r_max and "
                             f"equimd.model_type/hyperparameters (missing: {sorted(missing)})")
        rows[path.stem] = row
    return rows


def peer_worker(name: str) -> Path:
    """A peer's worker script: benchmarks/peers/<name>_worker.py."""
    return ROOT / "benchmarks" / "peers" / f"{name}_worker.py"


MODEL_ROWS: dict[str, dict[str, Any]] = load_rows()


# ----------------------------------------------------------------------------- equimd worker


def run_equimd(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from equimd.allocator import keep_freed_memory

    keep_freed_memory()  # as equimd's loaders and commands do (docs/performance.md)

    from equimd.potentials.data.configuration import Configuration
    from equimd.potentials.data.graph import configuration_to_graph
    from equimd.potentials.forcefield import ForceField
    from equimd.potentials.models import build_model
    from equimd.potentials.train.config import model_hyperparameter_defaults

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    row = args.row
    atoms = SYSTEMS[args.system]()
    graph = configuration_to_graph(Configuration.from_atoms(atoms), row["r_max"], dtype=dtype)
    num_atoms, num_edges = len(atoms), int(graph.edge_index.shape[1])
    torch.manual_seed(0)
    hyperparameters = dict(row["equimd"]["hyperparameters"])
    if "avg_num_neighbors" in model_hyperparameter_defaults(row["equimd"]["model_type"]):
        hyperparameters.setdefault("avg_num_neighbors", num_edges / num_atoms)  # as the trainer
    model = build_model(
        row["equimd"]["model_type"],
        species=sorted({int(z) for z in atoms.numbers}),
        r_max=row["r_max"],
        **hyperparameters,
    )
    backend = use_cpu_backend(model, args.backend)
    model = model.to(dtype).eval()  # as deployed (the compiled backend's kernel: eval mode)
    forcefield = ForceField(model)
    # as in a deployed file (deploy.rebuild) and mace-torch's calculator: autograd then keeps
    # only what the forces need, not the inputs of every weight's gradient
    model.requires_grad_(False)

    def evaluate() -> None:
        forcefield(graph)["forces"].sum().item()

    result: dict[str, Any] = {
        "implementation": "equimd" + (f"[{args.backend}]" if args.backend else ""),
        "tp_backend": backend,
        "atoms": num_atoms,
        "edges": num_edges,
    }
    result.update(measure(evaluate, args.repeats, args.warmup, args.quiet_load, args.max_wait))
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)

    if args.flops and hasattr(model, "interactions"):
        result["tp_core"] = measure_tp_core(model, graph, args.dtype)

    if args.train_steps > 0:
        model.requires_grad_(True)
        model.train()  # as the trainer (the compiled backend then takes the eager path)
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


def equimd_variant(
    row: dict[str, Any], overrides: dict[str, Any], arguments: list[str]
) -> tuple[str, list[str]]:
    """("equimd[name=value,...]", worker command): equimd's worker on the row with some
    hyperparameters replaced (a row's `peer.equimd_hyperparameters`: the configuration in
    which equimd matches the peer, e.g. eSCN's grid non-linearity for fairchem)."""
    variant = dict(row)
    variant["equimd"] = dict(
        row["equimd"], hyperparameters={**row["equimd"]["hyperparameters"], **overrides}
    )
    name = "equimd[" + ",".join(f"{key}={value}" for key, value in overrides.items()) + "]"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "equimd"]
    return name, command + ["--row-json", json.dumps(variant), *arguments]


def _format_row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['implementation']:<16} {r['error'][:150]}"
    note = f"  [{r['note']}]" if r.get("note") else ""
    load = f"{r['load_before']:.2f}/{r['load_during']:.2f}"
    text = (
        f"{r['implementation']:<16} {r['median_s'] * 1e3:>10.1f} {r['min_s'] * 1e3:>10.1f} "
        f"{r['peak_rss_mb']:>9.0f} {load:>11}"
    )
    if "ratio" in r:
        text += f"  ratio {r['ratio']:.2f}"
        if r.get("ratio_to", "equimd") != "equimd":
            text += f" (to {r['ratio_to']})"
    if "train" in r:
        text += f"  train {r['train']['frames_per_s']:.2f} frames/s"
    if "tp_core" in r:
        text += f"  {describe_tp_core(r['tp_core'])}"
    return text + note


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
    add_data_argument(parser)
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: 3 repeats, 1 warm-up, no waiting, 2 training steps",
    )
    args = parser.parse_args(argv)
    use_data_argument(args)
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
                if peer and not args.no_peers and peer.get("equimd_hyperparameters"):
                    runs.append(equimd_variant(row, peer["equimd_hyperparameters"], base[2:]))
                if peer and not args.no_peers:
                    python, worker = peer_python(peer["name"]), peer_worker(peer["name"])
                    if python.exists() and worker.exists():
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
                    if name.startswith("equimd["):  # a variant: named by its hyperparameters
                        result["implementation"] = name
                    result.update(row=row_name, system=system, dtype=dtype)
                    results.append(result)
                # a peer is compared with the equimd variant it matches, if the row names one
                equimd_result = results[0]
                for result in results[1:]:
                    if result["implementation"].startswith("equimd["):
                        if result["implementation"] != "equimd[e3nn]":
                            equimd_result = result
                        continue
                    if "error" not in result and "error" not in equimd_result:
                        result["ratio"] = result["median_s"] / equimd_result["median_s"]
                        result["ratio_to"] = equimd_result["implementation"]
                for result in results:
                    print(_format_row(result), flush=True)
                report["results"].extend(results)

    write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
