"""The benchmark suite (`make bench`): equimd against the peers, in one run on this machine.

    python benchmarks/run_all.py [--no-setup] [--quick]
        [--only models mace neighbors md md_throughput] [--systems water ...] [--summary-only]
        [--no-readme]

1. Creates the peer virtual environments (`.peers/nequip`, `.peers/mace`, via
   `benchmarks/peers/setup_peers.sh`; skipped with --no-setup or when they exist).
2. Runs, each writing a JSON report under `bench_out/`:
   - `bench_models.py --rows nequip` (NequIP vs nequip: speed, peak memory, training frames/s,
     tensor-product FLOP/s against a plain matmul) → `models.json`;
   - `bench_mace.py speed` (MACE small and medium vs mace-torch on the same weights, and the
     tensor-product core's FLOP/s) → `mace_speed.json`;
   - `bench_neighbors.py` (our cell list vs matscipy and vesin) → `neighbors.json`;
   - `bench_openmm.py` (MD steps through OpenMM and ASE vs the bare model call, water box)
     → `md.json`;
   - `bench_md_throughput.py` (MD steps/s and ns/day of MACE small and NequIP through OpenMM
     and ASE next to mace-torch's and nequip's ASE calculators, water box and Cu 2048, float32)
     → `md_throughput.json`.
3. Prints the acceptance figures from those reports (ratios peer / equimd from the same run
   against issue 20's bars -- MACE ≥ 5×, NequIP ≥ 8×, MACE medium's tensor-product core ≥ 15 %
   of a matmul's FLOP/s --, memory, neighbor-list share of a step, OpenMM overhead, MD
   steps/s, the foreign CPU load seen, and each report's date and commit), writes them to
   `bench_out/summary.md` and, unless `--quick` or `--no-readme`, into README.md between the
   `README_BEGIN` and `README_END` lines (the README's benchmark tables are this output).

Long (about an hour on 2 cores: the peers take tens of seconds per evaluation of the 2048-atom
system, so those are timed at least 5 times within a 240 s budget instead of 20 times).
`--quick` is a smoke run of everything. Run it on an otherwise idle machine: each figure
carries the foreign load it saw.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "bench_out"
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from tp_core import TP_CORE_TARGET, describe_model_path  # noqa: E402

STEPS = ("models", "mace", "neighbors", "md", "md_throughput")
NEIGHBOR_SHARE, OPENMM_OVERHEAD = 0.05, 1.10
# issue 20's bars: peer time / equimd time on the same structure (MACE: same weights)
SPEED_TARGETS = {"MACE": 5.0, "nequip": 8.0}
README = ROOT / "README.md"
README_BEGIN = "<!-- benchmarks:begin (written by benchmarks/run_all.py; do not edit) -->"
README_END = "<!-- benchmarks:end -->"


def ensure_peers(names: list[str]) -> None:
    for name in names:
        if harness.peer_python(name).exists():
            continue
        print(f"[run_all] creating the {name} peer environment (.peers/{name})", flush=True)
        if subprocess.run(["bash", str(HERE / "peers" / "setup_peers.sh"), name]).returncode:
            print(f"[run_all] could not set up {name}; its rows are skipped", flush=True)


def commands(quick: bool, systems: list[str] | None = None) -> dict[str, list[str]]:
    """Each step's command line; `systems` (e.g. ["water"]) restricts the model, MACE and MD
    throughput steps to those of their systems (None: all of each step's systems)."""
    py = sys.executable
    q = ["--quick"] if quick else []

    def only(defaults: list[str]) -> list[str]:
        chosen = [name for name in defaults if systems is None or name in systems]
        return ["--systems", *(chosen or defaults[:1])]

    return {
        # the NequIP row of issue 20 (every other model's rows: `bench_models.py --rows ...`,
        # docs/models.md)
        "models": [py, str(HERE / "bench_models.py"), "--rows", "nequip",
                   *only(["3bpa", "water", "cu256", "cu2048"]),
                   "--json", str(OUT / "models.json"), *q],
        "mace": [py, str(HERE / "bench_mace.py"), "speed", *only(["water", "cu2048"]),
                 "--json", str(OUT / "mace_speed.json"), *q],
        "neighbors": [py, str(HERE / "bench_neighbors.py"), "--repeats", "3" if quick else "20",
                      "--json", str(OUT / "neighbors.json")],
        "md": [py, str(HERE / "bench_openmm.py"), "--system", "water",
               *(["--steps", "2", "--repeats", "1", "--max-wait", "0"] if quick else []),
               "--json", str(OUT / "md.json")],
        "md_throughput": [py, str(HERE / "bench_md_throughput.py"), "--models", "mace", "nequip",
                          "--dtypes", "float32", "--out", str(OUT / "md_throughput"),
                          *(["--systems", "3bpa", "--steps", "2", "--repeats", "1",
                             "--max-wait", "0"] if quick else
                            [*only(["water", "cu2048"]), "--steps", "4", "--repeats", "3"]),
                          "--json", str(OUT / "md_throughput.json")],
    }  # fmt: skip


def _read(name: str) -> dict[str, Any] | None:
    path = OUT / name
    return json.loads(path.read_text()) if path.exists() else None


def _speed_target(model: str) -> float | None:
    """Issue 20's bar for a row (None: the row has none)."""
    return SPEED_TARGETS.get("MACE" if model.startswith("MACE") else model)


def _speed_rows(results: list[dict], key: str, peer: str, prefix: str = "") -> list[str]:
    """Lines 'model | system | dtype | equimd ms | peer ms | ratio | memory' for one report."""
    lines = []
    groups: dict[tuple, dict[str, dict]] = {}
    for r in results:
        groups.setdefault((r.get(key, "nequip"), r["system"], r["dtype"]), {})[
            r.get("implementation", "?")] = r  # fmt: skip
    for (model, system, dtype), impl in groups.items():
        ours, theirs = impl.get("equimd"), impl.get(peer)
        if ours is None:
            continue
        backend = ours.get("tp_backend")  # named unless the default (or no convolutions)
        cells = [f"{prefix}{model}" + ("" if backend in (None, "fused") else f" [{backend}]"),
                 system, dtype]
        if "error" in ours:
            lines.append(" | ".join(cells + [f"equimd failed: {ours['error'][:80]}", "", "", "", ""]))
            continue
        cells.append(f"{ours['median_s'] * 1e3:.0f} ms ({ours.get('repeats', '?')}×)")
        memory = f"{ours['peak_rss_mb'] / 1024:.1f} GiB"
        load = max(ours.get("load_during", 0.0), 0.0)
        if theirs is None:
            cells += ["—", "—"]
        elif "error" in theirs:
            cells += [f"{peer}: {theirs['error'][:60]}", "—"]
        else:
            ratio, target = theirs["median_s"] / ours["median_s"], _speed_target(prefix + model)
            verdict = "" if target is None else (
                f"≥ {target:g}× PASS" if ratio >= target else f"below {target:g}×")
            cells += [f"{theirs['median_s'] * 1e3:.0f} ms", f"**{ratio:.2f}×** {verdict}"]
            memory += f" vs {theirs['peak_rss_mb'] / 1024:.1f} GiB"
            load = max(load, theirs.get("load_during", 0.0))
        cells += [memory, f"{load:.2f}"]
        lines.append(" | ".join(cells))
    return lines


def _throughput_lines(results: list[dict], key: str = "row") -> list[str]:
    """'- model system dtype: train N frames/s; TP core G GFLOP/s (P % of matmul M)' per equimd
    row (MACE medium's TP core against issue 20's 15 %)."""
    lines = []
    for r in results:
        if r.get("implementation") != "equimd" or "median_s" not in r:
            continue
        model = r.get(key, "nequip") if key == "row" else f"MACE {r.get(key)}"
        parts = []
        if r.get("train"):
            parts.append(f"train {r['train']['frames_per_s']:.2f} frames/s")
        core = r.get("tp_core")
        if core:
            verdict = ""
            if model == "MACE medium":
                verdict = (" PASS" if core["fraction_of_matmul"] >= TP_CORE_TARGET
                           else f" below {100 * TP_CORE_TARGET:.0f} %")
            parts.append(f"TP core ({core['backend']}, {core['irreps_in']}) {core['gflops']:.1f} "
                         f"GFLOP/s = {100 * core['fraction_of_matmul']:.1f} % of matmul "
                         f"{core['matmul_gflops']:.0f} GFLOP/s{verdict} "
                         f"(load {core.get('load_during', 0.0):.2f})")
            if "model_path" in core:
                parts.append(describe_model_path(core["model_path"]))
        if parts:
            lines.append(f"- {model} {r['system']} {r['dtype']}: " + "; ".join(parts))
    return lines


def _provenance(reports: dict[str, dict | None]) -> str:
    """'Measured (report: DATE, commit C; ...) on CPU, T torch threads.': where each figure
    comes from."""
    stamps = [f"{name}: {report.get('date', 'date not recorded')}, commit "
              f"{report.get('commit', '?')}" for name, report in reports.items() if report]
    threads = sorted({str(report.get("settings", {}).get("threads", report.get("threads", "?")))
                      for report in reports.values() if report})
    cpus = sorted({report.get("cpu", "CPU not recorded") for report in reports.values() if report})
    return (f"Measured ({'; '.join(stamps)}) on {' / '.join(cpus)}, {'/'.join(threads)} torch "
            "threads.")


def summary() -> str:
    models, mace = _read("models.json"), _read("mace_speed.json")
    neighbors, md, throughput = _read("neighbors.json"), _read("md.json"), _read("md_throughput.json")
    out = [_provenance({"models.json": models, "mace_speed.json": mace,
                        "neighbors.json": neighbors, "md.json": md,
                        "md_throughput.json": throughput}), "",
           "| model | system | dtype | equimd | peer | peer / equimd | peak memory equimd vs peer "
           "| max foreign load (cores) |", "|---|---|---|---|---|---|---|---|"]
    if models:
        out += [f"| {line} |" for line in _speed_rows(models["results"], "row", "nequip")]
    if mace:
        out += [f"| {line} |" for line in _speed_rows(mace["results"], "config", "mace", "MACE ")]
    lines = (_throughput_lines(models["results"]) if models else []) + (
        _throughput_lines(mace["results"], "config") if mace else [])
    if lines:
        out.append("\nTraining throughput (energy + forces loss, one optimizer step per frame) and "
                   "the tensor-product core's achieved FLOP/s (last interaction, forward, "
                   "`benchmarks/tp_core.py`; `aggregate` with given per-edge weights, the bar's "
                   "figure, then the same layer's call as the model makes it, products alone and "
                   "with the fused radial last layer's matmul counted) vs a plain matmul in the "
                   "same process:")
        out += lines
    if neighbors:
        out.append("\nNeighbor list (ours, float64, median ms) against matscipy and vesin, and its "
                   "share of one MD step (model + list) on Cu 2048 where a model ran on it:")
        for nl in neighbors["systems"]:
            if nl["system"] == "fcc Cu 2048":
                peers = "; ".join(f"{peer}/ours {nl[f'{peer}_over_ours']:.2f}"
                                  for peer in ("matscipy", "vesin") if f"{peer}_over_ours" in nl)
                out.append(f"- fcc Cu 2048, r_max {nl['r_max']}: {nl['edges']} edges, ours "
                           f"{nl['ours_ms']:.1f} ms; {peers or 'no peer measured'}")
    if neighbors and (models or mace):
        steps = [r for r in (models or {}).get("results", []) + (mace or {}).get("results", [])
                 if r.get("implementation") == "equimd" and r.get("system") == "cu2048"
                 and "median_s" in r]  # fmt: skip
        for r in steps:
            r_max = 5.0 if "row" in r else 6.0
            nl = next((s for s in neighbors["systems"]
                       if s["system"] == "fcc Cu 2048" and s["r_max"] == r_max), None)
            if nl is None:
                continue
            share = nl["ours_ms"] / (nl["ours_ms"] + r["median_s"] * 1e3)
            verdict = "PASS" if share <= NEIGHBOR_SHARE else "above 5 %"
            name = f"MACE {r['config']}" if "config" in r else r.get("row", "nequip")
            out.append(f"- {name} {r['dtype']} (r_max {r_max}): list {nl['ours_ms']:.1f} ms, "
                       f"model {r['median_s'] * 1e3:.0f} ms → {100 * share:.2f} % {verdict}")
    if md:
        out.append(f"\nMD on the {md['atoms']}-atom {md['system']} box ({md['dtype']}, "
                   f"{md['threads']} threads, typical NequIP):")
        for name, row in md["rows"].items():
            extra = ""
            if name == "TorchForce":
                extra = " PASS" if row["overhead"] <= OPENMM_OVERHEAD else " above 1.10"
            out.append(f"- {name}: {row['ms_per_step']:.1f} ms/step, {row['steps_per_s']:.2f} "
                       f"steps/s, step / model call {row['overhead']:.3f}{extra} "
                       f"(load {row['load_during']:.2f})")
    if throughput:
        out.append(f"\nMD throughput ({throughput['date']}, commit {throughput['commit']}, "
                   f"{throughput['settings']['threads']} threads, 1 fs; ratio = peer ms/step / "
                   "equimd ms/step, same run):")
        out += [f"- model {name}: {description}"
                for name, description in throughput.get("models", {}).items()]
        out += _md_throughput_lines(throughput["results"])
    return "\n".join(out)


def _md_throughput_lines(results: list[dict]) -> list[str]:
    """'- model system dtype engine: ms/step, steps/s, ns/day, ratio (load)' per row."""
    lines = []
    for r in results:
        name = f"- {r.get('model')} {r.get('system')} {r.get('dtype')} {r.get('engine')}"
        if "error" in r:
            lines.append(f"{name}: not measured ({r['error'][:80]})")
            continue
        ratio = f", peer / equimd **{r['ratio']:.2f}×**" if "ratio" in r else ""
        lines.append(f"{name}: {r['ms_per_step']:.1f} ms/step, {r['steps_per_s']:.3f} steps/s, "
                     f"{r['ns_per_day']:.4f} ns/day{ratio} (load {r.get('load_during', 0.0):.2f})")
    return lines


def replace_readme_block(readme: str, block: str) -> str:
    """`readme` with the text between `README_BEGIN` and `README_END` replaced by `block`."""
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"README.md lacks the lines {README_BEGIN!r} ... {README_END!r}")
    return readme[: begin + len(README_BEGIN)] + "\n" + block.strip() + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-setup", action="store_true", help="never create peer venvs")
    parser.add_argument("--quick", action="store_true", help="smoke run of every benchmark")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--summary-only", action="store_true",
                        help="print the summary of the reports already in bench_out/")
    parser.add_argument("--systems", nargs="+", metavar="NAME",
                        help="only these systems in the model, MACE and MD throughput steps "
                             "(e.g. water; default: each step's own list)")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not write the summary into README.md (--quick never does)")
    harness.add_data_argument(parser)
    args = parser.parse_args(argv)
    harness.use_data_argument(args)
    if not args.summary_only:
        if not args.no_setup:
            ensure_peers([p for p, steps in (("nequip", ("models", "md_throughput")),
                                             ("mace", ("mace", "md_throughput")))
                          if any(step in args.only for step in steps)])
        for step in args.only:
            command = commands(args.quick, args.systems)[step]
            print(f"\n[run_all] {step}: {' '.join(command[1:])}", flush=True)
            start = time.perf_counter()
            code = subprocess.run(command, cwd=ROOT).returncode
            print(f"[run_all] {step} finished in {time.perf_counter() - start:.0f} s"
                  + (f" with exit code {code}" if code else ""), flush=True)
    text = summary()
    OUT.mkdir(exist_ok=True)
    (OUT / "summary.md").write_text(text + "\n")
    print("\n" + text + f"\n\nwrote {OUT / 'summary.md'}")
    if not (args.quick or args.no_readme):
        README.write_text(replace_readme_block(README.read_text(), text))
        print(f"wrote the benchmark tables of {README}")


if __name__ == "__main__":
    main()
