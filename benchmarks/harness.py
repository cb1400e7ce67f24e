"""Benchmark harness shared by every benchmark and by the peers' workers: the benchmark
systems, load-aware timing, the worker protocol and a memory-capped subprocess runner.

Imports only the standard library at module level (ase/numpy/torch inside functions), so a
peer's own venv can import it (`sys.path.insert(0, "benchmarks")`) and both sides are timed by
the same code.

Systems with real structures (3bpa, water) read the shared datasets from ``../shared/data``
beside the repository, or from the folder named by ``--data DIR`` / ``EQUIMD_DATA``; the
copper systems are generated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "


def data_dir() -> Path:
    """The shared datasets: `EQUIMD_DATA` if set, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("EQUIMD_DATA", ROOT.parent / "shared" / "data"))


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """`--data DIR`: where the shared datasets are (sets `EQUIMD_DATA` for the workers too)."""
    parser.add_argument(
        "--data", type=Path, default=None,
        help="folder of the shared datasets (default: ../shared/data beside the repository)",
    )


def use_data_argument(args: argparse.Namespace) -> None:
    if getattr(args, "data", None) is not None:
        os.environ["EQUIMD_DATA"] = str(args.data.resolve())


def write_labelled_extxyz(configs: list, path: Path) -> Path:
    """equimd `Configuration`s as extxyz with their labels under `REF_energy` (eV) and
    `REF_forces` (eV/Å), the keys every peer's reader is given (plain `energy`/`forces` would
    become an ASE calculator), written atomically; returns `path`."""
    import ase.io
    import numpy as np

    frames = []
    for config in configs:
        atoms = config.to_atoms()
        atoms.info = {"REF_energy": float(config.energy)}
        atoms.arrays["REF_forces"] = np.asarray(config.forces, dtype=float)
        frames.append(atoms)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.xyz")
    ase.io.write(partial, frames, format="extxyz")
    partial.replace(path)
    return path


def cpu_backend(requested: str | None = None) -> str | None:
    """The convolution backend of equimd's timed rows: `requested` if given, else "compiled"
    where equimd's compiled kernel is built on this host (`equimd kernels build`, `make venv`:
    the fastest CPU path, what `equimd deploy --tp-backend compiled` files run), else None
    (the model's own, "fused")."""
    if requested:
        return requested
    from equimd.potentials.nn.convolution import kernel_library

    return "compiled" if kernel_library.available() else None


def use_cpu_backend(model, requested: str | None = None) -> str | None:
    """Make `model` compute with `cpu_backend(requested)` (if any; the default one only where
    the model has convolutions) and return the backend it computes with (the report's
    "tp_backend"; None: no convolutions)."""
    from equimd.potentials.nn.convolution import apply_convolution_backend, convolution_backend

    backend = cpu_backend(requested)
    if backend and (requested or convolution_backend(model) is not None):
        apply_convolution_backend(model, backend)
    return convolution_backend(model)


def peer_python(name: str) -> Path:
    return ROOT / ".peers" / name / "bin" / "python"


def system_3bpa():
    import ase.io

    return ase.io.read(data_dir() / "3bpa" / "train_300K.xyz", index=0)


def system_water():
    import ase.io

    return ase.io.read(data_dir() / "water_rpbe_d3" / "test-H2O_RPBE-D3.xyz", index=0)


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


def git_commit() -> str:
    """Short hash of the checkout's HEAD ("?" outside a git checkout)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; "?" where unreadable): ratios against the peers
    differ between CPUs (vector width, caches), so every report names it."""
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    except OSError:
        return "?"
    return f"{names[0]} ({len(names)} logical CPUs)" if names else "?"


def run_stamp() -> dict[str, str]:
    """{"date": "YYYY-MM-DD HH:MM UTC", "commit": short hash, "cpu": model}: when, on which
    code and on which CPU a report was measured."""
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
            "cpu": cpu_model()}


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write a benchmark's report as JSON (creating its folder), stamped with the date and
    commit unless it carries them (`run_stamp`), and say where."""
    report = {**run_stamp(), **report}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {path}")
    return path


def emit(result: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def emit_measurement(
    result: dict[str, Any],
    evaluate: Callable[[], None],
    args: argparse.Namespace,
    frames_per_call: int | None = None,
) -> None:
    """A peer worker's last step: time `evaluate` with `measure` under the worker's options,
    add frames/s when each call processes `frames_per_call` frames (training steps), the
    process's peak RSS, and emit `result`."""
    result.update(measure(evaluate, args.repeats, args.warmup, args.quiet_load, args.max_wait))
    if frames_per_call is not None:
        result["frames_per_s"] = frames_per_call / result["median_s"]
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(result)


def job_arguments(
    description: str, argv: list[str] | None = None, worker: str | None = None
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The options of a worker driven by one JSON job (`--job-json`, plus the timing options of
    `add_timing_arguments`, and `--worker NAME` for a worker that is a mode of its benchmark's
    script): (the parsed options, the job)."""
    parser = job_parser(description)
    if worker is not None:
        parser.add_argument("--worker", choices=(worker,))
    add_timing_arguments(parser)
    args = parser.parse_args(argv)
    return args, json.loads(args.job_json)


def job_parser(description: str) -> argparse.ArgumentParser:
    """The parser of a worker driven by one JSON job (`--job-json`); `job_arguments` adds the
    timing options to it, the peers' accuracy workers use it as it is."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--job-json", required=True)
    return parser


def velocity_verlet(atoms, timestep_fs: float = 1.0):
    """ase.md.VelocityVerlet on `atoms` (its calculator set) from Maxwell-Boltzmann velocities at
    300 K (seed 0): the MD engine of every ASE row, equimd's and the peers'."""
    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    return VelocityVerlet(atoms, timestep=timestep_fs * units.fs)


def emit_md_measurement(result: dict[str, Any], atoms, args: argparse.Namespace) -> None:
    """An MD worker's last step: 3 steps of `velocity_verlet(atoms)`, then `measure` blocks of
    `args.steps` steps (one warm-up block), the largest displacement from the start (Å), the
    peak RSS, and emit `result`."""
    import numpy as np

    start = atoms.get_positions()
    dynamics = velocity_verlet(atoms)
    dynamics.run(3)
    result.update(
        measure(lambda: dynamics.run(args.steps), args.repeats, 1, args.quiet_load, args.max_wait)
    )
    displacement = np.linalg.norm(atoms.get_positions() - start, axis=1).max()
    result["max_displacement_A"] = round(float(displacement), 3)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(result)


def emitted_unless_float64(dtype: str, result: dict[str, Any]) -> bool:
    """For peer workers that time their parity fixtures' float64 evaluation paths: emit
    `result` with the reason and return True when another dtype is asked for."""
    if dtype == "float64":
        return False
    emit({**result, "error": f"{dtype}: not measured (the parity fixtures' evaluation paths, "
          "which this worker times, are float64)"})
    return True


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """The measurement options every worker takes (dtype, threads, repeats, warm-up, and the
    foreign-load wait of `measure`), with the same defaults everywhere."""
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quiet-load", type=float, default=0.15)
    parser.add_argument("--max-wait", type=float, default=120.0)


def worker_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Arguments every worker (equimd's and the peers') understands."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", default="equimd")
    parser.add_argument("--row-json", required=True, help="an entry of MODEL_ROWS, as JSON")
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    add_timing_arguments(parser)
    parser.add_argument("--backend", default=None, help="equimd: tensor-product backend")
    parser.add_argument("--train-steps", type=int, default=0, help="equimd: training steps")
    parser.add_argument("--flops", action="store_true", help="equimd: tensor-product FLOP/s")
    args = parser.parse_args(argv)
    args.row = json.loads(args.row_json)
    return args



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
