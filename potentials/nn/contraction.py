"""MACE's symmetric contraction: the equivariant product basis (Batatia et al. 2022, eqs. 10-11).

For node i (element z_i), channel c and output irrep L (components m):

    B_{icLm} = Σ_{ν=1}^{correlation} Σ_k W^{Lν}_{z_i k c} Σ_{a_1..a_ν} U^{Lν}_{m a_1..a_ν k} A_{ica_1} ⋯ A_{ica_ν}

A_{ica}: the node features of channel c, a running over the components of all input irreps
(d = Σ (2l+1), one copy per input irrep). U^{Lν}: the generalized Clebsch–Gordan coupling basis,
one column k per coupling path (a_1 ⊗ a_2 → L_2, L_2 ⊗ a_3 → L_3, ...). W: learnable weights per
element, path and channel.

Implementation: A^{⊗ν} is symmetric under permuting a_1..a_ν, so it is built once per multiset
of indices (a "monomial": C(d+ν-1, ν) of them, 816 instead of 4096 for d=16, ν=3) and U is
folded onto the monomials once, at construction. The forward pass then takes one of two exact
routes (`SymmetricContraction.fold_weights`, chosen by size): one matmul per ν of the folded
basis with the monomials of all (node, channel) pairs, a per-element weighting of the columns
and a sum over paths; or, when there are many paths per output component (MACE small's
products: 28 columns for 1 component; medium's first: 202 for 4), W folded into the basis per
element present and per channel (F_{zcjm}, cheap: no node axis), then one batched product over
channels per element, F^T [Σ M, J] × monomials [J, N_z]: 2·(Σ M)·J instead of 2·columns·J
multiply-adds per (node, channel). Both build the monomials component-major ([n_ν, C·N]: row
gathers). No per-node basis tensors and nothing mace-specific at run time.

The coupling bases equal mace-torch's `U_matrix_ν` buffers exactly (same paths, order, signs,
`tests/test_contraction.py`): mace-torch pins e3nn 0.4.4, whose real Wigner 3j symbols differ in
sign from e3nn 0.6's for 44 (l1, l2, l3) triples (all with odd l1+l2+l3; see
`E3NN_044_FLIPPED_TRIPLES`); `wigner_3j` (potentials/nn/coupling_basis.py) applies that convention.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.coupling_basis import (
    E3NN_044_FLIPPED_TRIPLES,
    _monomial_codes,
    coupling_basis,
    fold_coupling_basis,
    monomials,
    prune_monomials,
    wigner_3j,
)
from equimd.potentials.nn.shapes import is_symbolic_size

__all__ = [
    "E3NN_044_FLIPPED_TRIPLES",
    "SymmetricContraction",
    "coupling_basis",
    "fold_coupling_basis",
    "monomials",
    "prune_monomials",
    "wigner_3j",
]

# The folded evaluation pays for its per-element products about as much as this many columns of the
# column-wise one (see `SymmetricContraction.fold_weights`).
FOLDING_OVERHEAD = 20


class _ProductOrder(nn.Module):
    """The kept monomials of one correlation order ν and their folded coupling basis.

    parent, last: [n_ν] kept monomial n = kept monomial parent[n] of order ν-1 times
    component last[n]. basis: [n_ν, Σ_L (2L+1)·K_Lν], columns ordered (output irrep L, m,
    path k). All three are persistent state, so a loaded state is self-consistent.
    """

    def __init__(self, order: int, parent: Tensor, last: Tensor, basis: Tensor) -> None:
        super().__init__()
        self.register_buffer("parent", parent)
        self.register_buffer("last", last)
        self.register_buffer("basis", basis)
        self.order = order

    def forward(self, features: Tensor, monomials_below: Tensor) -> Tensor:
        """features [d, P], monomials of order ν-1 [n_(ν-1), P] → order ν [n_ν, P] (row gathers:
        whole rows copied, 2-3x faster than gathering columns of the transposed layout)."""
        if self.order == 1:
            return features
        return monomials_below.index_select(0, self.parent) * features.index_select(0, self.last)


class SymmetricContraction(nn.Module):
    """MACE product basis: irreps_in (C channels each) → irreps_out (C channels each).

    node_features: [N, irreps_in.dim] (e3nn layout), species: [N] int64 element index in
    [0, num_elements) → [N, irreps_out.dim] (e3nn layout).

    Parameters: `weights` [num_elements, num_coefficients, C]; coefficients ordered by output
    irrep, then ν = 1..correlation, then coupling path (see `coefficient_slices`). Buffers
    `orders.{ν-1}.basis`, `.parent`, `.last` hold the folded coupling bases on the monomials
    that matter (see `prune_monomials`); they are persistent: a checkpoint carries its basis. `coupling_bases[k][ν-1]`, when given, replaces the built-in bases (e.g. mace-torch
    `U_matrix_ν` buffers of a model built with cuequivariance's reduced basis); otherwise the
    bases are `coupling_basis(...)`, computed in float64 and cast to the default dtype: build
    under float64 for float64 work.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        correlation: int,
        num_elements: int,
        coupling_bases: list[list[Tensor]] | None = None,
    ) -> None:
        super().__init__()
        irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        channels = {mul for mul, _ in irreps_in} | {mul for mul, _ in irreps_out}
        if len(channels) != 1:
            raise ValueError(
                f"all irreps need the same multiplicity (channels): in={irreps_in}, out={irreps_out}"
            )
        if correlation < 1:
            raise ValueError(f"correlation must be >= 1, got {correlation}")
        self.irreps_in = irreps_in
        self.irreps_out = irreps_out
        self.correlation = int(correlation)
        self.num_elements = int(num_elements)
        self.num_channels = channels.pop()
        coupling_irreps = o3.Irreps([(1, ir) for _, ir in irreps_in])
        dim = coupling_irreps.dim
        self.input_dims = [ir.dim for _, ir in irreps_in]
        self.output_dims = [ir.dim for _, ir in irreps_out]

        # bases[k][ν-1]: [M_k, d^ν, K_kν]
        bases: list[list[Tensor]] = []
        for k, (_, ir) in enumerate(irreps_out):
            per_order = []
            for order in range(1, correlation + 1):
                if coupling_bases is not None:
                    u = coupling_bases[k][order - 1].to(torch.float64)
                    u = u.unsqueeze(0) if u.dim() == order + 1 else u
                else:
                    u = coupling_basis(coupling_irreps, ir, order)
                expected = (ir.dim, *([dim] * order))
                if tuple(u.shape[:-1]) != expected:
                    raise ValueError(
                        f"coupling basis for output {ir}, order {order}: shape {tuple(u.shape)},"
                        f" expected {expected} + (num_paths,)"
                    )
                per_order.append(u)
            bases.append(per_order)
        self.num_paths = [[u.shape[-1] for u in per] for per in bases]

        # Coefficients (weights' axis 1): output k, order ν, path; columns of the per-order
        # products: order ν, output k, component m, path. Map columns → coefficient and → output.
        coefficient_start = []
        start = 0
        for k in range(len(irreps_out)):
            starts = []
            for order in range(correlation):
                starts.append(start)
                start += self.num_paths[k][order]
            coefficient_start.append(starts)
        self.num_coefficients = start
        output_start = [sum(self.output_dims[:k]) for k in range(len(irreps_out))]
        column_coefficient: list[int] = []
        column_output: list[int] = []
        folded_bases = []  # per order: [C(d+ν-1, ν), columns_ν] over all monomials
        for order in range(1, correlation + 1):
            folded_blocks = []
            for k, (_, ir) in enumerate(irreps_out):
                num_paths = self.num_paths[k][order - 1]
                folded = fold_coupling_basis(bases[k][order - 1], dim, order)  # [n, M, K]
                folded_blocks.append(folded.reshape(folded.shape[0], ir.dim * num_paths))
                for m in range(ir.dim):
                    for path in range(num_paths):
                        column_coefficient.append(coefficient_start[k][order - 1] + path)
                        column_output.append(output_start[k] + m)
            folded_bases.append(torch.cat(folded_blocks, dim=1))
        self.orders = nn.ModuleList(
            [
                _ProductOrder(order, parent, last, basis.to(torch.get_default_dtype()))
                for order, (parent, last, basis) in enumerate(
                    prune_monomials(folded_bases, dim), start=1
                )
            ]
        )
        self.coupling_dim = dim
        self.num_columns = len(column_coefficient)
        self.num_outputs_total = sum(self.output_dims)
        self.register_buffer(
            "column_coefficient",
            torch.tensor(column_coefficient, dtype=torch.long),
            persistent=False,
        )
        selection = torch.zeros(len(column_output), sum(self.output_dims))
        selection[
            torch.arange(len(column_output)), torch.tensor(column_output, dtype=torch.long)
        ] = 1.0
        self.register_buffer("column_to_output", selection, persistent=False)
        # Two exact evaluations of the same sum; which is faster depends on the columns per
        # output component. By columns: 2·columns·J multiply-adds per (node, channel) in large
        # GEMMs. Folded: 2·(Σ M)·J in small batched products per element, which cost about as
        # much as 20 more columns (products of 1 to 28 columns and 1 to 9 outputs, 192 nodes,
        # 2 elements, float32, 2 threads, 2026-12-06: MACE small's 28 columns for 1 output
        # 17 against 20 ms, 15 columns for 1 output and 26 for 4 even, 12 for 4 slower).
        num_monomials = sum(int(order.basis.shape[0]) for order in self.orders)
        self.fold_weights = bool(
            num_monomials > 0 and self.num_columns > self.num_outputs_total + FOLDING_OVERHEAD
        )
        # the columns grouped by output component (stable): the per-element folding below
        column_output_tensor = torch.tensor(column_output, dtype=torch.long)
        columns_by_output = torch.sort(column_output_tensor, stable=True)[1]
        self.register_buffer("columns_by_output", columns_by_output, persistent=False)
        # the weight coefficient of each column in that order (one gather of W per fold)
        self.register_buffer(
            "coefficient_by_output", self.column_coefficient[columns_by_output], persistent=False
        )
        self.output_column_counts: list[int] = torch.bincount(
            column_output_tensor, minlength=self.num_outputs_total
        ).tolist()

        # mace-torch's initialisation: N(0, 1) / num_paths per (output, order) block.
        weights = torch.randn(num_elements, self.num_coefficients, self.num_channels)
        for k in range(len(irreps_out)):
            for order in range(correlation):
                num_paths = self.num_paths[k][order]
                block = slice(coefficient_start[k][order], coefficient_start[k][order] + num_paths)
                weights[:, block] /= max(num_paths, 1)
        self.weights = nn.Parameter(weights)
        self._coefficient_start = coefficient_start

    def coefficient_slices(self, output_index: int, order: int) -> slice:
        """Slice of `weights`' axis 1 for output irrep `output_index` and correlation `order`."""
        start = self._coefficient_start[output_index][order - 1]
        return slice(start, start + self.num_paths[output_index][order - 1])

    def folded_weights(self, elements: Tensor) -> Tensor:
        """W folded into the coupling bases for `elements` [Z'] (element indices):
        F_{z c j m} = Σ_{columns k of output component m} basis_{j k} W_{z coef(k) c}, j over
        the kept monomials of every order → [Z', C, J, Σ M] (a view; J = Σ_ν n_ν)."""
        blocks = []  # each order's basis placed in its columns: [n_ν, columns]
        start = 0
        for order in self.orders:
            width = order.basis.shape[1]
            blocks.append(nn.functional.pad(order.basis, (start, self.num_columns - start - width)))
            start += width
        basis = torch.cat(blocks, dim=0).index_select(1, self.columns_by_output)  # [J, columns]
        weights = self.weights.index_select(0, elements).index_select(1, self.coefficient_by_output)
        # [Z', columns, C], columns grouped by output component
        pieces = [
            torch.matmul(b, w)  # [Z', J, C]
            for b, w in zip(
                torch.split(basis, self.output_column_counts, dim=1),
                torch.split(weights, self.output_column_counts, dim=1),
                strict=True,
            )
        ]
        return torch.stack(pieces, dim=-1).permute(0, 2, 1, 3)  # [Z', C, J, Σ M]

    def forward(self, node_features: Tensor, species: Tensor) -> Tensor:
        num_nodes = node_features.shape[0]
        # [N, irreps_in.dim] → A: [N, C, d], the components of each (node, channel) together
        blocks = torch.split(node_features, [self.num_channels * d for d in self.input_dims], dim=1)
        features = torch.cat(
            [
                blocks[i].reshape(num_nodes, self.num_channels, d)
                for i, d in enumerate(self.input_dims)
            ],
            dim=2,
        )
        # the folded route groups atoms by element (sizes that depend on the data), which
        # symbolic tracing (AOTInductor export) cannot follow: the column route is the same function
        if self.fold_weights and not is_symbolic_size(num_nodes):
            out = self._contract_folded(features, species)
        else:
            out = self._contract_by_columns(features, species)  # [N, C, Σ M]
        # → e3nn layout [N, Σ C·M]
        out_blocks = torch.split(out, self.output_dims, dim=2)
        return torch.cat(
            [
                out_blocks[i].reshape(num_nodes, self.num_channels * m)
                for i, m in enumerate(self.output_dims)
            ],
            dim=1,
        )

    def _contract_by_columns(self, features: Tensor, species: Tensor) -> Tensor:
        """A [N, C, d] → B [N, C, Σ M]: per order ν one matmul of the folded bases with the
        monomials of all (node, channel) pairs, then W per column and the sum into outputs."""
        num_nodes = features.shape[0]
        num_pairs = num_nodes * self.num_channels
        # component-major [d, N·C], so that monomials are row gathers
        features = features.permute(2, 0, 1).reshape(self.coupling_dim, num_pairs)
        products = []  # Σ_a U^{Lν}_{m a k} A_{a_1}..A_{a_ν}: [columns_ν, N·C] per order ν
        monomial = features
        for order in self.orders:
            monomial = order(features, monomial)  # [n_ν, N·C]
            products.append(torch.matmul(order.basis.t(), monomial))
        product = torch.cat(products, dim=0).reshape(self.num_columns, num_nodes, self.num_channels)
        # W_{z_i k c} per column: [columns, N, C]
        weights = self.weights.index_select(1, self.column_coefficient).transpose(0, 1)
        weights = weights.index_select(1, species)
        weighted = (product * weights).reshape(self.num_columns, num_pairs)
        out = torch.matmul(self.column_to_output.t(), weighted)  # Σ_ν,k: [Σ M, N·C]
        return out.reshape(self.num_outputs_total, num_nodes, self.num_channels).permute(1, 2, 0)

    def _contract_folded(self, features: Tensor, species: Tensor) -> Tensor:
        """A [N, C, d] → B [N, C, Σ M] with W folded into the bases per element present
        (`folded_weights`): the nodes grouped by element, one batched product over channels
        per group and order, folded^T [Σ M, n_ν] × monomials [n_ν, N_z] per channel."""
        num_nodes = features.shape[0]
        counts = torch.bincount(species, minlength=self.num_elements)  # [Z]
        elements = torch.nonzero(counts).squeeze(1)  # [Z'] present
        sizes: list[int] = counts.index_select(0, elements).tolist()
        grouped = len(sizes) > 1
        by_element = torch.sort(species, stable=True)[1] if grouped else species  # [N]
        if grouped:  # the nodes by element: the monomials come out grouped
            features = features.index_select(0, by_element)
        # component-major [d, C·N] (a small copy), so that monomials are row gathers; each
        # channel's monomials are then an [n_ν, N] block BLAS reads in place
        features = features.permute(2, 1, 0).reshape(
            self.coupling_dim, self.num_channels * num_nodes
        )
        # transposed, [Z', C, Σ M, J]: folded^T × monomials, Σ M (1 to 4) rows per channel
        folded = self.folded_weights(elements).transpose(2, 3).contiguous()
        parts: list[Tensor] = []  # per element: [C, Σ M, N_z]
        monomial = features
        row = 0
        for order in self.orders:
            monomial = order(features, monomial)  # [n_ν, C·N], nodes by element
            rows = monomial.shape[0]
            per_channel = monomial.view(rows, self.num_channels, num_nodes).transpose(0, 1)
            for z, group in enumerate(torch.split(per_channel, sizes, dim=2)):
                # [C, Σ M, n_ν] × [C, n_ν, N_z]
                term = torch.bmm(folded[z, :, :, row : row + rows], group)  # [C, Σ M, N_z]
                if len(parts) <= z:
                    parts.append(term)
                else:
                    parts[z] = parts[z] + term
            row += rows
        out = torch.cat(parts, dim=2)  # [C, Σ M, N], nodes by element
        if grouped:
            out = torch.zeros_like(out).index_copy(2, by_element, out)  # node order
        return out.permute(2, 0, 1)  # [N, C, Σ M]

    def load_mace_weights(self, state_dict: dict[str, Tensor], prefix: str = "") -> None:
        """Copy weights from a mace-torch SymmetricContraction state dict.

        mace keys `{prefix}contractions.{k}.weights_max` (ν = correlation) and
        `{prefix}contractions.{k}.weights.{j}` (ν = correlation-1-j), each [E, K, C]. If the
        state dict carries `U_matrix_ν` buffers they are loaded too (folded), so the module
        computes with exactly that basis; their path counts must match this module's.
        """
        with torch.no_grad():
            for k in range(len(self.irreps_out)):
                base = f"{prefix}contractions.{k}."
                for order in range(1, self.correlation + 1):
                    if order == self.correlation:
                        key = base + "weights_max"
                    else:
                        key = base + f"weights.{self.correlation - 1 - order}"
                    block = self.coefficient_slices(k, order)
                    self.weights[:, block].copy_(state_dict[key])
            dim = self.coupling_dim
            for order_module in self.orders:
                order = order_module.order
                keys = [
                    f"{prefix}contractions.{k}.U_matrix_{order}"
                    for k in range(len(self.irreps_out))
                ]
                if not all(key in state_dict for key in keys):
                    continue
                folded = [
                    fold_coupling_basis(state_dict[key].to(torch.float64), dim, order)
                    for key in keys
                ]
                full = torch.cat([f.flatten(1) for f in folded], dim=1)
                num_paths = [f.shape[-1] for f in folded]
                if num_paths != [n[order - 1] for n in self.num_paths]:
                    raise ValueError(
                        f"{keys}: coupling bases with {num_paths} paths do not match this"
                        f" module's {[n[order - 1] for n in self.num_paths]}; build it with"
                        " coupling_bases=... from these U matrices"
                    )
                rows = self._kept_rows(order)
                dropped = torch.ones(full.shape[0], dtype=torch.bool)
                dropped[rows] = False
                leftover = full[dropped].abs()
                if leftover.numel() > 0 and leftover.max() > 1e-12 * full.abs().max():
                    raise ValueError(
                        f"{keys}: basis is nonzero on monomials this module prunes; build it"
                        " with coupling_bases=... from these U matrices"
                    )
                order_module.basis.copy_(full[rows])

    def _kept_rows(self, order: int) -> Tensor:
        """Indices of the kept monomials of `order` in the full lexicographic list."""
        dim = self.coupling_dim
        if order == 1:
            return torch.arange(dim)
        kept = torch.arange(dim).unsqueeze(1)  # order 1: all components, as tuples
        for order_module in self.orders[1:order]:
            kept = torch.cat([kept[order_module.parent], order_module.last.unsqueeze(1)], dim=1)
        return torch.searchsorted(
            _monomial_codes(monomials(dim, order), dim), _monomial_codes(kept, dim)
        )
