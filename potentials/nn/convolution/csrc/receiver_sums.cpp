// equimd's compiled tensor-product core: the "uvu" convolution summed per receiver, CPU.
//
// A[n, g, p, k, u] = Σ_{e: receiver(e) = n} w[row(e), g, p, u] Σ_i M[e, g, p, k, i] x[sender(e), g, i, u]
//
// for every group g of paths sharing (input unit, d1, d3) (potentials/nn/convolution/fused.py,
// docstring): x [N, Din] node features in the fused backend's m-major unit layout, M = coupling
// [E, C] (the per-edge coupling matrices, (p, k, i) per group), w = weights [R, W] (columns
// per path as weight_segments say) with a row per edge (R = E) or per pair of edges in pair order
// (R = E / 2: edges 2r and 2r + 1 read row r). Output [N, Σ_g P·d3·U] ((p, k, u) per group).
// Each receiver's edges are walked in one thread (CSR by receiver, no atomics); w·x lives in a
// scratch row of d1·U values per path: no [E, ·] or padded intermediate is formed.
//
// groups: five integers per group: the unit's first column in x, d1, d3, P, U.
// weight_segments: three integers per segment (column in w, length, first channel u0): for
// each group and path in order, the segments that hold its U weights (u0 = 0, then
// contiguous). One segment per path when the weights are in group order; the fused backend's
// units of several input blocks (1o and 1e) read e3nn's weight order in one segment per block.
//
// Ops (TORCH_LIBRARY "equimd"): receiver_sums (CPU kernel + autograd kernel) and
// receiver_sums_backward (dL/dx, dL/dM, dL/dw for dL/dA). The backward has no derivative of its
// own: a second derivative (training with forces in the loss, Hessians) raises; equimd's
// "compiled" backend uses the eager path while training.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

using at::Tensor;

// a run of `length` weight columns from `column` on, for channels u0 .. u0 + length - 1
struct Segment {
  int64_t column, length, u0;
};

struct Group {
  int64_t unit, d1, d3, paths, mul;       // from the `groups` argument
  int64_t coupling, output;               // first column of the group in M and A
  std::vector<std::vector<Segment>> path_weights;  // per path: where its U weights are
};

std::vector<Group> parse_groups(c10::IntArrayRef groups, c10::IntArrayRef segments,
                                int64_t x_dim, int64_t coupling_dim, int64_t weight_dim) {
  TORCH_CHECK(groups.size() % 5 == 0 && !groups.empty(),
              "equimd::receiver_sums: groups must hold five integers per group");
  TORCH_CHECK(segments.size() % 3 == 0,
              "equimd::receiver_sums: weight_segments must hold three integers per segment");
  std::vector<Group> parsed;
  int64_t coupling = 0, output = 0;
  size_t next = 0;  // next segment
  for (size_t g = 0; g < groups.size(); g += 5) {
    Group group{groups[g], groups[g + 1], groups[g + 2], groups[g + 3], groups[g + 4],
                coupling, output, {}};
    TORCH_CHECK(group.d1 > 0 && group.d3 > 0 && group.paths > 0 && group.mul > 0 &&
                    group.unit >= 0 && group.unit + group.d1 * group.mul <= x_dim,
                "equimd::receiver_sums: group ", g / 5, " does not fit the node features");
    for (int64_t p = 0; p < group.paths; ++p) {
      std::vector<Segment> path;
      int64_t covered = 0;
      while (covered < group.mul) {
        TORCH_CHECK(next + 3 <= segments.size(),
                    "equimd::receiver_sums: weight_segments end before group ", g / 5);
        Segment segment{segments[next], segments[next + 1], segments[next + 2]};
        next += 3;
        TORCH_CHECK(segment.u0 == covered && segment.length > 0 &&
                        segment.column >= 0 && segment.column + segment.length <= weight_dim,
                    "equimd::receiver_sums: weight segment ", next / 3 - 1, " is invalid");
        covered += segment.length;
        path.push_back(segment);
      }
      TORCH_CHECK(covered == group.mul, "equimd::receiver_sums: weight segments of group ",
                  g / 5, " overrun its channels");
      group.path_weights.push_back(path);
    }
    coupling += group.paths * group.d3 * group.d1;
    output += group.paths * group.d3 * group.mul;
    parsed.push_back(group);
  }
  TORCH_CHECK(next == segments.size(), "equimd::receiver_sums: unused weight segments");
  TORCH_CHECK(coupling == coupling_dim, "equimd::receiver_sums: coupling has ", coupling_dim,
              " columns, the groups need ", coupling);
  return parsed;
}

int64_t output_dim(const std::vector<Group>& groups) {
  const Group& last = groups.back();
  return last.output + last.paths * last.d3 * last.mul;
}

int64_t scratch_size(const std::vector<Group>& groups) {
  int64_t size = 1;
  for (const Group& g : groups) size = std::max(size, g.d1 * g.mul);
  return size;
}

// CSR of `index` [E] over `num_nodes` nodes: starts [N + 1] and the edges in node order
// (stable: each node's edges in their order).
void edges_by_node(const int64_t* index, int64_t num_edges, int64_t num_nodes,
                   std::vector<int64_t>& starts, std::vector<int64_t>& order) {
  starts.assign(num_nodes + 1, 0);
  for (int64_t e = 0; e < num_edges; ++e) {
    TORCH_CHECK(index[e] >= 0 && index[e] < num_nodes, "equimd::receiver_sums: edge ", e,
                " names node ", index[e], ", outside 0..", num_nodes - 1);
    ++starts[index[e] + 1];
  }
  for (int64_t n = 0; n < num_nodes; ++n) starts[n + 1] += starts[n];
  order.resize(num_edges);
  std::vector<int64_t> next(starts.begin(), starts.end() - 1);
  for (int64_t e = 0; e < num_edges; ++e) order[next[index[e]]++] = e;
}

// row shift of the weights: 0 with a row per edge, 1 with a row per pair of edges
int weight_shift(const Tensor& weights, int64_t num_edges) {
  if (weights.size(0) == num_edges) return 0;
  TORCH_CHECK(num_edges % 2 == 0 && weights.size(0) * 2 == num_edges,
              "equimd::receiver_sums: weights need a row per edge (", num_edges,
              ") or per pair of edges, got ", weights.size(0));
  return 1;
}

void check_inputs(const Tensor& x, const Tensor& coupling, const Tensor& weights,
                  const Tensor& sender, const Tensor& receiver) {
  for (const Tensor* t : {&x, &coupling, &weights, &sender, &receiver})
    TORCH_CHECK(t->device().is_cpu(), "equimd::receiver_sums runs on CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && coupling.dim() == 2 && weights.dim() == 2,
              "equimd::receiver_sums: x, coupling and weights are matrices");
  TORCH_CHECK(coupling.scalar_type() == x.scalar_type() &&
                  weights.scalar_type() == x.scalar_type(),
              "equimd::receiver_sums: x, coupling and weights need one dtype");
  TORCH_CHECK(sender.scalar_type() == at::kLong && receiver.scalar_type() == at::kLong,
              "equimd::receiver_sums: sender and receiver are int64");
  TORCH_CHECK(sender.numel() == coupling.size(0) && receiver.numel() == coupling.size(0),
              "equimd::receiver_sums: sender, receiver and coupling need one row per edge");
}

template <typename T>
void forward_kernel(const T* X, const T* M, const T* Wt, const int64_t* sender,
                    const std::vector<int64_t>& starts, const std::vector<int64_t>& order,
                    T* A, int64_t num_nodes, int64_t x_dim, int64_t m_dim, int64_t w_dim,
                    int64_t a_dim, int shift, const std::vector<Group>& groups) {
  const int64_t scratch = scratch_size(groups);
  at::parallel_for(0, num_nodes, 1, [&](int64_t n0, int64_t n1) {
    std::vector<T> wx(scratch);
    for (int64_t n = n0; n < n1; ++n) {
      T* a_node = A + n * a_dim;
      for (int64_t j = starts[n]; j < starts[n + 1]; ++j) {
        const int64_t e = order[j], s = sender[e];
        for (const Group& g : groups) {
          const int64_t d1 = g.d1, U = g.mul;
          const T* x = X + s * x_dim + g.unit;
          const T* m_edge = M + e * m_dim + g.coupling;
          const T* w_row = Wt + (e >> shift) * w_dim;
          for (int64_t p = 0; p < g.paths; ++p) {
            for (const Segment& sg : g.path_weights[p]) {  // wx[i, u] = w[u] x[i, u]
              const T* w = w_row + sg.column;
              for (int64_t i = 0; i < d1; ++i) {
                T* wxi = wx.data() + i * U + sg.u0;
                const T* xi = x + i * U + sg.u0;
#pragma omp simd
                for (int64_t v = 0; v < sg.length; ++v) wxi[v] = w[v] * xi[v];
              }
            }
            for (int64_t k = 0; k < g.d3; ++k) {  // a[k, u] += Σ_i M[k, i] wx[i, u]
              T* a = a_node + g.output + (p * g.d3 + k) * U;
              const T* mk = m_edge + (p * g.d3 + k) * d1;
              const T* w0 = wx.data();
              if (d1 == 1) {
                const T c0 = mk[0];
#pragma omp simd
                for (int64_t u = 0; u < U; ++u) a[u] += c0 * w0[u];
              } else if (d1 == 3) {
                const T c0 = mk[0], c1 = mk[1], c2 = mk[2];
                const T *w1 = w0 + U, *w2 = w1 + U;
#pragma omp simd
                for (int64_t u = 0; u < U; ++u) a[u] += c0 * w0[u] + c1 * w1[u] + c2 * w2[u];
              } else {
                for (int64_t i = 0; i < d1; ++i) {
                  const T c = mk[i];
                  const T* wxi = w0 + i * U;
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

// dL/dw and dL/dM, parallel over weight rows (both edges of a pair in one thread):
// dL/dw[row, p, u] = Σ_{e of row} Σ_k G[r(e), p, k, u] Σ_i M[e, p, k, i] x[s(e), i, u],
// dL/dM[e, p, k, i] = Σ_u G[r(e), p, k, u] w[row, p, u] x[s(e), i, u].
// dL/dx, parallel over senders (CSR by sender, no atomics):
// dL/dx[s, i, u] = Σ_{e: sender(e) = s} Σ_{p, k} M[e, p, k, i] w[row, p, u] G[r(e), p, k, u].
template <typename T>
void backward_kernel(const T* G, const T* X, const T* M, const T* Wt, const int64_t* sender,
                     const int64_t* receiver, const std::vector<int64_t>& out_starts,
                     const std::vector<int64_t>& out_order, T* GX, T* GM, T* GW,
                     int64_t num_nodes, int64_t num_rows, int64_t x_dim, int64_t m_dim,
                     int64_t w_dim, int64_t a_dim, int shift, const std::vector<Group>& groups) {
  at::parallel_for(0, num_rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      for (int64_t e = row << shift; e < (row + 1) << shift; ++e) {
        const int64_t s = sender[e], r = receiver[e];
        for (const Group& g : groups) {
          const int64_t d1 = g.d1, U = g.mul;
          const T* x = X + s * x_dim + g.unit;
          const T* m_edge = M + e * m_dim + g.coupling;
          T* gm_edge = GM + e * m_dim + g.coupling;
          for (int64_t p = 0; p < g.paths; ++p) {
            for (int64_t k = 0; k < g.d3; ++k) {
              const T* gk = G + r * a_dim + g.output + (p * g.d3 + k) * U;
              const T* mk = m_edge + (p * g.d3 + k) * d1;
              T* gmk = gm_edge + (p * g.d3 + k) * d1;
              for (int64_t i = 0; i < d1; ++i) {
                const T c = mk[i];
                T dot = 0;
                for (const Segment& sg : g.path_weights[p]) {
                  const T* w = Wt + row * w_dim + sg.column;
                  T* gw = GW + row * w_dim + sg.column;
                  const T* gks = gk + sg.u0;
                  const T* xi = x + i * U + sg.u0;
#pragma omp simd reduction(+ : dot)
                  for (int64_t v = 0; v < sg.length; ++v) {
                    const T gx = gks[v] * xi[v];
                    gw[v] += c * gx;
                    dot += gx * w[v];
                  }
                }
                gmk[i] = dot;
              }
            }
          }
        }
      }
    }
  });
  const int64_t scratch = scratch_size(groups);
  at::parallel_for(0, num_nodes, 1, [&](int64_t n0, int64_t n1) {
    std::vector<T> gw(scratch);
    for (int64_t s = n0; s < n1; ++s) {
      for (int64_t j = out_starts[s]; j < out_starts[s + 1]; ++j) {
        const int64_t e = out_order[j], r = receiver[e];
        for (const Group& g : groups) {
          const int64_t d1 = g.d1, U = g.mul;
          T* gx = GX + s * x_dim + g.unit;
          const T* m_edge = M + e * m_dim + g.coupling;
          const T* w_row = Wt + (e >> shift) * w_dim;
          for (int64_t p = 0; p < g.paths; ++p) {
            for (int64_t k = 0; k < g.d3; ++k) {
              const T* gk = G + r * a_dim + g.output + (p * g.d3 + k) * U;
              const T* mk = m_edge + (p * g.d3 + k) * d1;
              for (const Segment& sg : g.path_weights[p]) {  // gw[u] = G[k, u] w[u]
                const T* w = w_row + sg.column;
                T* gws = gw.data() + sg.u0;
                const T* gks = gk + sg.u0;
#pragma omp simd
                for (int64_t v = 0; v < sg.length; ++v) gws[v] = gks[v] * w[v];
              }
              for (int64_t i = 0; i < d1; ++i) {
                const T c = mk[i];
                T* gxi = gx + i * U;
#pragma omp simd
                for (int64_t u = 0; u < U; ++u) gxi[u] += c * gw[u];
              }
            }
          }
        }
      }
    }
  });
}

Tensor receiver_sums_cpu(const Tensor& x_in, const Tensor& coupling_in, const Tensor& weights_in,
                         const Tensor& sender_in, const Tensor& receiver_in, int64_t num_nodes,
                         c10::IntArrayRef group_list, c10::IntArrayRef segments) {
  check_inputs(x_in, coupling_in, weights_in, sender_in, receiver_in);
  const Tensor x = x_in.contiguous(), coupling = coupling_in.contiguous();
  const Tensor weights = weights_in.contiguous();
  const Tensor sender = sender_in.contiguous(), receiver = receiver_in.contiguous();
  const int64_t num_edges = coupling.size(0);
  const auto groups = parse_groups(group_list, segments, x.size(1), coupling.size(1), weights.size(1));
  const int shift = weight_shift(weights, num_edges);
  TORCH_CHECK(num_nodes >= 0, "equimd::receiver_sums: num_nodes < 0");
  const int64_t a_dim = output_dim(groups);
  Tensor out = at::zeros({num_nodes, a_dim}, x.options());
  if (num_edges == 0) return out;
  std::vector<int64_t> starts, order;
  edges_by_node(receiver.data_ptr<int64_t>(), num_edges, num_nodes, starts, order);
  const int64_t* s = sender.data_ptr<int64_t>();
  for (int64_t e = 0; e < num_edges; ++e)
    TORCH_CHECK(s[e] >= 0 && s[e] < x.size(0), "equimd::receiver_sums: edge ", e,
                " has sender ", s[e], ", outside 0..", x.size(0) - 1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "equimd::receiver_sums", [&] {
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), coupling.data_ptr<scalar_t>(),
                             weights.data_ptr<scalar_t>(), s, starts, order,
                             out.data_ptr<scalar_t>(), num_nodes, x.size(1), coupling.size(1),
                             weights.size(1), a_dim, shift, groups);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor> receiver_sums_backward_cpu(
    const Tensor& grad_in, const Tensor& x_in, const Tensor& coupling_in,
    const Tensor& weights_in, const Tensor& sender_in, const Tensor& receiver_in,
    int64_t num_nodes, c10::IntArrayRef group_list, c10::IntArrayRef segments) {
  check_inputs(x_in, coupling_in, weights_in, sender_in, receiver_in);
  const Tensor x = x_in.contiguous(), coupling = coupling_in.contiguous();
  const Tensor weights = weights_in.contiguous(), grad = grad_in.contiguous();
  const Tensor sender = sender_in.contiguous(), receiver = receiver_in.contiguous();
  const int64_t num_edges = coupling.size(0);
  const auto groups = parse_groups(group_list, segments, x.size(1), coupling.size(1), weights.size(1));
  const int shift = weight_shift(weights, num_edges);
  const int64_t a_dim = output_dim(groups);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == num_nodes && grad.size(1) == a_dim,
              "equimd::receiver_sums_backward: grad must be [num_nodes, ", a_dim, "]");
  Tensor grad_x = at::zeros_like(x), grad_coupling = at::zeros_like(coupling);
  Tensor grad_weights = at::zeros_like(weights);
  if (num_edges == 0) return {grad_x, grad_coupling, grad_weights};
  std::vector<int64_t> out_starts, out_order;
  edges_by_node(sender.data_ptr<int64_t>(), num_edges, x.size(0), out_starts, out_order);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "equimd::receiver_sums_backward", [&] {
    backward_kernel<scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                              coupling.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
                              sender.data_ptr<int64_t>(), receiver.data_ptr<int64_t>(),
                              out_starts, out_order, grad_x.data_ptr<scalar_t>(),
                              grad_coupling.data_ptr<scalar_t>(),
                              grad_weights.data_ptr<scalar_t>(), x.size(0), weights.size(0),
                              x.size(1), coupling.size(1), weights.size(1), a_dim, shift, groups);
  });
  return {grad_x, grad_coupling, grad_weights};
}

class ReceiverSums : public torch::autograd::Function<ReceiverSums> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                        const Tensor& coupling, const Tensor& weights, const Tensor& sender,
                        const Tensor& receiver, int64_t num_nodes, c10::IntArrayRef groups,
                        c10::IntArrayRef segments) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("equimd::receiver_sums", "")
                         .typed<decltype(receiver_sums_cpu)>();
    ctx->save_for_backward({x, coupling, weights, sender, receiver});
    ctx->saved_data["num_nodes"] = num_nodes;
    ctx->saved_data["groups"] = groups.vec();
    ctx->saved_data["segments"] = segments.vec();
    return op.call(x, coupling, weights, sender, receiver, num_nodes, groups, segments);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!c10::GradMode::is_enabled(),
                "equimd::receiver_sums (tensor-product backend 'compiled') has no second "
                "derivative (create_graph=True: training on forces, Hessians); use backend "
                "'fused' for that");
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("equimd::receiver_sums_backward", "")
                         .typed<decltype(receiver_sums_backward_cpu)>();
    const auto saved = ctx->get_saved_variables();
    const int64_t num_nodes = ctx->saved_data["num_nodes"].toInt();
    const auto groups = ctx->saved_data["groups"].toIntVector();
    const auto segments = ctx->saved_data["segments"].toIntVector();
    const Tensor none;  // no gradient for the indices and the tables
    const Tensor& grad = grads[0];
    if (!grad.defined()) return {none, none, none, none, none, none, none, none};
    auto [grad_x, grad_coupling, grad_weights] = op.call(
        grad, saved[0], saved[1], saved[2], saved[3], saved[4], num_nodes, groups, segments);
    return {grad_x, grad_coupling, grad_weights, none, none, none, none, none};
  }
};

Tensor receiver_sums_autograd(const Tensor& x, const Tensor& coupling, const Tensor& weights,
                              const Tensor& sender, const Tensor& receiver, int64_t num_nodes,
                              c10::IntArrayRef groups, c10::IntArrayRef segments) {
  return ReceiverSums::apply(x, coupling, weights, sender, receiver, num_nodes, groups,
                             segments);
}

}  // namespace

TORCH_LIBRARY(equimd, m) {
  m.def("receiver_sums(Tensor x, Tensor coupling, Tensor weights, Tensor sender, "
        "Tensor receiver, int num_nodes, int[] groups, int[] weight_segments) -> Tensor");
  m.def("receiver_sums_backward(Tensor grad, Tensor x, Tensor coupling, Tensor weights, "
        "Tensor sender, Tensor receiver, int num_nodes, int[] groups, int[] weight_segments) -> "
        "(Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(equimd, CPU, m) {
  m.impl("receiver_sums", receiver_sums_cpu);
  m.impl("receiver_sums_backward", receiver_sums_backward_cpu);
}

TORCH_LIBRARY_IMPL(equimd, Autograd, m) { m.impl("receiver_sums", receiver_sums_autograd); }
