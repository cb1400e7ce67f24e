"""The convolution backends by name.

Every backend class is built as ``cls(irreps_node, irreps_sh, irreps_out, paths)`` (paths:
(i_in1, i_in2, i_out, path_weight) in e3nn's weight order), holds no weights, and has
`forward(node_features [E, ·], edge_sh [E, ·], weights [E, weight_numel]) -> [E, irreps_out.dim]`
and `aggregate(node_features [N, ·], edge_sh, weights, sender [E], receiver [E], num_nodes)
-> [N, irreps_out.dim]` in e3nn's layouts.
"""

from __future__ import annotations

from torch import nn

from equimd.errors import SettingsError
from equimd.potentials.nn.convolution import cueq, kernel_library
from equimd.potentials.nn.convolution.compiled import CompiledUVUConvolution
from equimd.potentials.nn.convolution.cueq import CueqUVUConvolution
from equimd.potentials.nn.convolution.fused import FusedUVUConvolution
from equimd.potentials.nn.convolution.reference import E3nnConvolution
from equimd.potentials.nn.convolution.so2 import SO2UVUConvolution

BACKENDS: dict[str, type[nn.Module]] = {
    "e3nn": E3nnConvolution,  # the reference
    "fused": FusedUVUConvolution,
    "so2": SO2UVUConvolution,
    "cueq": CueqUVUConvolution,
    "compiled": CompiledUVUConvolution,  # fused + equimd's C++ kernel (`equimd kernels build`)
}
DEFAULT_BACKEND = "fused"
# exact only when edge_sh are the spherical harmonics of the edge vectors (as in every model);
# the others are exact for any edge_sh
GEOMETRIC_BACKENDS = ("so2",)
# need an optional package (cuequivariance-torch) or equimd's compiled kernel library
OPTIONAL_BACKENDS = ("cueq", "compiled")


def available_backends() -> tuple[str, ...]:
    """Backends usable in this environment (optional ones only when their package imports or
    their library is built for this host)."""
    missing = (() if cueq.HAS_CUEQ else ("cueq",)) + (
        () if kernel_library.available() else ("compiled",)
    )
    return tuple(name for name in BACKENDS if name not in missing)


def check_backend(backend: str) -> None:
    """Raise `SettingsError` (a ValueError) unless `backend` names a backend of `BACKENDS`."""
    if backend not in BACKENDS:
        raise SettingsError(
            f"unknown convolution backend {backend!r}; available: {list(BACKENDS)}"
        )
