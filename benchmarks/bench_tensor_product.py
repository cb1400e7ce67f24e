"""The edge convolution alone, per backend: ms per `aggregate` forward + backward.

    python benchmarks/bench_tensor_product.py [--backends e3nn fused so2] [--cases nequip mace]
        [--dtypes float32 float64] [--edges 20000] [--nodes 1000] [--threads 2]
        [--repeats 10] [--warmup 2] [--quiet-load 0.15] [--max-wait 60] [--json PATH]

Cases (full layers, no restriction to what the energy reads):
- nequip: 64x(0e+0o+1o+1e+2e+2o) ⊗ Y^{l≤2} → the same irreps (30 paths), as a NequIP hidden layer
  with l_max 2 and 64 features;
- mace:   128x0e+128x1o ⊗ Y^{l≤3} → 0e+1o+2e+3o (10 paths), as MACE-MP "medium".

One call = harmonics of the edge vectors → `aggregate` (gather, convolution, scatter-sum to the
receivers) → backward to the node features, the weights and the edge vectors (what forces and
training need). Median over `--repeats` after `--warmup`, measured with `harness.measure`
(waits for foreign CPU load to drop, reports it), and the median CPU time of the process (all
threads; the fairer comparison between backends when other jobs share the cores). Prints one
line per (case, dtype, backend).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from e3nn import o3

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import harness as bench  # noqa: E402  (benchmarks/harness.py: systems, timing, workers)

from equimd.potentials.nn.convolution import EdgeConvolution  # noqa: E402

# name: (irreps_node, l_max of the harmonics, irreps_target)
CASES = {
    "nequip": ("64x0e+64x0o+64x1o+64x1e+64x2e+64x2o", 2, "0e+0o+1o+1e+2e+2o"),
    "mace": ("128x0e+128x1o", 3, "0e+1o+2e+3o"),
}


def time_backend(case: str, backend: str, dtype: torch.dtype, args: argparse.Namespace) -> dict:
    node, l_max, target = CASES[case]
    irreps_sh = o3.Irreps.spherical_harmonics(l_max)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        convolution = EdgeConvolution(o3.Irreps(node), irreps_sh, o3.Irreps(target), backend=backend)
    finally:
        torch.set_default_dtype(previous)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(args.nodes, convolution.irreps_node.dim, generator=generator).to(dtype)
    vectors = torch.randn(args.edges, 3, generator=generator).to(dtype)
    weights = torch.randn(args.edges, convolution.weight_numel, generator=generator).to(dtype)
    sender = torch.randint(0, args.nodes, (args.edges,), generator=generator)
    receiver = torch.randint(0, args.nodes, (args.edges,), generator=generator)
    inputs = [t.requires_grad_(True) for t in (features, vectors, weights)]

    cpu_seconds: list[float] = []

    def step() -> None:
        start = time.process_time()
        edge_sh = o3.spherical_harmonics(irreps_sh, inputs[1], True, "component")
        out = convolution.aggregate(inputs[0], edge_sh, inputs[2], sender, receiver, args.nodes)
        torch.autograd.grad(out.sum(), inputs)
        cpu_seconds.append(time.process_time() - start)

    result = bench.measure(step, args.repeats, args.warmup, args.quiet_load, args.max_wait)
    result.update(case=case, backend=backend, dtype=str(dtype).removeprefix("torch."),
                  edges=args.edges, nodes=args.nodes, threads=args.threads,
                  ms=round(1e3 * result["median_s"], 1),
                  # CPU time of all threads: comparable between backends on a loaded machine
                  cpu_ms=round(1e3 * statistics.median(cpu_seconds[args.warmup:]), 1))
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["e3nn", "fused", "so2"])
    parser.add_argument("--cases", nargs="+", default=sorted(CASES), choices=sorted(CASES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--edges", type=int, default=20000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quiet-load", type=float, default=0.15)
    parser.add_argument("--max-wait", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for case in args.cases:
        for dtype_name in args.dtypes:
            for backend in args.backends:
                r = time_backend(case, backend, getattr(torch, dtype_name), args)
                results.append(r)
                print(f"{case:7s} {r['dtype']:8s} {backend:6s} {r['ms']:9.1f} ms wall "
                      f"(min {1e3 * r['min_s']:.1f}), {r['cpu_ms']:9.1f} ms CPU; "
                      f"foreign load {r['load_before']}/{r['load_during']} cores", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
