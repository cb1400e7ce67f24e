"""Training throughput (frames/s) of equimd against mace-torch's and nequip's own training
steps, measured in the same run, and where equimd's step spends its time.

    python benchmarks/bench_training.py [--models nequip mace] [--datasets aspirin]
        [--dtypes float32 float64] [--frames 50] [--batch-size 5] [--steps 10] [--warmup 2]
        [--threads 2] [--quiet-load 0.15] [--max-wait 60] [--timeout 1800] [--no-peers]
        [--breakdown] [--data DIR] [--json bench_out/training.json] [--quick]

What one training step is, for every implementation: take the next batch of `--batch-size`
frames (collation / data loading included), energies and forces (forces by autograd with
`create_graph`), the loss w_E·⟨((Ê−E)/N)²⟩ + w_F·⟨(F̂−F)²⟩ with w_E = 1, w_F = 100, its backward
to the parameters, gradient-norm clipping at 10, an AMSGrad step (lr 0.01) and an EMA update
(decay 0.99). Each implementation runs its own code for it:

- equimd: the trainer's step (`potentials.train`: `collate_labelled` + `batch_to` +
  `TrainingRun.train_step`, the calls of `trainer.train`), on graphs built by the trainer's
  data preparation (`trainer._prepare_data`);
- mace-torch (`.peers/mace`): `mace.tools.train.take_step` with its `WeightedEnergyForcesLoss`,
  `torch_ema.ExponentialMovingAverage` and batches from its `torch_geometric` DataLoader
  (`benchmarks/peers/mace_training_worker.py`);
- nequip 0.19 (`.peers/nequip`): its `EMALightningModule.training_step` (loss from its
  `EnergyForceLoss` metrics), `backward`, clipping and `optimizer.step()`
  on batches from its own dataset/collate (`benchmarks/peers/nequip_training_worker.py`).

Models (`MODELS`), the same size on every side: "nequip" = NequIP l_max 2, 32 features (both
parities), 4 layers, r_max 5 Å, 8 Bessel, p 6, radial MLP 2×64 (equimd in nequip 0.19's form:
`nequip_hyperparameters`, last layer scalars only); "mace" = MACE small: 128x0e, max_ell 3,
correlation 3, 2 residual interactions, r_max 5 Å, radial MLP 3×64. Data (`DATASETS`): the first
`--frames` frames of rMD17 aspirin (21 atoms, `rmd17/rmd17_aspirin_train_01.npz`), or with
`--datasets water` the 192-atom RPBE-D3 water box (50 frames, periodic, batch size 1), written
once as extxyz (eV, Å) that every implementation reads; fixed E0s, the same everywhere.

Timing: `harness.measure` (after `--warmup` steps, wait up to `--max-wait` s for the foreign
load to fall below `--quiet-load` cores, then the median of `--steps` steps), one fresh
subprocess per (implementation, model, dataset, dtype), `--threads` torch threads.
frames/s = batch size / median step time. ratio = equimd frames/s / peer frames/s, both from
this run. The foreign load (cores used by other processes during the timed steps) is printed
per row: trust rows whose load is ~0.

`--breakdown` adds equimd's step split into phases (explicit timers around the same calls as
`TrainingRun.train_step`, medians over `--steps` further steps): data (collate + cast),
forward (until the potential returns its per-atom energies, a forward hook), force backward
(the rest of the `ForceField` call: autograd.grad with create_graph), param_backward (loss +
backward to the parameters), optimizer (clip + AMSGrad + EMA) and metrics.

A peer whose venv is missing (`bash benchmarks/peers/setup_peers.sh mace|nequip`) is skipped
with the reason printed; so is everything when the shared data are absent (`--data DIR`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness as bench  # noqa: E402  (benchmarks/harness.py: timing, load, workers)

# ----------------------------------------------------------------------------- what is compared

NEQUIP_KWARGS = dict(  # nequip 0.19 `NequIPGNNModel` keyword arguments
    l_max=2, num_features=32, num_layers=4, parity=True, num_bessels=8,
    polynomial_cutoff_p=6, radial_mlp_depth=2, radial_mlp_width=64,
)  # fmt: skip
MACE_KWARGS = dict(  # mace-torch `ScaleShiftMACE` arguments (equimd's MACE takes the same names)
    num_bessel=8, num_polynomial_cutoff=5, max_ell=3, correlation=3, num_interactions=2,
    hidden_irreps="128x0e", MLP_irreps="16x0e", radial_MLP=[64, 64, 64],
    interaction_first="RealAgnosticResidualInteractionBlock",
    interaction="RealAgnosticResidualInteractionBlock",
)  # fmt: skip
MODELS: dict[str, dict[str, Any]] = {
    "nequip": {"r_max": 5.0, "peer": "nequip", "kwargs": NEQUIP_KWARGS},
    "mace": {"r_max": 5.0, "peer": "mace", "kwargs": MACE_KWARGS},
}
# the optimisation settings of every implementation's step
TRAINING = dict(
    lr=0.01, ema_decay=0.99, clip_grad_norm=10.0, energy_weight=1.0, forces_weight=100.0
)
# per-species reference energies (eV), the same for every implementation (their values do not
# change the cost of a step)
E0S = {"H": -13.6, "C": -1029.0, "O": -2041.0}
DATASETS: dict[str, dict[str, Any]] = {
    "aspirin": {"file": "rmd17/rmd17_aspirin_train_01.npz", "energy_unit": "kcal/mol",
                "energy_key": "energies", "forces_key": "forces", "batch_size": None,
                "elements": ["H", "C", "O"]},
    "water": {"file": "water_rpbe_d3/test-H2O_RPBE-D3.xyz", "energy_unit": "eV",
              "energy_key": "energy", "forces_key": "forces", "batch_size": 1,
              "elements": ["H", "O"]},
}  # fmt: skip
PHASES = ("data", "forward", "force_backward", "param_backward", "optimizer", "metrics")


def equimd_hyperparameters(model: str, species: list[str]) -> dict[str, Any]:
    """equimd's hyperparameters for `MODELS[model]` (without species and avg_num_neighbors,
    which the trainer sets from the data)."""
    spec = MODELS[model]
    if model == "mace":
        return {"r_max": spec["r_max"], **spec["kwargs"]}
    from equimd.potentials.models.nequip_mapping import nequip_hyperparameters

    hyperparameters = nequip_hyperparameters(
        {"_target_": "nequip.model.NequIPGNNModel", "type_names": species,
         "r_max": spec["r_max"], "avg_num_neighbors": 1.0, **spec["kwargs"]}
    )  # fmt: skip
    for key in ("species", "avg_num_neighbors"):
        hyperparameters.pop(key)
    return hyperparameters


def write_frames(dataset: str, frames: int, out_dir: Path) -> Path:
    """The first `frames` frames of `dataset` as extxyz (REF_energy eV, REF_forces eV/Å),
    read by every implementation; written once."""
    spec = DATASETS[dataset]
    path = out_dir / f"{dataset}_{frames}.xyz"
    if path.exists():
        return path
    from equimd.potentials.data.io import DatasetKeys, read_configurations

    keys = DatasetKeys(
        energy_key=spec["energy_key"], forces_key=spec["forces_key"], stress_key=None,
        energy_unit=spec["energy_unit"], require_energy=True, require_forces=True,
    )  # fmt: skip
    configs = read_configurations(bench.data_dir() / spec["file"], keys, f":{frames}")
    return bench.write_labelled_extxyz(configs, path)


# ----------------------------------------------------------------------------- equimd worker


class EquimdTraining:
    """equimd's training objects for one job: the trainer's data preparation and `TrainingRun`,
    and `step()`, the trainer's optimisation step on the next batch (cycling through the
    frames in a fixed order)."""

    def __init__(self, job: dict[str, Any]) -> None:
        import torch

        from equimd.potentials.train.config import config_from_dict
        from equimd.potentials.train.distributed import Ranks
        from equimd.potentials.train.loss import LossWeights
        from equimd.potentials.train.run_state import TrainingRun
        from equimd.potentials.train.trainer import _prepare_data

        torch.set_num_threads(job["threads"])
        self.dtype = getattr(torch, job["dtype"])
        self.device = torch.device("cpu")
        config = config_from_dict(
            {
                "data": {"train": job["frames"], "valid": job["frames"], "valid_index": ":1",
                         "energy_key": "REF_energy", "forces_key": "REF_forces",
                         "stress_key": None, "e0s": dict(job["e0s"])},
                "model": {"model_type": job["model"], "tp_backend": job.get("tp_backend"),
                          **job["hyperparameters"]},
                "training": {"batch_size": job["batch_size"], "lr": TRAINING["lr"],
                             "optimizer": "amsgrad", "ema_decay": TRAINING["ema_decay"],
                             "clip_grad_norm": TRAINING["clip_grad_norm"],
                             "energy_weight": TRAINING["energy_weight"],
                             "forces_weight": TRAINING["forces_weight"], "stress_weight": 0.0,
                             "dtype": job["dtype"], "device": "cpu", "seed": 0},
                # nothing is written: the run directory is never created
                "output": {"run_dir": str(Path(tempfile.gettempdir()) / "equimd_bench_training")},
            }
        )  # fmt: skip
        data = _prepare_data(config, None, self.dtype, Ranks())
        hyperparameters = dict(config.model.hyperparameters)
        hyperparameters.setdefault("avg_num_neighbors", data.statistics.avg_num_neighbors)
        self.graphs = data.train_graphs
        self.run = TrainingRun(config, data.statistics, hyperparameters, self.device, self.dtype)
        self.weights = LossWeights(TRAINING["energy_weight"], TRAINING["forces_weight"], 0.0)
        self.clip = TRAINING["clip_grad_norm"]
        size = job["batch_size"]
        batches = [
            list(range(start, min(start + size, len(self.graphs))))
            for start in range(0, len(self.graphs) - size + 1, size)
        ]
        self.batches = itertools.cycle(batches)
        self.edges = sum(int(g.graph.edge_index.shape[1]) for g in self.graphs) / len(self.graphs)
        self.atoms = sum(int(g.graph.numbers.shape[0]) for g in self.graphs) / len(self.graphs)
        self.parameters = sum(p.numel() for p in self.run.model.parameters())

    def batch(self, indices: list[int]):
        from equimd.potentials.train.batching import batch_to, collate_labelled

        return batch_to(
            collate_labelled([self.graphs[i] for i in indices]), self.device, self.dtype
        )

    def step(self) -> float:
        """The trainer's step (`trainer._train.step_batch`, one process) on the next batch."""
        return self.run.train_step(self.batch(next(self.batches)), self.weights, self.clip)

    def phase_step(self) -> dict[str, float]:
        """`TrainingRun.train_step` on the next batch, phase by phase with explicit timers (s);
        the forward ends when the potential returns its per-atom energies (a forward hook), the
        force backward is the rest of the `ForceField` call (energy sum, autograd.grad)."""
        import torch

        from equimd.potentials.train.loss import weighted_loss

        run, times = self.run, {}
        clock = time.perf_counter
        start = clock()
        batch = self.batch(next(self.batches))
        times["data"] = clock() - start
        run.model.train()
        energies_done: list[float] = []
        hook = run.model.register_forward_hook(lambda *_: energies_done.append(clock()))
        try:
            start = clock()
            predictions = run.train_forcefield(batch.graph, compute_forces=True, training=True)
            end = clock()
        finally:
            hook.remove()
        times["forward"] = energies_done[0] - start
        times["force_backward"] = end - energies_done[0]
        start = clock()
        loss = weighted_loss(predictions, batch, self.weights)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        times["param_backward"] = clock() - start
        start = clock()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), self.clip)
        run.optimizer.step()
        if run.ema is not None:
            run.ema.update(run.model)
        times["optimizer"] = clock() - start
        start = clock()
        run.train_errors.update(predictions, batch)
        float(loss.detach())
        times["metrics"] = clock() - start
        return times


def breakdown(training: EquimdTraining, steps: int) -> dict[str, float]:
    """Median seconds per phase of `steps` phase-timed steps (see `EquimdTraining.phase_step`)."""
    samples = [training.phase_step() for _ in range(steps)]
    return {phase: statistics.median(s[phase] for s in samples) for phase in PHASES}


def run_equimd(job: dict[str, Any], timing: argparse.Namespace) -> dict[str, Any]:
    """Worker: frames/s of equimd's training step (and, with `job["breakdown"]`, its phases)."""
    from equimd.allocator import keep_freed_memory

    keep_freed_memory()  # as the trainer does (docs/performance.md)
    training = EquimdTraining(job)
    result: dict[str, Any] = {
        "implementation": "equimd",
        "atoms": training.atoms,
        "edges": training.edges,
        "parameters": training.parameters,
    }
    result.update(
        bench.measure(
            training.step, timing.repeats, timing.warmup, timing.quiet_load, timing.max_wait
        )
    )
    result["frames_per_s"] = job["batch_size"] / result["median_s"]
    if job.get("breakdown"):
        result["breakdown"] = breakdown(training, timing.repeats)
    result["peak_rss_mb"] = round(bench.peak_rss_mb(), 1)
    return result


# ----------------------------------------------------------------------------- orchestration


def peer_worker(name: str) -> Path:
    return ROOT / "benchmarks" / "peers" / f"{name}_training_worker.py"


def _format(result: dict[str, Any]) -> str:
    name = result.get("implementation", "?")
    if "error" in result:
        return f"  {name:<8} skipped: {result['error'][:200]}"
    text = (
        f"  {name:<8} {result['frames_per_s']:>9.2f} {result['median_s'] * 1e3:>10.1f} "
        f"{result.get('parameters', 0):>9} {result['load_before']:>5.2f}/{result['load_during']:<5.2f}"
    )
    if "ratio" in result:
        text += f"  equimd/{name} = {result['ratio']:.2f}"
    return text


def _format_breakdown(phases: dict[str, float]) -> str:
    total = sum(phases.values())
    parts = [
        f"{phase} {seconds * 1e3:.1f} ms ({100 * seconds / total:.0f}%)"
        for phase, seconds in phases.items()
    ]
    return "  breakdown: " + ", ".join(parts) + f"; sum {total * 1e3:.1f} ms"


def measure_all(args: argparse.Namespace, out_dir: Path) -> list[dict[str, Any]]:
    timing = [
        "--threads", str(args.threads), "--repeats", str(args.steps), "--warmup", str(args.warmup),
        "--quiet-load", str(args.quiet_load), "--max-wait", str(args.max_wait),
    ]  # fmt: skip
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows: list[dict[str, Any]] = []
    print(
        f"  {'':<8} {'frames/s':>9} {'step ms':>10} {'params':>9} {'load b/d':>11}"
        "   (energy + forces loss, backward, AMSGrad + EMA; ratio: equimd frames/s / peer's)"
    )
    for dataset, model, dtype in itertools.product(args.datasets, args.models, args.dtypes):
        frames = write_frames(dataset, args.frames, out_dir)
        batch_size = DATASETS[dataset]["batch_size"] or args.batch_size
        elements = DATASETS[dataset]["elements"]
        job = {
            "model": model, "frames": str(frames), "batch_size": batch_size, "dtype": dtype,
            "threads": args.threads, "r_max": MODELS[model]["r_max"], "kwargs": MODELS[model]["kwargs"],
            "e0s": {element: E0S[element] for element in elements},
            "training": TRAINING, "breakdown": args.breakdown,
            "hyperparameters": equimd_hyperparameters(model, elements),
        }  # fmt: skip
        print(
            f"--- {model} | {dataset} ({args.frames} frames, batch {batch_size}) | {dtype}",
            flush=True,
        )
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "equimd",
                   "--job-json", json.dumps(job), *timing]  # fmt: skip
        ours = bench.run_worker(command, args.timeout, env)
        ours.setdefault("implementation", "equimd")
        results = [ours]
        peer = MODELS[model]["peer"]
        python = bench.peer_python(peer)
        if args.no_peers:
            pass
        elif not python.exists():
            results.append(
                {
                    "implementation": peer,
                    "error": f"no {python} (create it with "
                    f"`bash benchmarks/peers/setup_peers.sh {peer}`)",
                }
            )
        else:
            command = [str(python), str(peer_worker(peer)), "--job-json", json.dumps(job), *timing]
            theirs = bench.run_worker(command, args.timeout, env)
            theirs.setdefault("implementation", peer)
            if "error" not in theirs and "error" not in ours:
                theirs["ratio"] = ours["frames_per_s"] / theirs["frames_per_s"]
            results.append(theirs)
        for result in results:
            result.update(model=model, dataset=dataset, dtype=dtype, batch_size=batch_size)
            print(_format(result), flush=True)
        if "breakdown" in ours:
            print(_format_breakdown(ours["breakdown"]), flush=True)
        rows.extend(results)
    return rows


def code_version() -> str:
    """The commit measured, with "+changes" when tracked files differ from it."""
    import subprocess

    def git(*arguments: str) -> str:
        done = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def data_missing(args: argparse.Namespace) -> str | None:
    for dataset in args.datasets:
        path = bench.data_dir() / DATASETS[dataset]["file"]
        if not path.exists():
            return f"{path} not found (name the shared datasets with --data DIR)"
    return None


# ----------------------------------------------------------------------------- command line


def worker(argv: list[str]) -> None:
    args, job = bench.job_arguments("equimd's training-step worker", argv, worker="equimd")
    bench.emit(run_equimd(job, args))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        worker(argv)
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=["aspirin"], choices=list(DATASETS))
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "float64"], choices=("float32", "float64")
    )
    parser.add_argument("--frames", type=int, default=50, help="frames of the dataset (default 50)")
    parser.add_argument("--batch-size", type=int, default=5, help="aspirin (water: 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet-load", type=float, default=0.15, help="cores (default 0.15)")
    parser.add_argument("--max-wait", type=float, default=60.0, help="s per measurement")
    parser.add_argument("--timeout", type=float, default=1800.0, help="s per subprocess")
    parser.add_argument("--no-peers", action="store_true", help="equimd only")
    parser.add_argument("--breakdown", action="store_true", help="equimd's step by phase")
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "training"))
    parser.add_argument("--json", default=str(ROOT / "bench_out" / "training.json"))
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3 steps, 1 warm-up, no wait"
    )
    bench.add_data_argument(parser)
    args = parser.parse_args(argv)
    bench.use_data_argument(args)
    if args.quick:
        args.steps, args.warmup, args.max_wait = 3, 1, 0.0
    report: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": MODELS, "training": TRAINING, "e0s": E0S,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "code": code_version(),
    }  # fmt: skip
    missing = data_missing(args)
    if missing:
        print(f"skipped: {missing}")
        report["skipped"] = missing
        return report
    print(f"equimd {report['code']}, {args.threads} thread(s), {report['date']}")
    window = bench.LoadWindow()
    report["results"] = measure_all(args, Path(args.out))
    report["foreign_load_whole_run"] = round(window.foreign_cores(), 3)
    print(f"foreign load over the whole run: {report['foreign_load_whole_run']:.2f} cores")
    bench.write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
