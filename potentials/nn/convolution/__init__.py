"""The edge convolution h_i ⊗ Y(r̂_ij), weighted per edge, and its backends.

One module (`EdgeConvolution`), several backends (`BACKENDS`, by name), chosen for a built
model with `apply_convolution_backend(model, name)`. `e3nn` is the reference backend; the fast
ones are tested against it (equal outputs, equal forces, energy conservation;
tests/test_tensor_product_backends.py).

Both NequIP and MACE use the same "uvu" convolution: every input channel u of irrep l1 is
coupled with the spherical harmonics Y^l2 into every allowed l3 (no channel mixing), with one
weight per (edge, path, channel) produced by a radial MLP.

Backends (all share `irreps_out`, `weight_numel`, the weight layout and the output layout, and
hold no weights of their own, so models and checkpoints are interchangeable between them):

- ``"e3nn"``:  `reference.E3nnConvolution`, e3nn's `TensorProduct` (the reference).
- ``"fused"``: `fused.FusedUVUConvolution`: per-edge coupling matrices from one matmul,
  channels batched in one bmm per input block, fused gather → convolution → scatter in
  `aggregate` (see docs/performance.md). The default.
- ``"so2"``:   `so2.SO2UVUConvolution`: the SO(2)/eSCN convolution in each edge's frame. Exact
  when `edge_sh` are the spherical harmonics of the edge vectors (as in NequIP and MACE), so
  it is listed in `GEOMETRIC_BACKENDS`; see docs/performance.md ("SO(2) convolution").
- ``"cueq"``:  `cueq.CueqUVUConvolution`: NVIDIA cuEquivariance's segmented polynomial built
  from e3nn's coefficients; its fused CUDA kernels on a GPU with
  `cuequivariance-ops-torch-cu12`, plain PyTorch otherwise. Optional (`equimd[cueq]`):
  `available_backends()` lists it only when `cuequivariance_torch` imports.
- ``"compiled"``: `compiled.CompiledUVUConvolution`: the fused backend with `aggregate`'s
  receiver sums in equimd's C++ kernel (`csrc/receiver_sums.cpp`, TorchScript operators
  ``equimd::receiver_sums``), built per host by `kernel_library` (`equimd kernels build`).
  CPU, eval mode; elsewhere (GPU, training, symbolic tracing) the fused path. Optional:
  listed by `available_backends()` only where the library is built.

The fused and SO(2) backends share edge-chunked aggregation (`edge_aggregation`).
"""

from equimd.potentials.nn.convolution.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    GEOMETRIC_BACKENDS,
    OPTIONAL_BACKENDS,
    available_backends,
    check_backend,
)
from equimd.potentials.nn.convolution.edge_convolution import (
    EdgeConvolution,
    convolution_irreps,
)
from equimd.potentials.nn.convolution.modifier import (
    apply_convolution_backend,
    convolution_backend,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "GEOMETRIC_BACKENDS",
    "OPTIONAL_BACKENDS",
    "EdgeConvolution",
    "apply_convolution_backend",
    "available_backends",
    "check_backend",
    "convolution_backend",
    "convolution_irreps",
]
