"""Benchmark worker for the nequip peer (runs in .peers/nequip; never imports equimd).

    .peers/nequip/bin/python benchmarks/peers/nequip_worker.py --row-json '<row>' --system water \
        --dtype float32 --threads 2 --repeats 20 --warmup 3

Builds nequip 0.19's `NequIPGNNModel` from the row's "peer" keyword arguments (no training config:
`set_global_state()` first), the same structure as equimd's worker (`harness.SYSTEMS`) with
nequip's own neighbor list, and times energy + forces of the model alone with the same
measurement code (`harness.measure`). Prints one ``BENCH_RESULT {json}`` line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness as bench  # noqa: E402  (benchmarks/harness.py: systems, timing, workers)


def main() -> None:
    args = bench.worker_arguments()
    import nequip
    import torch
    from ase.data import chemical_symbols
    from nequip.data import AtomicDataDict, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state()
    torch.set_num_threads(args.threads)
    row = args.row
    r_max = float(row["r_max"])
    atoms = bench.SYSTEMS[args.system]()
    type_names = [chemical_symbols[z] for z in sorted({int(z) for z in atoms.numbers})]

    data = from_ase(atoms)
    data = NeighborListTransform(r_max=r_max)(data)
    data = ChemicalSpeciesToAtomTypeMapper(model_type_names=type_names)(data)
    num_edges = int(data[AtomicDataDict.EDGE_INDEX_KEY].shape[1])

    model = NequIPGNNModel(
        seed=0,
        model_dtype=args.dtype,
        type_names=type_names,
        r_max=r_max,
        avg_num_neighbors=num_edges / len(atoms),
        **row["peer"]["kwargs"],
    )
    model.eval().requires_grad_(False)  # inference, as equimd's worker

    def evaluate() -> None:
        out = model(dict(data))
        out[AtomicDataDict.FORCE_KEY].sum().item()

    result = {
        "implementation": "nequip",
        "version": nequip.__version__,
        "atoms": len(atoms),
        "edges": num_edges,
    }
    result.update(bench.measure(evaluate, args.repeats, args.warmup, args.quiet_load, args.max_wait))
    result["peak_rss_mb"] = round(bench.peak_rss_mb(), 1)
    bench.emit(result)


if __name__ == "__main__":
    main()
