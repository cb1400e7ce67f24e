"""Experiment (not used by equimd): how fast a compiled kernel makes the tensor-product core.

Issue 20 asks for MACE medium's tensor-product core (`benchmarks/tp_core.py`: the last
interaction's `aggregate`, forward, useful FLOPs per path and edge) at ≥ 15 % of a plain
matmul's FLOP/s. equimd's fused backend reaches ~5 % in eager PyTorch: its receiver contraction
(fused.py, docstring 7.) runs as GEMMs, but h = w·x is materialised padded per path (~0.3 GB
written and read per call for MACE medium on the water box) and the [E, weight_numel] weights
are gathered padded and, for MACE medium, regrouped: memory traffic, not arithmetic.

This script compiles (torch.utils.cpp_extension, g++ -O3 -march=native, OpenMP) a fused
forward of the same sum, A[n, p, k, u] = Σ_{e → n} w[e, p, u] Σ_i M_p[e, k, i] x[sender(e), i, u],
that walks each receiver's edges (CSR by receiver, `edge_slots.incoming_edge_offsets`) and
keeps w·x in a per-path scratch row: the weights are read once, in e3nn's order, and no
[E, ·] or padded intermediate is formed. It checks the result against `aggregate` and prints
both times with their share of the same process's matmul FLOP/s.

With `dL/dA` given it also runs backward kernels (gradients for the features, the harmonics and
the weights, as forces need them) against autograd through the eager path. float32/float64,
CPU; needs a C++ compiler and ninja. Last, energy + forces of the whole model with every
convolution routed through the kernels (an autograd Function). A product kernel also needs
a differentiable backward or a fallback (training's double backward), a TorchScript/AOTInductor
registration and loading in every MD engine — see docs/performance.md, "A compiled kernel".

    python benchmarks/experiments/tp_core_kernel.py [--hidden 128x0e+128x1o] [--dtype float32]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

KERNEL = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <vector>

// x [N, Din] (m-major units), coupling [E, C] ((p, k, i) per group), weights [E, W] (e3nn's
// order), sender [E], order [E] (edges by receiver), starts [N + 1]. Per group g: its unit's
// offset in x, d1, d3, P paths, U channels, its coupling and output offsets; weight_offset:
// each path's first weight column, groups and paths in order.
template <typename T>
void receiver_sums(const T* X, const T* C, const T* Wt, const int64_t* S, const int64_t* R,
                   const int64_t* St, T* O, int64_t N, int64_t Din, int64_t Cdim, int64_t Wdim,
                   int64_t out_dim, int shift, const std::vector<int64_t>& unit,
                   const std::vector<int64_t>& d1s,
                   const std::vector<int64_t>& d3s, const std::vector<int64_t>& Ps,
                   const std::vector<int64_t>& Us, const std::vector<int64_t>& c_off,
                   const std::vector<int64_t>& o_off, const std::vector<int64_t>& w_off) {
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<T> wx(3 * 1024);
    for (int64_t n = n0; n < n1; ++n) {
      T* acc = O + n * out_dim;
      for (int64_t j = St[n]; j < St[n + 1]; ++j) {
        const int64_t e = R[j], s = S[e];
        int64_t path = 0;
        for (size_t g = 0; g < d1s.size(); ++g) {
          const int64_t d1 = d1s[g], d3 = d3s[g], U = Us[g];
          const T* xb = X + s * Din + unit[g];
          const T* m = C + e * Cdim + c_off[g];
          for (int64_t p = 0; p < Ps[g]; ++p, ++path) {
            const T* w = Wt + (e >> shift) * Wdim + w_off[path];
            for (int64_t i = 0; i < d1; ++i) {
              T* wxi = wx.data() + i * U;
              const T* xi = xb + i * U;
#pragma omp simd
              for (int64_t u = 0; u < U; ++u) wxi[u] = w[u] * xi[u];
            }
            const T* w0 = wx.data();
            const T* w1 = w0 + U;
            const T* w2 = w1 + U;
            for (int64_t k = 0; k < d3; ++k) {
              T* a = acc + o_off[g] + (p * d3 + k) * U;
              const T* mk = m + (p * d3 + k) * d1;
              if (d1 == 1) {
                const T c0 = mk[0];
#pragma omp simd
                for (int64_t u = 0; u < U; ++u) a[u] += c0 * w0[u];
              } else if (d1 == 3) {
                const T c0 = mk[0], c1 = mk[1], c2 = mk[2];
#pragma omp simd
                for (int64_t u = 0; u < U; ++u) a[u] += c0 * w0[u] + c1 * w1[u] + c2 * w2[u];
              } else {
                for (int64_t i = 0; i < d1; ++i) {
                  const T c = mk[i];
                  const T* wxi = wx.data() + i * U;
#pragma omp simd
                  for (int64_t u = 0; u < U; ++u) a[u] += c * wxi[u];
                }
              }
            }
          }
        }
      }
    }
  });
}

// Backward of receiver_sums for dL/dA = G [N, out_dim]: per edge (parallel over edges)
// dL/dw[e, p, u] = Σ_k G[r, p, k, u] Σ_i M[e, p, k, i] x[s, i, u] and
// dL/dM[e, p, k, i] = Σ_u G[r, p, k, u] w[e, p, u] x[s, i, u]; per sender (parallel over
// senders, edges in `out_order` / `out_starts`) dL/dx[s, i, u] = Σ_{e: s} Σ_{p, k} M[e, p, k, i]
// w[e, p, u] G[r, p, k, u].
template <typename T>
void receiver_sums_backward(const T* X, const T* C, const T* Wt, const T* G, const int64_t* S,
                            const int64_t* Rv, const int64_t* OutOrder, const int64_t* OutSt,
                            T* GX, T* GC, T* GW, int64_t N, int64_t E, int64_t Din, int64_t Cdim,
                            int64_t Wdim, int64_t out_dim, int shift,
                            const std::vector<int64_t>& unit,
                            const std::vector<int64_t>& d1s, const std::vector<int64_t>& d3s,
                            const std::vector<int64_t>& Ps, const std::vector<int64_t>& Us,
                            const std::vector<int64_t>& c_off, const std::vector<int64_t>& o_off,
                            const std::vector<int64_t>& w_off) {
  at::parallel_for(0, E, 64, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t s = S[e], r = Rv[e];
      int64_t path = 0;
      for (size_t g = 0; g < d1s.size(); ++g) {
        const int64_t d1 = d1s[g], d3 = d3s[g], U = Us[g];
        const T* xb = X + s * Din + unit[g];
        const T* m = C + e * Cdim + c_off[g];
        T* gm = GC + e * Cdim + c_off[g];
        for (int64_t p = 0; p < Ps[g]; ++p, ++path) {
          const T* w = Wt + (e >> shift) * Wdim + w_off[path];
          T* gw = GW + e * Wdim + w_off[path];
          for (int64_t k = 0; k < d3; ++k) {
            const T* gk = G + r * out_dim + o_off[g] + (p * d3 + k) * U;
            const T* mk = m + (p * d3 + k) * d1;
            T* gmk = gm + (p * d3 + k) * d1;
            for (int64_t i = 0; i < d1; ++i) {
              const T* xi = xb + i * U;
              const T c = mk[i];
              T dot = 0;
#pragma omp simd reduction(+ : dot)
              for (int64_t u = 0; u < U; ++u) {
                gw[u] += c * xi[u] * gk[u];
                dot += gk[u] * w[u] * xi[u];
              }
              gmk[i] = dot;
            }
          }
        }
      }
    }
  });
  at::parallel_for(0, N, 1, [&](int64_t s0, int64_t s1) {
    std::vector<T> gwk(1024);
    for (int64_t s = s0; s < s1; ++s) {
      for (int64_t j = OutSt[s]; j < OutSt[s + 1]; ++j) {
        const int64_t e = OutOrder[j], r = Rv[e];
        int64_t path = 0;
        for (size_t g = 0; g < d1s.size(); ++g) {
          const int64_t d1 = d1s[g], d3 = d3s[g], U = Us[g];
          T* gx = GX + s * Din + unit[g];
          const T* m = C + e * Cdim + c_off[g];
          for (int64_t p = 0; p < Ps[g]; ++p, ++path) {
            const T* w = Wt + (e >> shift) * Wdim + w_off[path];
            for (int64_t k = 0; k < d3; ++k) {
              const T* gk = G + r * out_dim + o_off[g] + (p * d3 + k) * U;
              const T* mk = m + (p * d3 + k) * d1;
#pragma omp simd
              for (int64_t u = 0; u < U; ++u) gwk[u] = gk[u] * w[u];
              for (int64_t i = 0; i < d1; ++i) {
                const T c = mk[i];
                T* gxi = gx + i * U;
#pragma omp simd
                for (int64_t u = 0; u < U; ++u) gxi[u] += c * gwk[u];
              }
            }
          }
        }
      }
    }
  });
}

std::vector<torch::Tensor> aggregate_backward(
    torch::Tensor grad, torch::Tensor x, torch::Tensor coupling, torch::Tensor weights,
    torch::Tensor sender, torch::Tensor receiver, torch::Tensor out_order,
    torch::Tensor out_starts, std::vector<int64_t> unit, std::vector<int64_t> d1s,
    std::vector<int64_t> d3s, std::vector<int64_t> Ps, std::vector<int64_t> Us,
    std::vector<int64_t> c_off, std::vector<int64_t> o_off, std::vector<int64_t> w_off,
    int64_t out_dim) {
  // weights: a row per edge, or per pair of edges in pair order (row e >> 1); dL/dw per edge
  const int shift = weights.size(0) == coupling.size(0) ? 0 : 1;
  auto gx = torch::zeros_like(x), gc = torch::zeros_like(coupling);
  auto gw = torch::zeros({coupling.size(0), weights.size(1)}, weights.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "receiver_sums_backward", [&] {
    receiver_sums_backward<scalar_t>(
        x.data_ptr<scalar_t>(), coupling.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
        grad.data_ptr<scalar_t>(), sender.data_ptr<int64_t>(), receiver.data_ptr<int64_t>(),
        out_order.data_ptr<int64_t>(), out_starts.data_ptr<int64_t>(), gx.data_ptr<scalar_t>(),
        gc.data_ptr<scalar_t>(), gw.data_ptr<scalar_t>(), x.size(0), coupling.size(0), x.size(1),
        coupling.size(1), weights.size(1), out_dim, shift, unit, d1s, d3s, Ps, Us, c_off, o_off,
        w_off);
  });
  return {gx, gc, gw};
}

torch::Tensor aggregate(torch::Tensor x, torch::Tensor coupling, torch::Tensor weights,
                        torch::Tensor sender, torch::Tensor order, torch::Tensor starts,
                        std::vector<int64_t> unit, std::vector<int64_t> d1s,
                        std::vector<int64_t> d3s, std::vector<int64_t> Ps,
                        std::vector<int64_t> Us, std::vector<int64_t> c_off,
                        std::vector<int64_t> o_off, std::vector<int64_t> w_off, int64_t out_dim) {
  for (size_t g = 0; g < d1s.size(); ++g)
    TORCH_CHECK(d1s[g] <= 3 && Us[g] <= 1024, "experiment: d1 <= 3 and U <= 1024 only");
  const int64_t N = starts.size(0) - 1;
  auto out = torch::zeros({N, out_dim}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "receiver_sums", [&] {
    receiver_sums<scalar_t>(
        x.data_ptr<scalar_t>(), coupling.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
        sender.data_ptr<int64_t>(), order.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), N, x.size(1), coupling.size(1), weights.size(1), out_dim,
        weights.size(0) == coupling.size(0) ? 0 : 1,
        unit, d1s, d3s, Ps, Us, c_off, o_off, w_off);
  });
  return out;
}
"""


def _offsets(sizes: list[int]) -> list[int]:
    return [0, *itertools.accumulate(sizes)][:-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="128x0e+128x1o", help="MACE hidden irreps (medium)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--build", default=str(HERE.parents[1] / "bench_out" / "tp_core_kernel"))
    args = parser.parse_args()

    import harness
    import torch
    from torch.utils.cpp_extension import load_inline
    from tp_core import convolution_flops, median_seconds

    from equimd.allocator import keep_freed_memory
    from equimd.potentials.data.configuration import Configuration
    from equimd.potentials.data.graph import configuration_to_graph, edge_vectors
    from equimd.potentials.models.mace import MACE
    from equimd.potentials.nn.edge_slots import incoming_edge_offsets

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    Path(args.build).mkdir(parents=True, exist_ok=True)
    kernel = load_inline(
        "equimd_tp_core_experiment", cpp_sources=[KERNEL], functions=["aggregate", "aggregate_backward"],
        extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
        build_directory=args.build,
    )  # fmt: skip

    torch.manual_seed(0)
    model = MACE([1, 8], r_max=6.0, hidden_irreps=args.hidden, max_ell=3, correlation=3).to(dtype)
    graph = configuration_to_graph(
        Configuration.from_atoms(harness.SYSTEMS["water"]()), model.r_max, dtype=dtype
    )
    convolution = model.interactions[-1].convolution
    fused = convolution.tp  # the fused backend's module: its tables describe the groups
    if fused.backend != "fused":
        raise SystemExit(f"needs the fused backend, got {fused.backend}")
    num_nodes, num_edges = graph.positions.shape[0], graph.edge_index.shape[1]
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(num_nodes, convolution.irreps_node.dim, generator=generator).to(dtype)
    weights = torch.randn(num_edges, convolution.weight_numel, generator=generator).to(dtype)
    sender, receiver = graph.edge_index[0], graph.edge_index[1]
    tables = _kernel_tables(fused)

    with torch.no_grad():
        edge_sh = model.spherical_harmonics(edge_vectors(graph))

        def eager() -> torch.Tensor:
            return convolution.aggregate(features, edge_sh, weights, sender, receiver, num_nodes)

        def compiled() -> torch.Tensor:
            order, _, starts = incoming_edge_offsets(receiver, num_nodes)
            starts = torch.cat([starts, starts.new_tensor([num_edges])])
            x = features.index_select(1, fused.input_permutation)
            coupling = torch.mm(edge_sh, fused.coupling)
            summed = kernel.aggregate(x, coupling, weights, sender, order, starts, *tables)
            return summed.index_select(1, fused.output_permutation)

        reference, result = eager(), compiled()
        error = float((result - reference).abs().max() / reference.abs().max())
        flops = convolution_flops(convolution, num_edges)
        matmul = harness.matmul_flops(args.dtype)
        print(f"MACE {args.hidden}, last interaction, water box ({num_edges} edges), "
              f"{args.dtype}, {args.threads} threads; max |difference| / max |A| = {error:.1e}")
        for name, function in (("eager aggregate", eager), ("compiled kernel", compiled)):
            seconds = median_seconds(function, args.repeats)
            print(f"{name:16s} {1e3 * seconds:7.1f} ms  {flops / seconds / 1e9:6.1f} GFLOP/s = "
                  f"{100 * flops / seconds / matmul:5.1f} % of matmul {matmul / 1e9:.0f} GFLOP/s")

    # forward + backward (dL/dA = G given): gradients for the node features, the harmonics and
    # the weights, as forces need them; the eager path through autograd
    grad = torch.randn(num_nodes, convolution.irreps_out.dim, generator=generator).to(dtype)
    leaves = [t.clone().requires_grad_(True) for t in (features, edge_sh, weights)]

    def eager_backward() -> list[torch.Tensor]:
        summed = convolution.aggregate(leaves[0], leaves[1], leaves[2], sender, receiver, num_nodes)
        return list(torch.autograd.grad(summed, leaves, grad))

    def compiled_backward() -> list[torch.Tensor]:
        order, _, starts = incoming_edge_offsets(receiver, num_nodes)
        starts = torch.cat([starts, starts.new_tensor([num_edges])])
        out_order, _, out_starts = incoming_edge_offsets(sender, num_nodes)
        out_starts = torch.cat([out_starts, out_starts.new_tensor([num_edges])])
        x = features.index_select(1, fused.input_permutation)
        coupling = torch.mm(edge_sh, fused.coupling)
        kernel.aggregate(x, coupling, weights, sender, order, starts, *tables)
        grad_summed = torch.empty_like(grad).index_copy_(1, fused.output_permutation, grad)
        grad_x, grad_coupling, grad_weights = kernel.aggregate_backward(
            grad_summed, x, coupling, weights, sender, receiver, out_order, out_starts, *tables
        )
        grad_features = torch.empty_like(features).index_copy_(1, fused.input_permutation, grad_x)
        return [grad_features, torch.mm(grad_coupling, fused.coupling.t()), grad_weights]

    errors = [float((a - b).abs().max() / b.abs().max())
              for a, b in zip(compiled_backward(), eager_backward(), strict=True)]
    print("forward + backward (gradients for features, harmonics, weights); max |difference| / "
          "max |gradient|: " + ", ".join(f"{e:.1e}" for e in errors))
    for name, function in (("eager, autograd", eager_backward),
                           ("compiled kernels", compiled_backward)):
        seconds = median_seconds(function, args.repeats)
        print(f"{name:16s} {1e3 * seconds:7.1f} ms")

    _whole_model(model, graph, kernel, args.repeats)


def _kernel_tables(fused) -> tuple:
    """The experiment's group tables of a fused convolution module (see KERNEL)."""
    weight_offsets = [fused.weight_starts[t] for t in fused.weight_order]
    if len(weight_offsets) != sum(fused.group_paths):
        raise SystemExit("experiment: one input block per unit only")
    unit_offsets = _offsets(fused.block_sizes)
    return (
        [unit_offsets[b] for b in fused.group_block], fused.group_dim_in, fused.group_dim_out,
        fused.group_paths, fused.group_mul, _offsets(fused.group_coupling_sizes),
        _offsets(fused.group_message_sizes), weight_offsets, sum(fused.group_message_sizes),
    )  # fmt: skip


def _whole_model(model, graph, kernel, repeats: int) -> None:
    """Energy + forces of `model` (eager `ForceField`) with its convolutions as they are, then
    with each convolution's `aggregate_radial` through the compiled kernels (an autograd
    Function; the radial weights [E, weight_numel] formed by autograd outside it)."""
    import torch
    from tp_core import median_seconds

    from equimd.potentials.forcefield import ForceField
    from equimd.potentials.nn.edge_pairs import per_edge
    from equimd.potentials.nn.edge_slots import incoming_edge_offsets

    class KernelSums(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, edge_sh, weights, fused, tables, sender, receiver, num_nodes):
            num_edges = sender.shape[0]
            order, _, starts = incoming_edge_offsets(receiver, num_nodes)
            starts = torch.cat([starts, starts.new_tensor([num_edges])])
            x = x.index_select(1, fused.input_permutation)
            coupling = torch.mm(edge_sh, fused.coupling)
            summed = kernel.aggregate(x, coupling, weights, sender, order, starts, *tables)
            ctx.save_for_backward(x, coupling, weights, sender, receiver)
            ctx.fused, ctx.tables, ctx.num_nodes = fused, tables, num_nodes
            return summed.index_select(1, fused.output_permutation)

        @staticmethod
        def backward(ctx, grad):
            x, coupling, weights, sender, receiver = ctx.saved_tensors
            fused, num_edges = ctx.fused, sender.shape[0]
            out_order, _, out_starts = incoming_edge_offsets(sender, ctx.num_nodes)
            out_starts = torch.cat([out_starts, out_starts.new_tensor([num_edges])])
            grad = torch.empty_like(grad).index_copy_(1, fused.output_permutation, grad.contiguous())
            grad_x, grad_coupling, grad_weights = kernel.aggregate_backward(
                grad, x, coupling, weights, sender, receiver, out_order, out_starts, *ctx.tables
            )
            grad_x = torch.empty_like(grad_x).index_copy_(1, fused.input_permutation, grad_x)
            if weights.shape[0] != num_edges:  # a row per pair: the two edges' gradients summed
                grad_weights = grad_weights.view(-1, 2, weights.shape[1]).sum(dim=1)
            return (grad_x, torch.mm(grad_coupling, fused.coupling.t()), grad_weights,
                    None, None, None, None, None)

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    forcefield = ForceField(model)

    def evaluate() -> torch.Tensor:
        return forcefield(graph)["forces"]

    reference = evaluate().detach()
    eager_seconds = median_seconds(evaluate, repeats)
    for interaction in model.interactions:
        convolution = interaction.convolution
        fused, tables = convolution.tp, _kernel_tables(convolution.tp)

        def routed(x, edge_sh, hidden, last_weight, sender, receiver, num_nodes, paired=False,
                   _fused=fused, _tables=tables):
            weights = torch.mm(hidden, last_weight)  # a row per edge, or per pair (pair order)
            if not pair_rows:
                weights = per_edge(weights, sender.shape[0]).contiguous()
            return KernelSums.apply(x, edge_sh, weights, _fused, _tables, sender, receiver,
                                    num_nodes)

        convolution.aggregate_radial = routed
    print(f"whole model, energy + forces (eager ForceField): {1e3 * eager_seconds:.1f} ms")
    for pair_rows in (False, True):  # read by `routed`
        forces = evaluate().detach()
        kernel_seconds = median_seconds(evaluate, repeats)
        error = float((forces - reference).abs().max() / reference.abs().max())
        print(f"  convolutions through the kernels, weights per {'pair' if pair_rows else 'edge'}: "
              f"{1e3 * kernel_seconds:.1f} ms ({eager_seconds / kernel_seconds:.2f}x); "
              f"max |force difference| / max |F| = {error:.1e}")


if __name__ == "__main__":
    main()
