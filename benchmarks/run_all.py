"""The benchmark suite (`make bench`): equimd against the peers, in one run on this machine.

    python benchmarks/run_all.py [--no-setup] [--quick] [any bench_models.py option]

1. Creates the peer virtual environments that the compared rows need (`.peers/<peer>`, via
   `benchmarks/peers/setup_peers.sh <peer>`; skipped with --no-setup or when they exist).
2. Runs `benchmarks/bench_models.py` (speed, peak memory, training throughput, tensor-product
   FLOP/s, foreign CPU load next to every figure) and writes `bench_out/models.json`.

Long: the default is 20 timed evaluations per (model, system, dtype, implementation), and the
peers take tens of seconds per evaluation of the 2048-atom system. `--quick` is a smoke run.
Run it on an otherwise idle machine: the report states the foreign load it saw.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_models  # noqa: E402


def ensure_peers(rows: list[str]) -> None:
    """Create the virtual environments of the peers these rows compare against."""
    for name in sorted({bench_models.MODEL_ROWS[r]["peer"]["name"] for r in rows if "peer" in bench_models.MODEL_ROWS[r]}):
        if bench_models.peer_python(name).exists():
            continue
        print(f"[run_all] creating the {name} peer environment (.peers/{name})", flush=True)
        completed = subprocess.run(["bash", str(HERE / "peers" / "setup_peers.sh"), name])
        if completed.returncode != 0:
            print(f"[run_all] could not set up {name}; its rows are skipped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    parser.add_argument("--no-setup", action="store_true", help="never create peer environments")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if args.help:
        print(__doc__)
        bench_models.main(["--help"])
        return
    rows = sorted(bench_models.MODEL_ROWS)
    if "--rows" in rest:
        start = rest.index("--rows") + 1
        rows = []
        for item in rest[start:]:
            if item.startswith("--"):
                break
            rows.append(item)
    if not args.no_setup and "--no-peers" not in rest:
        ensure_peers(rows)
    bench_models.main(rest)


if __name__ == "__main__":
    main()
