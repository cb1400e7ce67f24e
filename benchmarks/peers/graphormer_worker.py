"""Benchmark worker for the graphormer peer: the published Graphormer-3D (microsoft/Graphormer's
graphormer_3d.py from PyPI graphormer-pretrained 0.2.3; runs in .peers/graphormer, never
imports equimd).

    .peers/graphormer/bin/python benchmarks/peers/graphormer_worker.py --row-json '<row>' \
        --system water --dtype float64 --threads 2 --repeats 5 --warmup 1

Builds `Graphormer3D(Namespace(**row["peer"]["kwargs"]))` as `make_graphormer3d_fixtures.py`
does (its `fairseq.models` stand-in, the module loaded by path; seeded random weights, float64,
eval mode: the sizes of the row's equimd model, not its weights) and times
`make_graphormer3d_fixtures.energy_and_forces` (the parity fixtures' evaluation: every atom
tagged 1, energy from the published forward, forces by autograd) with `harness.measure`.

What that includes, and how it differs from equimd's side:
- the published model attends over **all N atoms of its input** (O(N²) pair tensors: the
  [N, N, num_kernel] Gaussian features, the attention bias and the unused direct force head
  are built in every call, from the positions: it has no separate graph to build beforehand),
  with **no periodic images**: on a periodic system (water, Cu) the cell's atoms are evaluated
  as a cluster, so the figure is the cost of the published model on that many atoms, not the
  same energy as equimd's (local attention over neighbour images within r_max);
- the fixtures clone every tensor saved for the backward pass (the published forward divides
  `delta_pos` in place after taking its norm, which autograd forces otherwise refuse);
- its Gaussian basis runs in float32 inside the float64 model, as published.
A system whose pair tensors do not fit is reported by the orchestrator as out of memory.

float64 only (the parity dtype; the fixtures' path is float64): a float32 request is answered
with a reason. Prints one ``BENCH_RESULT {json}`` line.
"""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as bench  # noqa: E402  (benchmarks/harness.py: systems, timing, workers)

NOTE = (
    "published model: all-pairs attention over the N atoms of the input, no periodic images "
    "(a periodic cell is evaluated as a cluster of its atoms)"
)


def main() -> None:
    args = bench.worker_arguments()
    result: dict = {"implementation": "graphormer", "note": NOTE}
    if bench.emitted_unless_float64(args.dtype, result):
        return

    from importlib.metadata import version

    import make_graphormer3d_fixtures as fixtures
    import torch

    torch.set_num_threads(args.threads)
    fixtures.fairseq_models_shim()
    torch.manual_seed(0)
    model = fixtures.load_graphormer3d_module().Graphormer3D(
        Namespace(**args.row["peer"]["kwargs"])
    )
    model = model.double().eval().requires_grad_(False)  # inference, as equimd's worker
    atoms = bench.SYSTEMS[args.system]()
    numbers = torch.tensor([atoms.numbers.tolist()])
    positions = torch.tensor(atoms.positions, dtype=torch.float64)

    def evaluate() -> None:
        _, forces = fixtures.energy_and_forces(model, numbers, positions)
        forces.sum().item()

    result.update(
        version=version("graphormer-pretrained"),
        torch=torch.__version__,
        atoms=len(atoms),
        pairs=len(atoms) ** 2,
        periodic=bool(atoms.pbc.any()),
    )
    bench.emit_measurement(result, evaluate, args)


if __name__ == "__main__":
    main()
