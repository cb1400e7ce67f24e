"""Accuracy at an equal compute budget: every registered model trained on the same frames.

    python benchmarks/bench_accuracy.py [--models all] [--datasets default] [--cpu-minutes 2]
        [--threads 1] [--jobs 2] [--test-stride 5] [--data DIR] [--out runs/accuracy]
        [--results benchmarks/results/accuracy.json] [--force]

Protocol (one "cell" = one model on one dataset):

- The model and its training recipe are those of the model's example config,
  `examples/train_<model>.yaml` (its `model` and `training` sections, as a user starts from
  them); only the data, the budget, the device (CPU) and the output folder are replaced.
- Budget: `training.max_cpu_time` = `--cpu-minutes` of CPU time of the training process with
  `--threads` torch threads (data loading and neighbor lists included, evaluation excluded).
  `--nproc N` (equimd cells) trains data-parallel in N processes under torchrun, exactly the
  batches of a one-process run (docs/training.md, "Several processes"); the budget is then the
  CPU time of each process (rank 0's clock stops all), so N processes of 1 thread with
  `--cpu-minutes 60` are 60 wall-minutes of N cores. Measured on rMD17 ethanol (NequIP, batch 5,
  2026-12-05): 2 processes × 1 thread took 36.5 s per epoch, one process with 2 threads 20.6 s
  (the ranks wait for each other at every step's all-reduce, with 3 and 2 frames of 9 atoms),
  so on small molecules prefer `--threads 2`; what pays on larger structures is not measured.
  CPU time, not wall-clock time, so that cells run side by side (`--jobs`) or next to other
  work on a shared machine get the same compute; the wall-clock time is recorded too.
- Model selection: the best checkpoint by validation loss (EMA weights), evaluated once on the
  test frames.
- Datasets (`--data DIR`, default ``../shared/data`` beside the repository; SOURCE.md there):
    aspirin, ethanol  rMD17 split 01: the first 950 frames of `*_train_01` train, the last 50
                      validate; test on `*_test_01` (every `--test-stride`-th frame); kcal/mol.
    3bpa              3BPA `train_300K.xyz`: frames 0-399 train, 400-449 validate, 450-499 test
                      (300 K); a second test, "mixedT", is `train_mixedT.xyz` (300/600/1200 K)
                      without the frames it shares with `train_300K.xyz`. The published
                      300/600/1200 K test files are not in the shared data (its SOURCE.md).
    zuo_<El>          Zuo et al. 2020 (mlearn) crystals, El in Cu Ge Li Mo Ni Si:
                      `<El>_train.xyz` (10 % held out for validation), test `<El>_test.xyz`;
                      batch size 2 (cells of up to 108 atoms), else the example's recipe.
- `--datasets default` = aspirin, ethanol and 3bpa for every model, plus matformer_mlearn on the
  six Zuo crystals. Models: registered types, a variant named by its `examples/train_<name>.yaml`
  (matformer_mlearn: Matformer on its published graph, docs/architectures/matformer.md), a peer.

Every cell runs in its own process (`--cell`); its folder `<out>/<dataset>/<model>/` holds the
run (config.yaml, metrics.csv, learning_curves.png, best.pt), the test predictions and parity
plots, `log.txt` and `result.json`. A cell whose result.json exists for the same budget and
threads, or that the `--results` file already holds for them, is not run again (`--force`
reruns): an interrupted table resumes, also in a fresh clone from the committed results file.
`--collect` runs nothing and only gathers what is done. `--refit-energy-reference` runs no training: it
gives finished equimd cells trained before the trainer refitted the energy reference at the
end of a run (`potentials.train.energy_reference`) that refit now, as best_refit.pt, and
tests them again (the earlier scores stay in the result as `tests_before_refit`). At the end the results of the planned
cells replace their entries in `--results` (JSON; the file's other cells are kept) and are
printed as a Markdown table: force MAE (meV/Å) and energy MAE (meV per molecule for molecules,
meV/atom for crystals).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cell_scoring import refit_cell, score_tests  # noqa: E402
from harness import ROOT, add_data_argument, data_dir, git_commit, use_data_argument  # noqa: E402
from peer_cells import PEERS, is_peer, run_peer_cell  # noqa: E402

ZUO_ELEMENTS = ("Cu", "Ge", "Li", "Mo", "Ni", "Si")
MATFORMER_PUBLISHED = "matformer_mlearn"  # examples/train_matformer_mlearn.yaml: the published graph
MOLECULES = ("aspirin", "ethanol", "3bpa")


@dataclass
class TestSet:
    """One test file (or frame selection of one) of a dataset."""

    label: str
    file: Path
    index: str = ":"


@dataclass
class Dataset:
    """Training/validation frames and test sets of one benchmark dataset (paths resolved)."""

    name: str
    data: dict[str, Any]  # the config's `data` section
    tests: list[TestSet] = field(default_factory=list)
    energy_unit: str = "eV"
    molecule: bool = True  # energy errors per molecule (else per atom)
    training: dict[str, Any] = field(default_factory=dict)  # overrides of the example's recipe


def rmd17(name: str, root: Path, test_stride: int) -> Dataset:
    train = root / "rmd17" / f"rmd17_{name}_train_01.npz"
    data = {"train": str(train), "train_index": ":950", "valid": str(train), "valid_index": "950:1000",
            "energy_unit": "kcal/mol"}
    test = TestSet("test_01", root / "rmd17" / f"rmd17_{name}_test_01.npz", f"::{test_stride}")
    return Dataset(name, data, [test], energy_unit="kcal/mol")


def bpa(root: Path, out: Path) -> Dataset:
    train = root / "3bpa" / "train_300K.xyz"
    data = {"train": str(train), "train_index": ":400", "valid": str(train), "valid_index": "400:450"}
    mixed = out / "3bpa" / "mixedT_heldout.xyz"
    if not mixed.exists():
        write_frames_not_in(root / "3bpa" / "train_mixedT.xyz", train, mixed)
    return Dataset("3bpa", data, [TestSet("300K", train, "450:500"), TestSet("mixedT", mixed)])


def zuo(element: str, root: Path) -> Dataset:
    folder = root / "zuo2020_mlearn"
    data = {"train": str(folder / f"{element}_train.xyz"), "valid_fraction": 0.1}
    # cells of up to 108 atoms: 2 per batch keeps a training step of the larger models (float64,
    # double backward) within a few GB on a shared 24 GB machine
    return Dataset(f"zuo_{element}", data, [TestSet("test", folder / f"{element}_test.xyz")], molecule=False,
                   training={"batch_size": 2})


def dataset(name: str, root: Path, out: Path, test_stride: int) -> Dataset:
    if name in ("aspirin", "ethanol"):
        return rmd17(name, root, test_stride)
    if name == "3bpa":
        return bpa(root, out)
    if name.startswith("zuo_") and name.removeprefix("zuo_") in ZUO_ELEMENTS:
        return zuo(name.removeprefix("zuo_"), root)
    raise SystemExit(f"bench_accuracy: unknown dataset {name!r} (aspirin, ethanol, 3bpa, "
                     + ", ".join(f"zuo_{e}" for e in ZUO_ELEMENTS) + ")")


def write_frames_not_in(source: Path, exclude: Path, target: Path) -> int:
    """Write the frames of `source` whose energy matches no frame of `exclude` (to 1e-8 eV) to
    `target` (extxyz, atomically); returns how many were dropped."""
    import ase.io

    seen = {round(atoms.get_potential_energy(), 8) for atoms in ase.io.read(exclude, ":")}
    frames = ase.io.read(source, ":")
    kept = [a for a in frames if round(a.get_potential_energy(), 8) not in seen]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.xyz")
    ase.io.write(partial, kept, format="extxyz")
    partial.replace(target)
    return len(frames) - len(kept)


def registered_models() -> list[str]:
    from equimd.potentials.models import MODELS

    return sorted(name for name, cls in MODELS.items() if cls.__module__.startswith("equimd."))


def plan(models: list[str], datasets: list[str]) -> list[tuple[str, str]]:
    """(model, dataset) cells; "all" models are the registered ones that have an example
    config, "default" datasets as in the module docstring."""
    if models == ["all"]:
        models = [m for m in registered_models() if example_config(m).exists()]
    if datasets == ["default"]:
        cells = [(m, d) for d in MOLECULES for m in models]
        if "matformer" in models:  # the paper's setting: its crystal graph on crystals
            cells += [(MATFORMER_PUBLISHED, f"zuo_{e}") for e in ZUO_ELEMENTS]
        return cells
    return [(m, d) for d in datasets for m in models]


def example_config(model: str) -> Path:
    return ROOT / "examples" / f"train_{model}.yaml"


def cell_config(model: str, data: Dataset, budget_s: float, run_dir: Path, recipe: str = "example",
                dtype: str | None = None) -> dict[str, Any]:
    """The config of one cell: the example's model and training sections, this dataset, the
    CPU budget. Recipe "cosine" adds the cosine schedule planned to the budget; "time-budget"
    what `equimd train --time-budget` sets (`schedule.plan_to_budget`: the cosine schedule and
    the late energy stage); `dtype` replaces the example's."""
    import yaml

    example = yaml.safe_load(example_config(model).read_text())
    training = dict(example.get("training") or {})
    training.update(data.training)
    if recipe == "cosine":
        training["schedule"] = "cosine"
    if dtype is not None:
        training["dtype"] = dtype
    training.update({"epochs": 1_000_000, "max_cpu_time": budget_s, "max_wall_time": None, "device": "cpu"})
    raw = {
        "data": dict(data.data),
        "model": dict(example["model"]),
        "training": training,
        "output": {"run_dir": str(run_dir), "overwrite": True},
    }
    if recipe == "time-budget":
        from equimd.potentials.train.config import config_from_dict
        from equimd.potentials.train.schedule import plan_to_budget

        planned = plan_to_budget(config_from_dict(raw).training, cpu_s=budget_s)
        training.update({key: getattr(planned, key) for key in ("schedule", "late_energy_weight", "late_stage_start")})
    return raw


def run_cell(args: argparse.Namespace) -> dict[str, Any]:
    """Train and test one (model, dataset) cell in this process; write its result.json."""
    import torch

    from equimd.potentials.train.config import config_from_dict
    from equimd.potentials.train.trainer import train

    torch.set_num_threads(args.threads)
    args.nproc = int(os.environ.get("WORLD_SIZE", "1"))  # > 1 under torchrun (`cell_command`)
    model, name = args.cell
    data = dataset(name, data_dir(), args.out, args.test_stride)
    folder = args.out / name / model
    budget_s = 60.0 * args.cpu_minutes
    common = {"model": model, "dataset": name, "cpu_budget_s": budget_s, "threads": args.threads,
              **({"nproc": args.nproc} if args.nproc > 1 else {}),
              "recipe": "peer" if is_peer(model) else recipe_label(args),
              "molecule": data.molecule, "machine": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d"), "commit": git_commit()}
    if is_peer(model):
        summary = {**common, **run_peer_cell(model, data, budget_s, args.threads, folder)}
        write_json(folder / "result.json", summary)
        return summary
    raw = cell_config(model, data, budget_s, folder / "run", args.recipe, args.dtype)
    wall, cpu = time.monotonic(), time.process_time()
    config = config_from_dict(raw)
    result = train(config, progress=False)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    if os.environ.get("RANK", "0") != "0":  # a data-parallel cell: rank 0 tests and writes
        return {}
    tests = score_tests(result.best_checkpoint, data, folder)
    summary = {
        **common, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "epochs": result.epochs_completed,
        "best_epoch": result.best_epoch, "stop_reason": result.stop_reason,
        "validation": result.final_metrics, "tests": tests, "config": raw, "torch": torch.__version__,
        "energy_reference_refit": {"after_the_run": False, "by_the_trainer": config.training.refit_energy_reference},
    }
    write_json(folder / "result.json", summary)
    return summary


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value, indent=1, default=str))
    partial.replace(path)


def write_results(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """Write `results` into `args.results`, replacing (in place) the file's entries of the same
    cells at this budget and thread count, and its failed entries of those cells; the file's
    other cells (models, datasets, budgets not run now) are kept: a fresh clone has no run
    folders to gather them from."""
    new: dict[tuple[str, str], dict[str, Any] | None] = {(r["model"], r["dataset"]): r for r in results}
    merged: list[dict[str, Any]] = []
    if args.results.exists():
        for entry in json.loads(args.results.read_text()):
            cell = (entry["model"], entry["dataset"])
            if cell in new and ("error" in entry or same_budget(entry, args)):
                if new[cell] is not None:
                    merged.append(new[cell])
                    new[cell] = None
            else:
                merged.append(entry)
    merged += [r for r in new.values() if r is not None]
    write_json(args.results, merged)


def recipe_label(args: argparse.Namespace) -> str:
    """The equimd cells' recipe as recorded: "example", "time-budget", with "+float32" etc.
    when `--dtype` replaces the example's."""
    return args.recipe + (f"+{args.dtype}" if args.dtype else "")


def same_budget(result: dict[str, Any], args: argparse.Namespace) -> bool:
    recipe = "peer" if is_peer(result.get("model", "")) else recipe_label(args)
    return (result.get("cpu_budget_s") == 60.0 * args.cpu_minutes and result.get("threads") == args.threads
            and result.get("nproc", 1) == args.nproc
            and result.get("recipe", "example") == recipe)


def finished(folder: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """The cell's result if it ran with this budget and thread count."""
    path = folder / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if same_budget(result, args) else None


def recorded(args: argparse.Namespace) -> dict[tuple[str, str], dict[str, Any]]:
    """The cells the `--results` file holds for this budget and thread count."""
    if args.results is None or not args.results.exists():
        return {}
    return {(r["model"], r["dataset"]): r for r in json.loads(args.results.read_text())
            if "error" not in r and same_budget(r, args)}


def run_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every cell of the plan (`--jobs` at a time, each in its own process)."""
    cells = plan(args.models, args.datasets)
    for _, name in cells:  # test files (3BPA's held-out mixedT) are written once, before the pool
        dataset(name, data_dir(), args.out, args.test_stride)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    queue = []
    earlier = {} if args.force else recorded(args)
    for model, name in cells:
        done = None if args.force else finished(args.out / name / model, args) or earlier.get((model, name))
        if done is not None:
            results[(model, name)] = done
        elif not args.collect:
            queue.append((model, name))
    print(f"bench_accuracy: {len(cells)} cells, {len(results)} already done, {len(queue)} to run "
          f"({args.cpu_minutes:g} CPU-min each, {args.threads} thread(s)"
          + (f" x {args.nproc} processes" if args.nproc > 1 else "")
          + f", {args.jobs} at a time)", flush=True)
    running: list[tuple[tuple[str, str], subprocess.Popen, Any, float]] = []
    started = time.monotonic()
    done_count = 0
    while queue or running:
        while queue and len(running) < args.jobs:
            model, name = queue.pop(0)
            folder = args.out / name / model
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / "log.txt", "w")
            command = cell_command(args, model, name)
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append(((model, name), process, log, time.monotonic()))
        time.sleep(1.0)
        for entry in list(running):
            (model, name), process, log, cell_started = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            log.close()
            done_count += 1
            folder = args.out / name / model
            result = finished(folder, args) if process.returncode == 0 else None
            elapsed = (time.monotonic() - started) / 60
            if result is None:
                tail = (folder / "log.txt").read_text().strip().splitlines()[-3:]
                print(f"[{done_count}] {model} on {name}: FAILED (exit {process.returncode}); "
                      f"{folder / 'log.txt'}: {' | '.join(tail)}", flush=True)
                results[(model, name)] = {"model": model, "dataset": name, "error": " | ".join(tail)}
                continue
            results[(model, name)] = result
            print(f"[{done_count}] {model} on {name}: {cell_line(result)} "
                  f"({result['epochs']} epochs, {time.monotonic() - cell_started:.0f} s; {elapsed:.0f} min so far)",
                  flush=True)
    return [results[cell] for cell in cells if cell in results]


def cell_command(args: argparse.Namespace, model: str, name: str) -> list[str]:
    """The subprocess that trains and tests one cell: this script with `--cell`, under torchrun
    (`torch.distributed.run --standalone`) for an equimd cell with `--nproc` > 1."""
    cell = [__file__, "--cell", model, name, "--cpu-minutes", str(args.cpu_minutes),
            "--recipe", args.recipe, *(["--dtype", args.dtype] if args.dtype else []),
            "--threads", str(args.threads), "--test-stride", str(args.test_stride),
            "--out", str(args.out), "--data", str(data_dir())]
    if args.nproc > 1 and not is_peer(model):
        # the ranks read WORLD_SIZE: torchrun's parser would take a --nproc after the script
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={args.nproc}", *cell]
    return [sys.executable, *cell]


def energy_error(result: dict[str, Any], label: str) -> float:
    """The table's energy MAE of one test: meV per molecule for molecules, meV/atom for crystals."""
    metrics = result["tests"][label]
    return metrics["energy_total_mae"] if result["molecule"] else metrics["energy_mae"]


def cell_line(result: dict[str, Any]) -> str:
    parts = []
    for label, metrics in result["tests"].items():
        energy = energy_error(result, label)
        unit = "meV" if result["molecule"] else "meV/atom"
        parts.append(f"{label}: F {metrics['forces_mae']:.1f} meV/Å, E {energy:.1f} {unit}")
    return "; ".join(parts)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """Rows: models; columns: dataset/test; cells: force MAE (meV/Å) / energy MAE."""
    columns: list[tuple[str, str]] = []
    for result in results:
        for label in result.get("tests", {}):
            if (result["dataset"], label) not in columns:
                columns.append((result["dataset"], label))
    models = list(dict.fromkeys(r["model"] for r in results))
    lookup = {(r["model"], r["dataset"]): r for r in results}
    header = "| model | " + " | ".join(f"{d} {t}" for d, t in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for model in models:
        row = [model]
        for name, label in columns:
            result = lookup.get((model, name))
            if result is None:
                row.append("")
            elif "error" in result:
                row.append("failed")
            else:
                row.append(f"{result['tests'][label]['forces_mae']:.1f} / {energy_error(result, label):.1f}")
        lines.append("| " + " | ".join(row) + " |")
    ratios = [peer_ratio(results, name, label) for name, label in columns]
    if any(ratios):
        lines.append("| best equimd / best peer | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def peer_ratio(results: list[dict[str, Any]], name: str, label: str) -> str:
    """'F x / E y': the lowest force (energy) MAE of equimd's cells over the lowest of the peers'
    cells on one test, from the same table ('' without cells of both)."""
    def lowest(peers: bool, error: Callable[[dict[str, Any]], float]) -> float | None:
        values = [error(r) for r in results if r["dataset"] == name and "error" not in r
                  and label in r.get("tests", {}) and is_peer(r["model"]) == peers]
        return min(values) if values else None

    ratios = []
    for short, error in (("F", lambda r: r["tests"][label]["forces_mae"]), ("E", lambda r: energy_error(r, label))):
        ours, theirs = lowest(False, error), lowest(True, error)
        if ours is None or theirs is None:
            return ""
        ratios.append(f"{short} {ours / theirs:.2f}")
    return " / ".join(ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["all"],
                        help="model types, or all (default: every registered model), and the peers "
                             + " ".join(PEERS))
    parser.add_argument("--recipe", choices=("example", "cosine", "time-budget"), default="example",
                        help="equimd cells: the example's training section as is, with the cosine "
                             "schedule planned to the budget, or with what `equimd train "
                             "--time-budget` sets (cosine and the late energy stage)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                        help="equimd cells: train in this dtype instead of the example's")
    parser.add_argument("--datasets", nargs="+", default=["default"],
                        help="aspirin ethanol 3bpa zuo_<El> ..., or default (see the docstring)")
    parser.add_argument("--cpu-minutes", type=float, default=2.0, help="CPU budget per cell (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="equimd cells: data-parallel training processes per cell (torchrun; "
                             "the budget is per process; default 1)")
    parser.add_argument("--jobs", type=int, default=2, help="cells run side by side (default 2)")
    parser.add_argument("--test-stride", type=int, default=5, help="rMD17: every k-th test_01 frame (default 5)")
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--results", type=Path, default=None, help="write all results here (JSON)")
    parser.add_argument("--force", action="store_true", help="rerun cells that have a result")
    parser.add_argument("--collect", action="store_true", help="run nothing; gather the finished cells")
    parser.add_argument("--refit-energy-reference", action="store_true",
                        help="run nothing; apply the end-of-run refit of the energy reference to "
                             "finished equimd cells trained before the trainer did it, and test again")
    parser.add_argument("--cell", nargs=2, metavar=("MODEL", "DATASET"), help=argparse.SUPPRESS)
    add_data_argument(parser)
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and any(is_peer(m) for m in args.models):
        parser.error("--nproc applies to equimd cells only: run the peers without it")
    use_data_argument(args)
    args.out = args.out.resolve()
    if not data_dir().is_dir():
        raise SystemExit(f"bench_accuracy: no shared datasets at {data_dir()} (give --data DIR)")
    if args.cell:
        run_cell(args)
        return
    if args.refit_energy_reference:
        args.collect = True
        for model, name in plan(args.models, args.datasets):
            folder = args.out / name / model
            done = finished(folder, args)
            if is_peer(model) or done is None or "energy_reference_refit" in done:
                continue  # cells run since the trainer refits say so in their result
            refitted = refit_cell(folder, dataset(name, data_dir(), args.out, args.test_stride), git_commit())
            write_json(folder / "result.json", refitted)
            print(f"{model} on {name}: refitted E0s; {cell_line(refitted)}", flush=True)
    results = run_table(args)
    table = markdown_table([r for r in results if r.get("dataset")])
    print(f"\nForce MAE (meV/Å) / energy MAE (meV per molecule; meV/atom for zuo_*), "
          f"{args.cpu_minutes:g} CPU-minutes per cell, {args.threads} thread(s), {time.strftime('%Y-%m-%d')}, "
          f"commit {git_commit()}\n\n{table}")
    (args.out / "table.md").write_text(table + "\n")
    if args.results is not None:
        write_results(args, results)
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
