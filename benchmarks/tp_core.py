"""The tensor-product core's achieved FLOP/s next to a plain matmul's, in the same process.

The core is `EdgeConvolution.aggregate` of a model's last interaction (gather of the sender
features, the "uvu" tensor product with per-edge weights, scatter-sum to the receivers),
forward only, on the benchmark system's real graph, with random features and weights.
Useful FLOPs are counted per path (l1 ⊗ l2 → l3, U channels, d = 2l + 1) and edge as

    2·U·d1·d3   the contraction of the sender features with the per-edge coupling matrix,
    U·d3        the weight multiply,
    2·D_sh·d1·d3  the coupling matrix itself (D_sh: dimension of the spherical harmonics),

the same count for every backend (e3nn's outer-product algorithm does more work for it).
The matmul is [1024, 1024] @ [1024, 1024] in the same dtype and thread count
(`harness.matmul_flops`). Issue 20's bar: the core at ≥ 15 % of the matmul's FLOP/s for
MACE medium.

Beside it, `model_path`: the same layer's call as the model makes it during an energy
evaluation (`aggregate_radial`: edges in pair order, the radial MLP's last layer fused into
the convolution, per pair), captured from a real forward and timed alone, forward only. Its
FLOP/s are given both for the products alone (the count above) and counting the fused last
layer's matmul (2·h·weights per pair or edge row) too; the acceptance check uses the
products-only figure of `aggregate` above.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from harness import LoadWindow, matmul_flops

TP_CORE_TARGET = 0.15  # fraction of the matmul's FLOP/s (issue 20, MACE medium)


def median_seconds(function: Callable[[], Any], repeats: int) -> float:
    """Median wall time (s) of `repeats` calls of `function`, after one warm-up call."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def convolution_flops(convolution, num_edges: int) -> float:
    """Useful FLOPs of one forward of a "uvu" `EdgeConvolution` over `num_edges` edges
    (module docstring)."""
    from e3nn import o3

    from equimd.potentials.nn.convolution import convolution_irreps

    irreps_node, irreps_sh = convolution.irreps_node, convolution.irreps_sh
    irreps_out = o3.Irreps(convolution.irreps_out)
    _, instructions = convolution_irreps(irreps_node, irreps_sh, irreps_out)
    total = 0.0
    for i_in1, _i_in2, i_out, *_ in instructions:
        mul, ir_in = irreps_node[i_in1]
        d1, d3 = ir_in.dim, irreps_out[i_out].ir.dim
        total += 2 * mul * d1 * d3 + mul * d3 + 2 * irreps_sh.dim * d1 * d3
    return total * num_edges


def measure_tp_core(model, graph, dtype_name: str, repeats: int = 5) -> dict[str, Any]:
    """{"backend", "irreps_in", "forward_s", "gflops", "matmul_gflops", "fraction_of_matmul",
    "load_during"} for the last interaction of `model` (its `interactions[-1].convolution`)
    on `graph` (median of `repeats` forwards after one warm-up)."""
    import torch

    from equimd.potentials.data.graph import edge_vectors

    dtype = getattr(torch, dtype_name)
    convolution = model.interactions[-1].convolution
    num_nodes, num_edges = int(graph.positions.shape[0]), int(graph.edge_index.shape[1])
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(num_nodes, convolution.irreps_node.dim, generator=generator).to(dtype)
    weights = torch.randn(num_edges, convolution.weight_numel, generator=generator).to(dtype)
    with torch.no_grad():
        edge_sh = model.spherical_harmonics(edge_vectors(graph))
        sender, receiver = graph.edge_index[0], graph.edge_index[1]

        def forward() -> None:
            convolution.aggregate(features, edge_sh, weights, sender, receiver, num_nodes)

        window = LoadWindow()
        seconds = median_seconds(forward, repeats)
        load = window.foreign_cores()
    flops = convolution_flops(convolution, num_edges)
    reference = matmul_flops(dtype_name)
    result = {
        "backend": convolution.backend,
        "irreps_in": str(convolution.irreps_node),
        "forward_s": seconds,
        "gflops": flops / seconds / 1e9,
        "matmul_gflops": reference / 1e9,
        "fraction_of_matmul": flops / seconds / reference,
        "load_during": round(load, 3),
    }
    path = measure_model_path(model, graph, repeats)
    if path is not None:
        path["fraction_of_matmul"] = path["gflops"] * 1e9 / reference
        path["fraction_with_radial"] = path["gflops_with_radial"] * 1e9 / reference
        result["model_path"] = path
    return result


def measure_model_path(model, graph, repeats: int = 5) -> dict[str, Any] | None:
    """{"forward_s", "gflops", "gflops_with_radial", "rows", "edges", "paired"} of the last interaction's
    `aggregate_radial` call as the model makes it (arguments captured from one forward, the
    call timed alone without gradients), or None if the model makes no such call."""
    import torch

    interaction = model.interactions[-1]
    convolutions = [getattr(interaction, name) for name in ("convolution", "pruned_convolution")
                    if hasattr(interaction, name)]
    calls: list[tuple] = []
    for convolution in convolutions:  # record the arguments (an instance attribute shadows)
        def record(*args, _convolution=convolution, _original=convolution.aggregate_radial):
            calls.append((_convolution, args))
            return _original(*args)
        convolution.aggregate_radial = record
    try:
        with torch.no_grad():
            model(graph)
    finally:
        for convolution in convolutions:
            del convolution.aggregate_radial
    if not calls:
        return None
    convolution, args = calls[-1]
    hidden, last_weight = args[2], args[3]
    num_edges = int(args[1].shape[0])
    with torch.no_grad():
        seconds = median_seconds(lambda: convolution.aggregate_radial(*args), repeats)
    products = convolution_flops(convolution, num_edges)
    radial = 2.0 * hidden.shape[0] * hidden.shape[1] * last_weight.shape[1]
    return {
        "forward_s": seconds,
        "gflops": products / seconds / 1e9,
        "gflops_with_radial": (products + radial) / seconds / 1e9,
        "rows": int(hidden.shape[0]),
        "edges": num_edges,
        "paired": bool(args[7]) if len(args) > 7 else False,
    }


def describe(core: dict[str, Any]) -> str:
    """'TP core G GFLOP/s (P% of matmul M)' for a `measure_tp_core` record."""
    text = (f"TP core {core['gflops']:.2f} GFLOP/s ({100 * core['fraction_of_matmul']:.1f}% of "
            f"matmul {core['matmul_gflops']:.0f})")
    if "model_path" in core:
        text += f"; {describe_model_path(core['model_path'])}"
    return text


def describe_model_path(path: dict[str, Any]) -> str:
    """'as the model calls it: ...' for a `measure_model_path` record (with fractions)."""
    return (f"as the model calls it (aggregate_radial, {path['rows']} radial rows for "
            f"{path['edges']} edges): {1e3 * path['forward_s']:.1f} ms, products "
            f"{100 * path['fraction_of_matmul']:.1f} %, with the fused radial last layer "
            f"{100 * path['fraction_with_radial']:.1f} % of matmul")
