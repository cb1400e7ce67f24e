"""Benchmark worker for the pyg peer: torch_geometric's DimeNetPlusPlus (runs in .peers/pyg;
never imports equimd).

    .peers/pyg/bin/python benchmarks/peers/pyg_worker.py --row-json '<row>' --system water \
        --dtype float64 --threads 2 --repeats 5 --warmup 1

Builds `DimeNetPlusPlus(out_channels=1, cutoff=r_max, **row["peer"]["kwargs"])` (float64,
seeded random weights: the sizes of the row's equimd model, not its weights) and times
energy + forces with `harness.measure`, the measurement code of equimd's worker.

What one timed evaluation does: `make_dimenetpp_fixtures.evaluate`, the parity fixtures' path
(torch_geometric's `rbf`, `sbf`, `emb`, interaction and output blocks run as `DimeNet.forward`
runs them, the angle by DimeNet++'s atan2 formula, forces by autograd), with its neighbor list
and its Python-loop triplets replaced by index arrays built beforehand
(`peer_graphs.neighbor_graph`, `peer_graphs.dimenet_triplets`: the same edges and triplets in
the same order). So the peer's time excludes the triplet construction, which equimd's time
includes (equimd builds the triplets inside the model from the neighbor list);
`DimeNet.forward` itself would build them with torch_sparse, which has no wheel for torch 2.9.

float64 only: the fixtures' evaluation path is float64 (the parity dtype); a float32 request
is answered with a reason, not a figure. Prints one ``BENCH_RESULT {json}`` line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as bench  # noqa: E402  (benchmarks/harness.py: systems, timing, workers)
import peer_graphs  # noqa: E402


def main() -> None:
    args = bench.worker_arguments()
    result: dict = {"implementation": "pyg"}
    if bench.emitted_unless_float64(args.dtype, result):
        return

    import make_dimenetpp_fixtures as fixtures  # torch_geometric's blocks, as in the fixtures
    import torch
    import torch_geometric

    torch.set_num_threads(args.threads)
    row = args.row
    r_max = float(row["r_max"])
    atoms = bench.SYSTEMS[args.system]()

    # the graph, beforehand: edges and triplets handed to the fixtures' evaluation code
    sender, receiver, shift = peer_graphs.neighbor_graph(atoms, r_max)
    edge_kj, edge_ji = peer_graphs.dimenet_triplets(sender, receiver, shift, len(atoms))
    fixtures.neighbor_list = lambda *_args, **_kwargs: (sender, receiver, shift)
    fixtures.triplets_by_loops = lambda *_args, **_kwargs: (edge_kj, edge_ji)

    torch.manual_seed(0)
    model = fixtures.DimeNetPlusPlus(out_channels=1, cutoff=r_max, **row["peer"]["kwargs"])
    model = model.double().eval().requires_grad_(False)  # inference, as equimd's worker

    def evaluate() -> None:
        fixtures.evaluate(model, atoms)["forces"].sum().item()

    result.update(
        version=torch_geometric.__version__,
        torch=torch.__version__,
        atoms=len(atoms),
        edges=len(sender),
        triplets=len(edge_kj),
        includes="bases, embedding, interaction and output blocks, autograd forces; "
        "neighbor list and triplets built beforehand",
    )
    bench.emit_measurement(result, evaluate, args)


if __name__ == "__main__":
    main()
