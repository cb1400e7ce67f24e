"""MD-throughput worker for the nequip peer (runs in .peers/nequip; never imports equimd).
Used by benchmarks/bench_md_throughput.py:

    .peers/nequip/bin/python benchmarks/peers/nequip_md_worker.py --kwargs-json '<kwargs>' \
        --r-max 5 --system water --dtype float32 --threads 2 --steps 20 --repeats 3 \
        --quiet-load 0.15 --max-wait 120

ase.md.VelocityVerlet (1 fs) with nequip 0.19's `nequip.integrations.ase.NequIPCalculator` on an
unsaved `NequIPGNNModel` (`set_global_state()` first; seed 0, `model_dtype` = `--dtype`,
`kwargs` = its hyperparameters, avg_num_neighbors from the structure) with the transforms its
loaders use (`ChemicalSpeciesToAtomTypeMapper`, `NeighborListTransform`), on
`harness.SYSTEMS[system]` with Maxwell-Boltzmann velocities at 300 K (seed 0), as equimd's ASE
row. Timing protocol of bench_md_throughput.py: 3 steps, one warm-up block, wait for a quiet
machine, median of `--repeats` blocks of `--steps` steps (`harness.measure`). Prints one
``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness as bench  # noqa: E402  (benchmarks/harness.py: systems, timing, workers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kwargs-json", required=True, help="NequIPGNNModel keyword arguments")
    parser.add_argument("--r-max", type=float, required=True)
    parser.add_argument("--system", required=True, choices=sorted(bench.SYSTEMS))
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    bench.add_timing_arguments(parser)
    args = parser.parse_args(argv)

    import nequip
    import torch
    from ase.data import chemical_symbols
    from nequip.data import AtomicDataDict, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state()
    torch.set_num_threads(args.threads)
    atoms = bench.SYSTEMS[args.system]()
    type_names = [chemical_symbols[z] for z in sorted({int(z) for z in atoms.numbers})]
    transforms = [
        ChemicalSpeciesToAtomTypeMapper(model_type_names=type_names),
        NeighborListTransform(r_max=args.r_max),
    ]
    num_edges = int(
        NeighborListTransform(r_max=args.r_max)(from_ase(atoms))[
            AtomicDataDict.EDGE_INDEX_KEY
        ].shape[1]
    )
    model = NequIPGNNModel(
        seed=0, model_dtype=args.dtype, type_names=type_names, r_max=args.r_max,
        avg_num_neighbors=num_edges / len(atoms), **json.loads(args.kwargs_json),
    ).eval()  # fmt: skip
    atoms.calc = NequIPCalculator(model, device="cpu", transforms=transforms)
    energy = float(atoms.get_potential_energy())
    result = {
        "implementation": "nequip", "version": nequip.__version__, "atoms": len(atoms),
        "edges": num_edges, "energy": energy, "steps": args.steps,
    }  # fmt: skip
    bench.emit_md_measurement(result, atoms, args)


if __name__ == "__main__":
    main()
