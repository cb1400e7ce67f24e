"""MD-throughput worker for the mace-torch peer (runs in .peers/mace; never imports equimd).
Used by benchmarks/bench_md_throughput.py:

    .peers/mace/bin/python benchmarks/peers/mace_md_worker.py --model DIR/mace.model \
        --system water --dtype float32 --threads 2 --steps 20 --repeats 3 \
        --quiet-load 0.15 --max-wait 120

ase.md.VelocityVerlet (1 fs) with mace-torch's own `MACECalculator` on the mace.model written by
`mace_bench_worker.py make` (the file equimd imports: same weights), on `harness.SYSTEMS[system]`
with Maxwell-Boltzmann velocities at 300 K (seed 0), as equimd's ASE row. Timing protocol of
bench_md_throughput.py: 3 steps, one warm-up block, wait for a quiet machine, median of
`--repeats` blocks of `--steps` steps (`harness.measure`). Prints one ``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# mace before e3nn (torch >= 2.6 with e3nn 0.4.4; see setup_peers.sh)
import mace  # noqa: F401  isort: skip

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness as bench  # noqa: E402  (benchmarks/harness.py: systems, timing, workers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the mace.model file")
    parser.add_argument("--system", required=True, choices=sorted(bench.SYSTEMS))
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    bench.add_timing_arguments(parser)
    args = parser.parse_args(argv)

    import torch
    from mace.__version__ import __version__ as mace_version
    from mace.calculators import MACECalculator

    calculator = MACECalculator(model_paths=args.model, device="cpu", default_dtype=args.dtype)
    torch.set_num_threads(args.threads)
    atoms = bench.SYSTEMS[args.system]()
    atoms.calc = calculator
    energy = float(atoms.get_potential_energy())
    result = {
        "implementation": "mace", "version": mace_version, "atoms": len(atoms),
        "energy": energy, "steps": args.steps,
    }  # fmt: skip
    bench.emit_md_measurement(result, atoms, args)


if __name__ == "__main__":
    main()
