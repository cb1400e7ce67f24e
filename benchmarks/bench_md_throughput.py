"""MD throughput (steps/s, ns/day at 1 fs) of equimd through OpenMM and ASE, next to the peers'
own ASE calculators on the same structure and model size, measured in the same run.

    python benchmarks/bench_md_throughput.py [--models mace nequip] [--systems water cu2048]
        [--dtypes float32 float64] [--steps 20] [--repeats 3] [--threads 2] [--platform CPU]
        [--no-peers] [--quiet-load 0.15] [--max-wait 120] [--timeout 3600] [--memory-mb 12288]
        [--out bench_out/md_throughput] [--json bench_out/md_throughput.json] [--data DIR]

Models (`MODELS`), the same size on both sides:
  mace    MACE small (`bench_mace.CONFIGS["small"]`: 128x0e, max_ell 3, correlation 3, 2 residual
          interactions, r_max 6 Å). The mace peer (`.peers/mace`) builds a seeded float64
          ScaleShiftMACE for the system's elements and saves it as mace.model
          (`peers/mace_bench_worker.py make`); equimd imports that file
          (`equimd.potentials.models.mace_import`, no mace-torch) and exports it, so both sides
          run the same weights (the initial energies are printed side by side). Without the
          peer, equimd runs its own MACE of the same hyperparameters with seeded random weights.
  nequip  NequIP l_max 2, 32 features (both parities), 4 layers, r_max 5 Å, 8 Bessel, p 6, radial
          MLP 2×64 (`bench_training.NEQUIP_KWARGS`; equimd in nequip 0.19's form, last layer
          scalars only). Each side has its own seeded random weights (same architecture and
          hyperparameters, not the same numbers).
Systems (`--systems`, `harness.SYSTEMS`): water = 192-atom liquid water box (frame 0 of
water_rpbe_d3), cu2048 = 2048-atom fcc Cu (also 3bpa, cu256).

Engines, each in a fresh subprocess per (model, system, dtype), `--threads` torch threads:
  equimd TorchForce     OpenMM LangevinMiddleIntegrator (300 K, 1/ps, 1 fs) with
                        openmmtorch.TorchForce on equimd's TorchScript export (`--platform`),
                        stepped inside `repeatable_execution()` as `equimd md` does
  ..., jit-opt          the same with TorchScript's default (optimising) executor, as a
                        script that steps a TorchForce without that guard
  equimd ASE VV         ase.md.VelocityVerlet (1 fs) with `EquimdCalculator` (stress off)
  mace ASE VV           the same integrator with mace-torch's `MACECalculator` on mace.model
                        (`peers/mace_md_worker.py`, `.peers/mace`; it computes the stress at
                        every step of a periodic cell, which it has no option to turn off)
  nequip ASE VV         the same with nequip 0.19's `NequIPCalculator` on an unsaved
                        `NequIPGNNModel` (`peers/nequip_md_worker.py`, `.peers/nequip`; its
                        default transforms: species mapper + nequip's neighbor list)
The equimd engines come from `bench_openmm.py` (`openmm_simulation`, `ase_dynamics`,
`timed_blocks`). Every engine includes the neighbor list at every step (equimd's in-graph cell
list; the peers' calculators build theirs). ASE runs start from Maxwell-Boltzmann velocities at
300 K (seed 0); OpenMM from `setVelocitiesToTemperature(300 K, seed 1)`.

Timing, the same protocol everywhere: 3 steps, one warm-up block of `--steps` steps, then wait
(at most `--max-wait` s) for the foreign CPU load to fall below `--quiet-load` cores, then the
median of `--repeats` blocks of `--steps` steps. ms/step = median block / steps; ns/day =
steps/s × 86400 × 1 fs. Reported per row: ms/step, steps/s, ns/day, the foreign load
(cores busy with other processes, /proc/stat) before/during, the largest atom displacement
from the start (Å; a model with random weights may tear the structure apart, which changes the
neighbor count and so the cost) and ratio = peer step time / this row's step time (> 1:
equimd is faster), both from this run. A peer whose venv is absent is skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_mace  # noqa: E402  (MACE configurations)
import bench_openmm  # noqa: E402  (the equimd MD engines and their timing)
import bench_training  # noqa: E402  (NequIP hyperparameters, both sides)
import harness as bench  # noqa: E402  (benchmarks/harness.py: systems, load, workers)

TIMESTEP_FS = bench_openmm.TIMESTEP_FS
MODELS: dict[str, dict[str, Any]] = {
    "mace": {
        "description": "MACE small: 128x0e, max_ell 3, correlation 3, 2 interactions, r_max 6 Å",
        "r_max": bench_mace.CONFIGS["small"]["r_max"],
        "config": bench_mace.CONFIGS["small"],
        "peer": "mace",
    },
    "nequip": {
        "description": "NequIP l_max 2, 32 features, 4 layers, r_max 5 Å (nequip 0.19 form)",
        "r_max": bench_training.MODELS["nequip"]["r_max"],
        "kwargs": bench_training.NEQUIP_KWARGS,
        "peer": "nequip",
    },
}
# "torch" steps the Context inside `repeatable_execution()`, as `equimd md` does (TorchScript's
# optimising executor off); "torch-optimized" with TorchScript's default executor, as a script of
# one's own that steps a TorchForce without that guard.
ENGINES = {
    "torch": "equimd TorchForce",
    "torch-optimized": "equimd TorchForce, jit-opt",
    "ase": "equimd ASE VV",
}


def peer_md_worker(name: str) -> Path:
    return ROOT / "benchmarks" / "peers" / f"{name}_md_worker.py"


# ----------------------------------------------------------------------------- equimd side


def equimd_model(name: str, atoms, mace_file: str | None = None, **overrides: Any):
    """equimd's potential for `MODELS[name]` and the elements of `atoms` (float64, eval mode):
    the imported peer file `mace_file` if given, else seeded random weights (energies scaled
    to a few eV). `overrides` replace hyperparameters (the tests' tiny models)."""
    import torch

    from equimd.potentials.data.configuration import Configuration
    from equimd.potentials.data.graph import configuration_to_graph
    from equimd.potentials.models import build_model

    if mace_file is not None:
        from equimd.potentials.models.mace_import import mace_model_from_export, read_mace_export

        return mace_model_from_export(read_mace_export(mace_file), dtype=torch.float64)
    species = sorted({int(z) for z in atoms.numbers})
    if name == "mace":
        hyperparameters = {k: v for k, v in MODELS["mace"]["config"].items()}
    else:
        symbols = [atoms[[int(z) for z in atoms.numbers].index(z)].symbol for z in species]
        hyperparameters = bench_training.equimd_hyperparameters("nequip", symbols)
    hyperparameters.update(overrides)
    graph = configuration_to_graph(Configuration.from_atoms(atoms), hyperparameters["r_max"])
    torch.manual_seed(0)
    model = build_model(
        name, species=species, avg_num_neighbors=graph.edge_index.shape[1] / len(atoms),
        **hyperparameters,
    )  # fmt: skip
    model.scale_shift.set_statistics([0.0] * len(species), scale=0.1, shift=0.0)
    return model.eval()


def export_equimd(model, directory: Path, dtype: str) -> Path:
    """equimd's TorchScript export of `model` (what OpenMM and ASE load), with the compiled
    kernel where it is built here (`bench.cpu_backend`)."""
    from equimd.deploy.export import export_model

    directory.mkdir(parents=True, exist_ok=True)
    return export_model(model, directory / f"equimd_{dtype}.pt", dtype=dtype,
                        tp_backend=bench.cpu_backend())


def _max_displacement(start, end) -> float:
    import numpy as np

    return round(float(np.linalg.norm(np.asarray(end) - np.asarray(start), axis=1).max()), 3)


def equimd_md(model_path: Path, atoms, engine: str, settings: argparse.Namespace) -> dict:
    """Time `settings.steps`-step blocks of equimd MD (`engine`: "torch" = OpenMM TorchForce,
    "ase" = ASE VelocityVerlet), `bench_openmm`'s engines and protocol (3 steps, one warm-up
    block, wait for a quiet machine, median of `settings.repeats` blocks). settings: steps,
    repeats, platform, quiet_load, max_wait."""
    from equimd.md_drivers.ase import EquimdCalculator

    start = atoms.get_positions()
    probe = atoms.copy()
    probe.calc = EquimdCalculator(str(model_path), compute_stress=False)
    result: dict[str, Any] = {
        "implementation": "equimd",
        "engine": ENGINES[engine],
        "atoms": len(atoms),
        "energy": probe.get_potential_energy(),
    }
    if engine in ("torch", "torch-optimized"):
        from openmm import unit

        from equimd.deploy.load import repeatable_execution

        context, integrator = bench_openmm.openmm_simulation(
            model_path, atoms, "torch", settings.platform
        )
        with repeatable_execution() if engine == "torch" else contextlib.nullcontext():
            integrator.step(3)
            result.update(
                bench_openmm.timed_blocks(
                    lambda: integrator.step(settings.steps), settings.repeats, settings
                )
            )
        end = context.getState(getPositions=True).getPositions(asNumpy=True)
        result["max_displacement_A"] = _max_displacement(start, end.value_in_unit(unit.angstrom))
    elif engine == "ase":
        dynamics = bench_openmm.ase_dynamics(model_path, atoms)
        dynamics.run(3)
        result.update(
            bench_openmm.timed_blocks(
                lambda: dynamics.run(settings.steps), settings.repeats, settings
            )
        )
        result["max_displacement_A"] = _max_displacement(start, dynamics.atoms.get_positions())
    else:
        raise ValueError(f"unknown engine {engine!r}; use one of {sorted(ENGINES)}")
    result["steps"] = settings.steps
    result["peak_rss_mb"] = round(bench.peak_rss_mb(), 1)
    return result


# ----------------------------------------------------------------------------- the table


def throughput(result: dict[str, Any]) -> dict[str, Any]:
    """Add ms/step, steps/s and ns/day (1 fs steps) to a timed result."""
    per_step = result["median_s"] / result["steps"]
    result.update(
        ms_per_step=1e3 * per_step,
        steps_per_s=1.0 / per_step,
        ns_per_day=TIMESTEP_FS * 1e-6 * 86400.0 / per_step,
    )
    return result


def add_ratios(results: list[dict[str, Any]]) -> None:
    """ratio = peer step time / equimd step time, on every timed equimd row of a group whose
    peer row was timed."""
    peers = [r for r in results if r.get("implementation") != "equimd" and "error" not in r]
    if not peers:
        return
    for result in results:
        if result.get("implementation") == "equimd" and "error" not in result:
            result["ratio"] = peers[0]["ms_per_step"] / result["ms_per_step"]


HEADER = (
    f"{'model':<7} {'system':<7} {'dtype':<8} {'engine':<26} {'ms/step':>9} {'steps/s':>8} "
    f"{'ns/day':>8} {'load b/d':>10} {'max disp':>9} {'ratio':>6}"
)


def format_row(result: dict[str, Any]) -> str:
    head = (
        f"{result.get('model', ''):<7} {result.get('system', ''):<7} "
        f"{result.get('dtype', ''):<8} {result.get('engine', '?'):<26}"
    )
    if "error" in result:
        return f"{head} skipped: {result['error'][:200]}"
    ratio = f"{result['ratio']:6.2f}" if "ratio" in result else f"{'':>6}"
    return (
        f"{head} {result['ms_per_step']:9.1f} {result['steps_per_s']:8.3f} "
        f"{result['ns_per_day']:8.4f} {result['load_before']:4.2f}/{result['load_during']:<5.2f}"
        f" {result.get('max_displacement_A', float('nan')):7.2f} Å {ratio}"
    )


# ----------------------------------------------------------------------------- orchestration


def _timing_options(args: argparse.Namespace, dtype: str, system: str) -> list[str]:
    return [
        "--system", system, "--dtype", dtype, "--threads", str(args.threads),
        "--steps", str(args.steps), "--repeats", str(args.repeats),
        "--quiet-load", str(args.quiet_load), "--max-wait", str(args.max_wait),
    ]  # fmt: skip


def make_mace_file(system: str, args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The peer's mace.model for `system` (path, None) or (None, reason)."""
    python = bench.peer_python("mace")
    if args.no_peers or not python.exists():
        return None, "--no-peers" if args.no_peers else f"no {python.parent.parent}"
    made = bench.run_worker(
        [str(python), str(ROOT / "benchmarks" / "peers" / "mace_bench_worker.py"), "make",
         "--system", system, "--config-json", json.dumps(MODELS["mace"]["config"]),
         "--out", str(Path(args.out) / f"mace_{system}"), "--threads", str(args.threads)],
        args.timeout, memory_mb=args.memory_mb,
    )  # fmt: skip
    if "error" in made:
        return None, f"mace could not build the model: {made['error']}"
    return made["model"], None


def run_peer(
    name: str, system: str, dtype: str, args: argparse.Namespace, mace_file: str | None
) -> dict[str, Any]:
    engine = f"{name} ASE VV"
    python = bench.peer_python(MODELS[name]["peer"])
    if args.no_peers:
        return {"implementation": name, "engine": engine, "error": "--no-peers"}
    if not python.exists():
        return {
            "implementation": name,
            "engine": engine,
            "error": f"no {python.parent.parent} (bash benchmarks/peers/setup_peers.sh {name})",
        }
    if name == "mace":
        if mace_file is None:
            return {"implementation": name, "engine": engine, "error": "no mace.model"}
        model_options = ["--model", mace_file]
    else:
        model_options = [
            "--kwargs-json",
            json.dumps(MODELS[name]["kwargs"]),
            "--r-max",
            str(MODELS[name]["r_max"]),
        ]
    command = [
        str(python),
        str(peer_md_worker(name)),
        *model_options,
        *_timing_options(args, dtype, system),
    ]
    result = bench.run_worker(command, args.timeout, memory_mb=args.memory_mb)
    result.setdefault("implementation", name)
    result["engine"] = engine
    return result


def run_equimd(
    model_file: Path, engine: str, system: str, dtype: str, args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--model-file",
        str(model_file),
        "--engine",
        engine,
        "--platform",
        args.platform,
        *_timing_options(args, dtype, system),
    ]
    result = bench.run_worker(command, args.timeout, memory_mb=args.memory_mb)
    result.setdefault("implementation", "equimd")
    result["engine"] = ENGINES[engine]
    return result


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        **bench.run_stamp(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "models": {name: MODELS[name]["description"] for name in args.models},
        "results": [],
    }  # fmt: skip
    print(
        f"MD throughput, {TIMESTEP_FS:g} fs steps, {args.threads} threads, median of "
        f"{args.repeats} blocks of {args.steps} steps; load = foreign cores before/during; "
        "ratio = peer step time / equimd step time",
        flush=True,
    )
    print(HEADER, flush=True)
    for system in args.systems:
        atoms = bench.SYSTEMS[system]()
        for name in args.models:
            mace_file, reason = make_mace_file(system, args) if name == "mace" else (None, None)
            if name == "mace" and mace_file is None:
                print(
                    f"# mace peer weights unavailable ({reason}): equimd runs its own seeded "
                    "MACE of the same size",
                    flush=True,
                )
            model = equimd_model(name, atoms, mace_file)
            for dtype in args.dtypes:
                model_file = export_equimd(model, Path(args.out) / f"{name}_{system}", dtype)
                group = [run_equimd(model_file, engine, system, dtype, args) for engine in ENGINES]
                group.append(run_peer(name, system, dtype, args, mace_file))
                for result in group:
                    result.update(model=name, system=system, dtype=dtype)
                    if "error" not in result:
                        throughput(result)
                add_ratios(group)
                for result in group:
                    print(format_row(result), flush=True)
                energies = [
                    f"{r['engine'].split()[0]} {r['energy']:.4f}"
                    for r in group
                    if "energy" in r and (r["engine"] == ENGINES["ase"] or r["implementation"] != "equimd")
                ]
                if len(energies) > 1:
                    same = "same weights" if mace_file else "different random weights"
                    print(f"#   initial energy (eV, {same}): " + ", ".join(energies), flush=True)
                report["results"].extend(group)
    return report


def worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--model-file", required=True)
    parser.add_argument("--engine", required=True, choices=sorted(ENGINES))
    parser.add_argument("--system", required=True, choices=sorted(bench.SYSTEMS))
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--steps", type=int, default=20)
    bench.add_timing_arguments(parser)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    atoms = bench.SYSTEMS[args.system]()
    bench.emit(equimd_md(Path(args.model_file), atoms, args.engine, args))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        worker(argv)
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--systems", nargs="+", default=["water"], choices=sorted(bench.SYSTEMS))
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=("float32", "float64"))
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--platform", default="CPU", help="OpenMM platform of TorchForce")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--quiet-load", type=float, default=0.15, help="cores (default 0.15)")
    parser.add_argument("--max-wait", type=float, default=120.0, help="s per measurement")
    parser.add_argument("--timeout", type=float, default=3600.0, help="s per subprocess")
    parser.add_argument(
        "--memory-mb", type=float, default=12288.0, help="resident memory cap per subprocess (MiB)"
    )
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "md_throughput"))
    parser.add_argument("--json", default=str(ROOT / "bench_out" / "md_throughput.json"))
    bench.add_data_argument(parser)
    args = parser.parse_args(argv)
    bench.use_data_argument(args)
    report = benchmark(args)
    bench.write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
