"""equimd's MACE against mace-torch: (a) speed on the same weights, (b) accuracy for the same
training budget.

    python benchmarks/bench_mace.py speed [--configs small medium] [--systems water cu256]
        [--dtypes float32 float64] [--threads 2] [--repeats 20] [--warmup 3]
        [--quiet-load 0.15] [--max-wait 120] [--json bench_out/mace_speed.json] [--quick] [--no-flops]
    python benchmarks/bench_mace.py train [--minutes 20] [--config small] [--dtype float64]
        [--train-frames 450] [--valid-frames 50] [--threads 2] [--json ...] [--quick]

(a) speed. For every MACE configuration (`CONFIGS`: mace-torch's "small" 128x0e and "medium"
128x0e+128x1o, max_ell 3, correlation 3, 2 interactions, r_max 6 Å) and system
(`harness.SYSTEMS`: water = 192-atom liquid water, frame 0 of water_rpbe_d3; cu256 / cu2048 =
fcc Cu; "mp0_medium": the MACE-MP-0 medium architecture with its 89 elements), the mace peer
(`.peers/mace`, `benchmarks/peers/setup_peers.sh mace`) builds a seeded float64 ScaleShiftMACE
and saves it as mace.model, which both sides load: mace-torch with `torch.load`, equimd with
its importer (`equimd.potentials.models.mace_import`, no mace-torch), so both run the same file. Then, per
dtype, energy + forces of the model alone (neighbor list built beforehand, each side with its
own) is timed in one fresh subprocess per implementation with the same measurement code
(`harness.measure`: median of `--repeats` after `--warmup`, waiting up to `--max-wait` s for
the foreign CPU load to fall below `--quiet-load` cores, and reporting that load). Reported:
median/min ms, peak RSS, foreign load before/during, the float64 energy of both (same weights
→ equal to ~1e-10), and ratio = mace time / equimd time (> 1: equimd is faster); and the
tensor-product core's FLOP/s against a matmul in the same process (`tp_core.py`).

(b) training. 3BPA (`3bpa/train_300K.xyz` of the shared datasets, `--data DIR`): the first `--train-frames`
frames train, the last `--valid-frames` validate, written once to `<out>/data/{train,valid}.xyz`
(keys REF_energy/REF_forces) and read by both; E0s are the isolated-atom energies of
iso_atoms.xyz for both. The same MACE hyperparameters, batch size, AMSGrad lr 0.01 with weight
decay 5e-7, ReduceLROnPlateau (factor 0.8, patience 50), EMA 0.99, gradient clipping 10, loss
weights energy/atom 1 and forces 100, float64, `--threads` threads. Each run gets the same
wall-clock budget from process start (imports and data preparation included): mace-torch's
`mace.cli.run_train` is stopped at the budget, equimd's trainer gets the budget left after its
start-up as `max_wall_time`. Reported: the validation force MAE (meV/Å) of each run's best
validation-loss model within the budget (equimd: best.pt's metrics; mace-torch: its log line of
the epoch with the lowest validation loss; both with EMA weights) and the epochs completed.

Results depend on the machine and its load; quote them with the device, threads and load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness as bench  # noqa: E402  (benchmarks/harness.py: systems, timing, workers)
import tp_core  # noqa: E402  (benchmarks/tp_core.py: the tensor-product core's FLOP/s)

PROCESS_START = time.monotonic()
PEER_PYTHON = ROOT / ".peers" / "mace" / "bin" / "python"
PEER_WORKER = ROOT / "benchmarks" / "peers" / "mace_bench_worker.py"
COMMON = dict(
    r_max=6.0,
    num_bessel=8,
    num_polynomial_cutoff=5,
    max_ell=3,
    correlation=3,
    num_interactions=2,
    MLP_irreps="16x0e",
    radial_MLP=[64, 64, 64],
    interaction_first="RealAgnosticResidualInteractionBlock",
    interaction="RealAgnosticResidualInteractionBlock",
)
# MACE-MP-0's 89 elements (Z 1-83 and 89-94): the one-hot width sets the cost of the
# element-dependent self-connection (skip_tp) and the size of the node embedding
MP0_ELEMENTS = [*range(1, 84), *range(89, 95)]
CONFIGS: dict[str, dict[str, Any]] = {
    "small": dict(COMMON, hidden_irreps="128x0e"),
    "medium": dict(COMMON, hidden_irreps="128x0e+128x1o"),
    # the published MACE-MP-0 medium architecture (2023-12-03-mace-128-L1): ScaleShiftMACE,
    # 128x0e+128x1o, max_ell 3, correlation 3, residual interactions, r_max 6, 89 elements
    "mp0_medium": dict(COMMON, hidden_irreps="128x0e+128x1o", atomic_numbers=MP0_ELEMENTS),
    # for CPU training comparisons in minutes rather than hours
    "tiny": dict(COMMON, hidden_irreps="32x0e", r_max=5.0, radial_MLP=[32, 32]),
}

# ----------------------------------------------------------------------------- (a) speed


def run_equimd_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Worker: time equimd's MACE imported from the peer's export file."""
    import torch

    from equimd.allocator import keep_freed_memory

    keep_freed_memory()  # as equimd's loaders and commands do (docs/performance.md)

    from equimd.potentials.data.configuration import Configuration
    from equimd.potentials.data.graph import configuration_to_graph
    from equimd.potentials.forcefield import ForceField
    from equimd.potentials.models.mace_import import mace_model_from_export, read_mace_export

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    # the peer's own `.model` file (read without mace-torch, as `equimd import mace` does)
    model = mace_model_from_export(read_mace_export(args.export), dtype=dtype)
    backend = bench.use_cpu_backend(model, args.backend)
    model.eval().requires_grad_(False)  # as deployed (the compiled backend's kernel: eval mode)
    atoms = bench.SYSTEMS[args.system]()
    graph = configuration_to_graph(Configuration.from_atoms(atoms), model.r_max, dtype=dtype)
    forcefield = ForceField(model)

    def evaluate() -> None:
        forcefield(graph)["forces"].sum().item()

    result: dict[str, Any] = {
        "implementation": "equimd" + (f"[{args.backend}]" if args.backend else ""),
        "tp_backend": backend,
        "atoms": len(atoms), "edges": int(graph.edge_index.shape[1]),
        "energy": float(forcefield(graph)["energy"][0]),
    }
    result.update(bench.measure(evaluate, args.repeats, args.warmup, args.quiet_load, args.max_wait))
    result["peak_rss_mb"] = round(bench.peak_rss_mb(), 1)
    if args.flops:
        result["tp_core"] = tp_core.measure_tp_core(model, graph, args.dtype)
    return result


def _format(result: dict[str, Any]) -> str:
    name = result.get("implementation", "?")
    if "error" in result:
        return f"{name:<14} ERROR {result['error'][:160]}"
    text = (
        f"{name:<14} {result['median_s'] * 1e3:>10.1f} {result['min_s'] * 1e3:>10.1f} "
        f"{result['peak_rss_mb']:>9.0f} {result['load_before']:>5.2f}/{result['load_during']:<5.2f}"
        f" E={result['energy']:.10f}"
    )
    if "ratio" in result:
        text += f"  ratio {result['ratio']:.2f}"
    return text + (f"  {tp_core.describe(result['tp_core'])}" if "tp_core" in result else "")


def speed(args: argparse.Namespace) -> dict[str, Any]:
    if not PEER_PYTHON.exists():
        raise SystemExit(
            f"no {PEER_PYTHON}: create it with `bash benchmarks/peers/setup_peers.sh mace` "
            "(mace-torch builds the weights both implementations run)"
        )
    common = [
        "--threads", str(args.threads), "--repeats", str(args.repeats),
        "--warmup", str(args.warmup), "--quiet-load", str(args.quiet_load),
        "--max-wait", str(args.max_wait),
    ]  # fmt: skip
    out_dir = Path(args.out)
    env = {"EQUIMD_BENCH_TIME_BUDGET": str(args.time_budget)}
    if args.thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    report: dict[str, Any] = {"settings": vars(args), "configs": CONFIGS, "results": []}
    print(
        f"{'implementation':<14} {'median ms':>10} {'min ms':>10} {'peak MiB':>9} {'load b/d':>11}"
        "  (energy + forces, model only; ratio = mace time / equimd time)"
    )
    for config in args.configs:
        for system in args.systems:
            model_dir = out_dir / f"{config}_{system}"
            made = bench.run_worker(
                [
                    str(PEER_PYTHON), str(PEER_WORKER), "make", "--system", system,
                    "--config-json", json.dumps(CONFIGS[config]), "--out", str(model_dir),
                    "--threads", str(args.threads),
                ],
                args.timeout,
                env,
            )  # fmt: skip
            if "error" in made:
                print(f"--- {config} | {system}: mace could not build the model: {made['error']}")
                continue
            for dtype in args.dtypes:
                print(
                    f"--- {config} | {system} ({made['atoms']} atoms, {made['edges']} edges) | {dtype}"
                )
                base = ["--system", system, "--dtype", dtype, *common]
                runs = [
                    [sys.executable, str(Path(__file__).resolve()), "--worker", "equimd",
                     "--export", made["model"], *base, *([] if args.no_flops else ["--flops"])],
                    [str(PEER_PYTHON), str(PEER_WORKER), "time", "--model", made["model"], *base],
                ]  # fmt: skip
                names = ["equimd", "mace"]
                if args.reference_backend:
                    runs.insert(1, runs[0] + ["--backend", "e3nn"])
                    names.insert(1, "equimd[e3nn]")
                results = []
                for name, command in zip(names, runs, strict=True):
                    result = bench.run_worker(command, args.timeout, env)
                    result.setdefault("implementation", name)  # error records carry none
                    result.update(config=config, system=system, dtype=dtype)
                    results.append(result)
                ours = results[0]
                for result in results[1:]:
                    if "error" not in result and "error" not in ours:
                        result["ratio"] = result["median_s"] / ours["median_s"]
                for result in results:
                    print(_format(result), flush=True)
                if dtype == "float64" and all("energy" in r for r in results):
                    spread = max(r["energy"] for r in results) - min(r["energy"] for r in results)
                    print(f"{'':14} float64 energies agree to {spread:.1e} eV (same weights)")
                report["results"].extend(results)
    return report


# ----------------------------------------------------------------------------- (b) training

MACE_LOG_LINE = re.compile(
    r"Epoch (\d+): head: \S+, loss=\s*([-\d.eE+]+), MAE_E_per_atom=\s*([\d.]+) meV, "
    r"MAE_F=\s*([\d.]+) meV / A"
)


def write_split(out_dir: Path, train_frames: int, valid_frames: int) -> dict[str, Any]:
    """The first `train_frames` / last `valid_frames` 3BPA frames with REF_energy/REF_forces
    keys, and the isolated-atom E0s."""
    import ase.io

    path = bench.data_dir() / "3bpa" / "train_300K.xyz"
    frames = ase.io.read(path, index=":")
    if train_frames + valid_frames > len(frames):
        raise SystemExit(f"only {len(frames)} frames in {path}")
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, subset in (("train", frames[:train_frames]), ("valid", frames[-valid_frames:])):
        plain = []
        for atoms in subset:
            copy = atoms.copy()
            copy.calc = None
            copy.info = {"REF_energy": atoms.get_potential_energy()}
            copy.arrays["REF_forces"] = atoms.get_forces()
            plain.append(copy)
        paths[name] = data_dir / f"{name}.xyz"
        ase.io.write(paths[name], plain, format="extxyz")
    e0s = {
        int(atoms.numbers[0]): float(atoms.get_potential_energy())
        for atoms in ase.io.read(bench.data_dir() / "3bpa" / "iso_atoms.xyz", index=":")
    }
    return {"train": str(paths["train"]), "valid": str(paths["valid"]), "e0s": e0s}


def run_equimd_training(args: argparse.Namespace) -> dict[str, Any]:
    """Worker: equimd's trainer with the budget left after this process's start-up."""
    import torch

    from equimd.checks import symbol
    from equimd.potentials.train.config import config_from_dict
    from equimd.potentials.train.trainer import train

    torch.set_num_threads(args.threads)
    job = json.loads(args.job_json)
    hyperparameters = {k: v for k, v in CONFIGS[job["config"]].items() if k != "atomic_numbers"}
    budget = job["seconds"] - (time.monotonic() - PROCESS_START)
    config = config_from_dict(
        {
            "data": {
                "train": job["train"], "valid": job["valid"],
                "energy_key": "REF_energy", "forces_key": "REF_forces", "stress_key": None,
                "e0s": {symbol(int(z)): e for z, e in job["e0s"].items()},
            },
            "model": {"model_type": "mace", **hyperparameters},
            "training": {
                "epochs": 1_000_000, "max_wall_time": max(budget, 1.0),
                "batch_size": job["batch_size"], "lr": 0.01, "optimizer": "amsgrad",
                "weight_decay": 5e-7, "scheduler_factor": 0.8, "scheduler_patience": 50,
                "ema_decay": 0.99, "energy_weight": 1.0, "forces_weight": 100.0,
                "stress_weight": 0.0, "clip_grad_norm": 10.0, "seed": job["seed"],
                "dtype": job["dtype"], "device": "cpu",
            },
            "output": {"run_dir": job["run_dir"], "overwrite": True},
        }
    )  # fmt: skip
    result = train(config, progress=False)
    return {
        "implementation": "equimd",
        "forces_mae": result.final_metrics["forces_mae"],
        "energy_mae": result.final_metrics["energy_mae"],
        "epochs": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "wall_s": round(time.monotonic() - PROCESS_START, 1),
    }


def mace_train_command(job: dict[str, Any], threads: int) -> list[str]:
    """`mace.cli.run_train` with the same data, hyperparameters and optimiser settings."""
    cfg = CONFIGS[job["config"]]
    run_dir = Path(job["run_dir"])
    e0s = "{" + ", ".join(f"{z}: {e!r}" for z, e in sorted(job["e0s"].items())) + "}"
    return [
        str(PEER_PYTHON), "-m", "mace.cli.run_train",
        "--name", "bench", "--seed", str(job["seed"]), "--device", "cpu",
        "--default_dtype", job["dtype"],
        "--work_dir", str(run_dir), "--log_dir", str(run_dir / "logs"),
        "--checkpoints_dir", str(run_dir / "checkpoints"),
        "--results_dir", str(run_dir / "results"), "--model_dir", str(run_dir),
        "--train_file", job["train"], "--valid_file", job["valid"],
        "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--E0s", e0s,
        # ScaleShiftMACE: shift = mean interaction energy per atom, scale = force RMS (equimd's
        # statistics) and interaction_first as given ("MACE" forces a non-residual first layer
        # and shift 0)
        "--model", "ScaleShiftMACE", "--r_max", str(cfg["r_max"]),
        "--num_radial_basis", str(cfg["num_bessel"]),
        "--num_cutoff_basis", str(cfg["num_polynomial_cutoff"]),
        "--max_ell", str(cfg["max_ell"]), "--correlation", str(cfg["correlation"]),
        "--num_interactions", str(cfg["num_interactions"]),
        "--hidden_irreps", cfg["hidden_irreps"], "--MLP_irreps", cfg["MLP_irreps"],
        "--radial_MLP", json.dumps(cfg["radial_MLP"]),
        "--interaction_first", cfg["interaction_first"], "--interaction", cfg["interaction"],
        "--batch_size", str(job["batch_size"]), "--valid_batch_size", str(job["batch_size"]),
        "--lr", "0.01", "--amsgrad", "--weight_decay", "5e-7",
        "--scheduler", "ReduceLROnPlateau", "--lr_factor", "0.8", "--scheduler_patience", "50",
        "--ema", "--ema_decay", "0.99", "--loss", "weighted",
        "--energy_weight", "1.0", "--forces_weight", "100.0", "--clip_grad", "10.0",
        "--max_num_epochs", "1000000", "--eval_interval", "1", "--error_table", "PerAtomMAE",
        "--num_workers", "0",
    ]  # fmt: skip


def run_mace_training(job: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run mace-torch for the wall-clock budget, then stop it; parse its validation log."""
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "stdout.log"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            mace_train_command(job, threads), stdout=log, stderr=subprocess.STDOUT,
            cwd=run_dir, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            process.wait(timeout=job["seconds"])
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    evaluations = [
        {
            "epoch": int(m[1]),
            "loss": float(m[2]),
            "energy_mae": float(m[3]),
            "forces_mae": float(m[4]),
        }
        for m in MACE_LOG_LINE.finditer(log_path.read_text(errors="replace"))
    ]
    if not evaluations:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return {
            "implementation": "mace",
            "error": "no validation epoch in the budget: " + " | ".join(tail),
        }
    best = min(evaluations, key=lambda e: e["loss"])
    return {
        "implementation": "mace",
        "forces_mae": best["forces_mae"],
        "energy_mae": best["energy_mae"],
        "epochs": max(e["epoch"] for e in evaluations) + 1,
        "best_epoch": best["epoch"],
        "wall_s": round(time.monotonic() - started, 1),
        "log": str(log_path),
    }


def training(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out)
    split = write_split(out_dir, args.train_frames, args.valid_frames)
    job = dict(
        split,
        config=args.config,
        seconds=60.0 * args.minutes,
        batch_size=args.batch_size,
        dtype=args.dtype,
        seed=args.seed,
    )
    print(
        f"training {args.config} MACE ({CONFIGS[args.config]['hidden_irreps']}) on 3BPA: "
        f"{args.train_frames} train / {args.valid_frames} valid frames, {args.minutes:g} min each, "
        f"{args.dtype}, {args.threads} threads",
        flush=True,
    )
    results = []
    equimd_job = dict(job, run_dir=str(out_dir / "equimd"))
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", "train-equimd",
        "--job-json", json.dumps(equimd_job), "--threads", str(args.threads),
    ]  # fmt: skip
    result = bench.run_worker(command, job["seconds"] + 600.0, {"OMP_NUM_THREADS": str(args.threads)})
    results.append({"implementation": "equimd", **result})
    if PEER_PYTHON.exists():
        results.append(run_mace_training(dict(job, run_dir=str(out_dir / "mace")), args.threads))
    else:
        results.append({"implementation": "mace", "error": f"no {PEER_PYTHON}"})
    for result in results:
        if "error" in result:
            print(f"{result['implementation']:<8} ERROR {result['error'][:200]}")
        else:
            print(
                f"{result['implementation']:<8} validation force MAE {result['forces_mae']:.1f} meV/Å, "
                f"energy MAE {result['energy_mae']:.2f} meV/atom (best epoch {result['best_epoch']} "
                f"of {result['epochs']}, {result['wall_s']:.0f} s)"
            )
    return {"settings": vars(args), "config": CONFIGS[args.config], "results": results}


# ----------------------------------------------------------------------------- command line


def worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=("equimd", "train-equimd"))
    parser.add_argument("--export")
    parser.add_argument("--job-json")
    parser.add_argument("--system", choices=sorted(bench.SYSTEMS))
    bench.add_timing_arguments(parser)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--flops", action="store_true", help="also the TP core's FLOP/s")
    args = parser.parse_args(argv)
    if args.worker == "equimd":
        bench.emit(run_equimd_speed(args))
    else:
        bench.emit(run_equimd_training(args))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        worker(argv)
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("speed", help="energy + forces time on the same weights")
    p.add_argument("--configs", nargs="+", default=["small", "medium"], choices=sorted(CONFIGS))
    p.add_argument(
        "--systems", nargs="+", default=["water", "cu256"], choices=sorted(bench.SYSTEMS)
    )
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quiet-load", type=float, default=0.15, help="cores (default 0.15)")
    p.add_argument("--max-wait", type=float, default=120.0, help="s per measurement")
    p.add_argument("--timeout", type=float, default=3600.0, help="s per subprocess")
    p.add_argument("--reference-backend", action="store_true", help="also equimd[e3nn]")
    p.add_argument(
        "--time-budget", type=float, default=240.0,
        help="s per measurement: slow evaluations are timed fewer times, at least 5",
    )
    p.add_argument("--thp", action="store_true", help="THP_MEM_ALLOC_ENABLE=1 for every worker")
    p.add_argument("--no-flops", action="store_true", help="skip the TP core's FLOP/s (tp_core.py)")
    p.add_argument("--out", default=str(ROOT / "bench_out" / "mace_models"))
    p.add_argument("--json", default=str(ROOT / "bench_out" / "mace_speed.json"))
    p.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, 1 warm-up, no wait")

    t = commands.add_parser("train", help="validation force MAE for the same wall-clock budget")
    t.add_argument("--minutes", type=float, default=20.0, help="budget per implementation")
    t.add_argument("--config", default="small", choices=sorted(CONFIGS))
    t.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    t.add_argument("--train-frames", type=int, default=450)
    t.add_argument("--valid-frames", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=5)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=str(ROOT / "bench_out" / "mace_train"))
    t.add_argument("--json", default=str(ROOT / "bench_out" / "mace_train.json"))
    t.add_argument("--quick", action="store_true", help="smoke run: tiny model, 20 frames, 1 min")

    for command in (p, t):
        bench.add_data_argument(command)
    args = parser.parse_args(argv)
    bench.use_data_argument(args)
    if args.command == "speed":
        if args.quick:
            args.repeats, args.warmup, args.max_wait = 2, 1, 0.0
        report = speed(args)
    else:
        if args.quick:
            args.config, args.train_frames, args.valid_frames = "tiny", 20, 5
            args.minutes = min(args.minutes, 1.0)
        report = training(args)
    report["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    bench.write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
