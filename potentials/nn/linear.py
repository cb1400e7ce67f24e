"""Fast equivariant linear layers with e3nn's weights, numbers and state dicts.

`FastLinear` is an `e3nn.o3.Linear`, and `FastScalarTensorProduct` an
`e3nn.o3.FullyConnectedTensorProduct` whose second input is made of scalars (one-hot species:
the NequIP self-connection, the MACE skip connection): same constructor, same weights, same
state-dict keys, same numbers (tests/test_tensor_product_backends.py); only `forward` differs.
Build them with `linear(...)` and `scalar_tensor_product(...)`, which return the e3nn module for
the variants not implemented here (biases, external or unshared weights).

e3nn evaluates one einsum per path on a `narrow`ed slice of the input; in autograd every slice
gradient is a zero-filled tensor of the full input size, and the many small operations dominate
small systems. Here all paths into outputs of one irrep type τ (dimension d) are one matmul

    X_τ [N·d, R_τ] @ W_τ [R_τ, C_τ]          ("m-major": the 2l+1 components become rows)

where R_τ counts the input channels of type τ (times the scalar channels for the tensor product,
whose rows are x[n, u, k]·a[n, v]), C_τ the output channels, and W_τ is gathered from e3nn's flat
weight vector with the path normalisation folded in (exactly, from float64 values). One index
permutation maps e3nn's [U, 2l+1] layout to the rows and back.
"""

from __future__ import annotations

from math import sqrt
from typing import List

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.shapes import is_symbolic_size


class _TypeTables:
    """Index tables that evaluate a layer type by type (plain Python, construction only).

    paths: (i_in, i_out, rows_in, coefficient, weight_offset) with `rows_in` the input channels
    of the path (for the tensor product: mul_in1 · mul_in2 rows, v fastest) and e3nn's weights of
    the path laid out as [rows_in, mul_out] from `weight_offset` on.
    """

    def __init__(
        self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, paths: list[tuple[int, int, int, float, int]]
    ) -> None:
        in_offsets = [s.start for s in irreps_in.slices()]
        out_offsets = [s.start for s in irreps_out.slices()]
        types: list[o3.Irrep] = []
        for _, i_out, *_ in paths:
            if irreps_out[i_out].ir not in types:
                types.append(irreps_out[i_out].ir)
        self.input_index: list[int] = []
        self.input_sizes: list[int] = []
        self.weight_index: list[int] = []
        self.coefficient: list[float] = []
        self.weight_sizes: list[int] = []
        self.dims: list[int] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.output_index = [-1] * irreps_out.dim
        offset = 0
        for ir in types:
            type_paths = [p for p in paths if irreps_out[p[1]].ir == ir]
            row_start: dict[int, int] = {}
            col_start: dict[int, int] = {}
            rows = cols = 0
            for i_in, _, rows_in, *_ in type_paths:
                if i_in not in row_start:
                    row_start[i_in] = rows
                    rows += rows_in
            for _, i_out, *_ in type_paths:
                if i_out not in col_start:
                    col_start[i_out] = cols
                    cols += irreps_out[i_out].mul
            index, coefficient = [0] * (rows * cols), [0.0] * (rows * cols)
            for i_in, i_out, rows_in, c, weight_offset in type_paths:
                mul_out = irreps_out[i_out].mul
                for r in range(rows_in):
                    for w in range(mul_out):
                        flat = (row_start[i_in] + r) * cols + col_start[i_out] + w
                        index[flat] = weight_offset + r * mul_out + w
                        coefficient[flat] = c
            d = ir.dim
            # X_τ rows (n, k), columns: input channels of each block, in row_start order
            columns = []
            for k in range(d):
                for i_in in row_start:
                    mul_in = irreps_in[i_in].mul
                    columns += [in_offsets[i_in] + u * d + k for u in range(mul_in)]
            for i_out, start in col_start.items():
                for w in range(irreps_out[i_out].mul):
                    for k in range(d):
                        self.output_index[out_offsets[i_out] + w * d + k] = (
                            offset + k * cols + start + w
                        )
            self.input_index += columns
            self.input_sizes.append(len(columns))
            self.weight_index += index
            self.coefficient += coefficient
            self.weight_sizes.append(rows * cols)
            self.dims.append(d)
            self.rows.append(rows)
            self.cols.append(cols)
            offset += d * cols
        # output blocks no path reaches are zero (as in e3nn): they read one zero column
        self.zero_outputs = any(s < 0 for s in self.output_index)
        self.output_index = [offset if s < 0 else s for s in self.output_index]


def _register_tables(module: nn.Module, tables: _TypeTables) -> None:
    """Tables as attributes and non-persistent buffers (moved with the module, never saved)."""
    module.register_buffer("type_input_index", torch.tensor(tables.input_index), persistent=False)
    module.register_buffer("type_weight_index", torch.tensor(tables.weight_index), persistent=False)
    module.register_buffer("type_output_index", torch.tensor(tables.output_index), persistent=False)
    module._coefficient_exact = torch.tensor(tables.coefficient, dtype=torch.float64)
    module.register_buffer(
        "type_coefficient",
        module._coefficient_exact.to(torch.get_default_dtype()),
        persistent=False,
    )
    module.type_input_sizes = tables.input_sizes
    module.type_weight_sizes = tables.weight_sizes
    module.type_dims = tables.dims
    module.type_rows = tables.rows
    module.type_cols = tables.cols
    module.type_zero_outputs = tables.zero_outputs


def _exact_coefficients(module: nn.Module) -> None:
    """After a dtype/device change: coefficients from their float64 values (no float32 rounding)."""
    module.type_coefficient = module._coefficient_exact.to(
        device=module.type_coefficient.device, dtype=module.type_coefficient.dtype
    )


class FastLinear(o3.Linear):
    """`e3nn.o3.Linear` with shared internal weights and no biases; faster `forward`.

    features: [..., irreps_in.dim] -> [..., irreps_out.dim]
    """

    __jit_ignored_attributes__ = ["_coefficient_exact"]

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, **kwargs) -> None:
        super().__init__(irreps_in, irreps_out, **kwargs)
        paths = []
        offset = 0
        for ins in self.instructions:
            mul_in, mul_out = ins.path_shape
            paths.append((ins.i_in, ins.i_out, mul_in, ins.path_weight, offset))  # rows (u)
            offset += mul_in * mul_out
        tables = _TypeTables(self.irreps_in, self.irreps_out, paths)
        if not supports_fast_linear(self):
            raise ValueError("FastLinear: use equimd.potentials.nn.linear.linear() for this layer")
        _register_tables(self, tables)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch.nn.Module signature
        module = super()._apply(fn, recurse)
        _exact_coefficients(self)
        return module

    def forward(self, features: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if self.type_zero_outputs and is_symbolic_size(features.shape[0]):
                # AOTInductor: as in FastScalarTensorProduct.forward (the zero column)
                return o3.Linear.forward(self, features)
        shape = features.shape[:-1]
        x = features.reshape(-1, features.shape[-1])
        weights = torch.split(
            self.weight.index_select(0, self.type_weight_index) * self.type_coefficient,
            self.type_weight_sizes,
        )
        outputs: List[Tensor] = []
        for t, index in enumerate(torch.split(self.type_input_index, self.type_input_sizes)):
            rows, cols = self.type_rows[t], self.type_cols[t]
            x_type = x.index_select(1, index).view(-1, rows)  # [N·d, rows]
            out = torch.mm(x_type, weights[t].view(rows, cols))  # [N·d, cols]
            outputs.append(out.view(-1, self.type_dims[t] * cols))
        if self.type_zero_outputs:
            outputs.append(x.new_zeros(x.shape[0], 1))
        out = torch.cat(outputs, dim=1).index_select(1, self.type_output_index)
        return out.reshape(shape + (out.shape[-1],))


class FastScalarTensorProduct(o3.FullyConnectedTensorProduct):
    """`e3nn.o3.FullyConnectedTensorProduct(irreps_in1, "S x 0e", irreps_out)` (e.g. features ×
    one-hot species), shared internal weights; faster `forward`.

    x: [N, irreps_in1.dim], scalars: [N, S] -> [N, irreps_out.dim]
    """

    __jit_ignored_attributes__ = ["_coefficient_exact"]

    def __init__(
        self, irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, irreps_out: o3.Irreps, **kwargs
    ) -> None:
        super().__init__(irreps_in1, irreps_in2, irreps_out, **kwargs)
        if not supports_fast_scalar_product(self):
            raise ValueError("FastScalarTensorProduct: use scalar_tensor_product() for this layer")
        self.num_scalars = self.irreps_in2.dim
        # e3nn's weights of a path are [mul1, S, mul_out]: rows (u, v) of X_τ, v fastest.
        # e3nn divides an l ⊗ 0 → l path by sqrt(2l + 1) (its Wigner-3j), then applies path_weight.
        paths = []
        offset = 0
        for ins in self.instructions:
            mul1, mul2, mul_out = ins.path_shape
            d = self.irreps_out[ins.i_out].ir.dim
            paths.append((ins.i_in1, ins.i_out, mul1 * mul2, ins.path_weight / sqrt(d), offset))
            offset += mul1 * mul2 * mul_out
        _register_tables(self, _TypeTables(self.irreps_in1, self.irreps_out, paths))

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch.nn.Module signature
        module = super()._apply(fn, recurse)
        _exact_coefficients(self)
        return module

    def forward(self, x: Tensor, scalars: Tensor) -> Tensor:
        num_rows = x.shape[0]
        if not torch.jit.is_scripting():
            if self.type_zero_outputs and is_symbolic_size(num_rows):
                # AOTInductor: torch 2.9.1's vectorised float64 code for the zero column's
                # gather crashes when run (NequIP's package, tests/test_deploy.py, slow);
                # e3nn's own forward (the same numbers) compiles correctly
                return o3.FullyConnectedTensorProduct.forward(self, x, scalars)
        weights = torch.split(
            self.weight.index_select(0, self.type_weight_index) * self.type_coefficient,
            self.type_weight_sizes,
        )
        outputs: List[Tensor] = []
        for t, index in enumerate(torch.split(self.type_input_index, self.type_input_sizes)):
            d, rows, cols = self.type_dims[t], self.type_rows[t], self.type_cols[t]
            channels = rows // self.num_scalars
            x_type = x.index_select(1, index).view(num_rows, d, channels, 1)
            products = (x_type * scalars.view(num_rows, 1, 1, self.num_scalars)).view(-1, rows)
            out = torch.mm(products, weights[t].view(rows, cols))  # [N·d, cols]
            outputs.append(out.view(num_rows, d * cols))
        if self.type_zero_outputs:
            outputs.append(x.new_zeros(num_rows, 1))
        return torch.cat(outputs, dim=1).index_select(1, self.type_output_index)


def supports_fast_linear(module: o3.Linear) -> bool:
    return (
        module.internal_weights
        and module.shared_weights
        and module.bias_numel == 0
        and module.weight_numel > 0
        and all(ins.i_in >= 0 for ins in module.instructions)
    )


def supports_fast_scalar_product(module: o3.TensorProduct) -> bool:
    return (
        module.internal_weights
        and module.shared_weights
        and module.weight_numel > 0
        and len(module.irreps_in2) == 1
        and module.irreps_in2[0].ir == o3.Irrep("0e")
        and all(ins.connection_mode == "uvw" and ins.has_weight for ins in module.instructions)
    )


def linear(irreps_in: o3.Irreps, irreps_out: o3.Irreps, **kwargs) -> o3.Linear:
    """`FastLinear` where it applies, else `e3nn.o3.Linear` (same weights either way)."""
    reference = o3.Linear(irreps_in, irreps_out, **kwargs)
    if not supports_fast_linear(reference):
        return reference
    try:
        return FastLinear(irreps_in, irreps_out, **kwargs)
    except ValueError:
        return reference


def scalar_tensor_product(
    irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, irreps_out: o3.Irreps, **kwargs
) -> o3.FullyConnectedTensorProduct:
    """`FastScalarTensorProduct` where it applies, else e3nn's FullyConnectedTensorProduct."""
    irreps_in2 = o3.Irreps(irreps_in2)
    if len(irreps_in2) == 1 and irreps_in2[0].ir == o3.Irrep("0e"):
        try:
            return FastScalarTensorProduct(irreps_in1, irreps_in2, irreps_out, **kwargs)
        except ValueError:
            pass
    return o3.FullyConnectedTensorProduct(irreps_in1, irreps_in2, irreps_out, **kwargs)
