"""What the "uvu" convolution backends share: instruction checks (`UVUConvolution`, every
non-reference backend) and, for the fused and SO(2) backends (`EdgeChunkedConvolution`),
edge-chunked aggregation (gather → messages → scatter-sum), recomputation of large layers'
messages in the backward pass, exact constants across dtype changes, and the permutation back
to e3nn's layout.

A backend (`FusedUVUConvolution`, `SO2UVUConvolution`) subclasses `EdgeChunkedConvolution` and
supplies `_messages` (per-group messages, [E, size_g] each, in its own order) plus the
attributes listed in the class docstring; `forward`, `aggregate` and `aggregate_radial` come
from here.

Radial weights: `aggregate_radial(hidden [E, h], last_weight [h, weight_numel])` takes the
model's radial MLP before its last (linear) layer and forms each edge chunk's weights per
group, hidden_chunk @ W_g (W_g: the group's columns of last_weight, `weight_group_columns`,
`weight_group_sizes`), so the [E, weight_numel] weight tensor, its regrouping copy and its
gradient never exist; the gradients flow to [E, h] and to the small W_g. With `paired` (edges
in pair order, `equimd.potentials.nn.edge_pairs`: edges 2p and 2p + 1 are reverse), hidden has
one row per pair [P, h] and each pair's weights are formed once, [P, size_g] (edge chunks hold
whole pairs); `_messages` broadcasts them over the pair's two edges, or gives each edge its
copy (`per_edge`) where a backend does not.

Memory of large systems: `aggregate` processes edges in chunks whose edge-level tensors hold
about `chunk_elements` elements (memory is reused instead of faulted in again), and sums
messages with `equimd.potentials.nn.scatter.scatter_add_`, which for calls whose messages exceed
`keep_messages_below_bytes` keeps only the receiver index for the backward pass, not the
messages (slower backward, much less memory). Autograd still keeps each chunk's products for the backward pass (`saved_per_edge`
values per edge); when that would exceed `recompute_above_bytes` for one call (e.g.
MACE-medium on 2048 Cu atoms in float64: 6.5 GiB in its second layer), eager `aggregate`
splits the edges into as few pieces as keep each below it and runs every piece under
`torch.utils.checkpoint` (non-reentrant: forces, stress and training's double backward work
alike), which keeps only the piece's inputs and recomputes its messages in the backward pass.
Same numbers, one more forward of the messages. TorchScript files always keep the products.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from e3nn import o3
from torch import Tensor, nn

from equimd.potentials.nn.edge_pairs import per_edge
from equimd.potentials.nn.scatter import scatter_add_, scatter_sum
from equimd.potentials.nn.shapes import is_symbolic_size

# Edge-level tensors of one `aggregate` chunk stay below this many elements (64 MiB in float32):
# large systems reuse memory chunk after chunk instead of holding [E, ·] temporaries. Measured
# on the 2-core VM (2 threads, energy + forces): 2^22 against the earlier 2^20 (2026-12-06),
# NequIP (64 features) water 446-494 against 494-567 ms and Cu 2048 4.54 against 5.07 s (fewer,
# larger operations parallelise better), MACE medium water 458-478 against 475-488 ms; one
# thread: the same within 2 %. 2^24 against 2^22 (2026-12-06, later; the receiver path's
# one-piece bound kept at 2^26): NequIP water float32 397 against 418 ms (its layers now in
# one chunk), float64 829 against 835 ms (+0.3 GB peak), Cu 2048 float32 3.50 against 3.58 s
# (same peak); MACE small and medium water unchanged; MACE medium on 1,536 water molecules'
# atoms (receiver chunks) 4.0 against 4.4 s, 0.3 GB less peak. (equimd's entry points raise
# glibc's mmap threshold, `equimd.allocator`, so chunks of this size are reused, not faulted
# in again.)
DEFAULT_CHUNK_ELEMENTS = 1 << 24
# Above this many bytes of intermediates kept for the backward pass by one `aggregate`, eager
# execution recomputes them instead (see the module docstring).
RECOMPUTE_ABOVE_BYTES = 6 * (1 << 30)
# Up to this many bytes of messages per `aggregate`, the scatter keeps them for the backward
# pass (`index_add`: faster backward); above, it keeps only the receiver index.
KEEP_MESSAGES_BELOW_BYTES = 1 << 29


class UVUConvolution(nn.Module):
    """Base of every non-reference "uvu" convolution backend: checks the instructions and sets
    `irreps_node`, `irreps_sh`, `irreps_out`, `weight_starts` (where each path's weights start
    in e3nn's weight vector: one weight per channel) and `weight_numel`.

    instructions: (i_in1, i_in2, i_out, path_weight) in e3nn's weight order; each output irrep
    block is written by exactly one instruction (the convolution's outputs are not simplified).
    """

    backend = "uvu"  # named in error messages

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        instructions: list[tuple[int, int, int, float]],
    ) -> None:
        super().__init__()
        irreps_node, irreps_sh, irreps_out = (
            o3.Irreps(irreps) for irreps in (irreps_node, irreps_sh, irreps_out)
        )
        self.irreps_node, self.irreps_sh, self.irreps_out = irreps_node, irreps_sh, irreps_out
        if any(mul != 1 for mul, _ in irreps_sh):
            raise ValueError(
                f"{self.backend} convolution needs multiplicity 1 in irreps_sh, got {irreps_sh}"
            )
        if not instructions:
            raise ValueError(f"{self.backend} convolution needs at least one path")
        if sorted(i_out for _, _, i_out, _ in instructions) != list(range(len(irreps_out))):
            raise ValueError(
                f"{self.backend} convolution needs exactly one instruction per output block"
            )
        self.weight_starts: list[int] = []
        start = 0
        for i_in1, i_in2, i_out, _ in instructions:
            (mul_in, ir_in), (mul_out, ir_out) = irreps_node[i_in1], irreps_out[i_out]
            if mul_in != mul_out or ir_out not in ir_in * irreps_sh[i_in2].ir:
                raise ValueError(f"instruction {(i_in1, i_in2, i_out)} is not a uvu path")
            self.weight_starts.append(start)
            start += mul_in
        self.weight_numel = start

    @torch.jit.export
    def aggregate_radial(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        hidden: Tensor,
        last_weight: Tensor,
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
        paired: bool = False,
    ) -> Tensor:
        """`aggregate` with the weights given as the radial MLP's last (linear) layer:
        weights = hidden [E, h] @ last_weight [h, weight_numel] (e3nn's column order). A backend
        may compute them per edge chunk and per group instead (`EdgeChunkedConvolution`); here,
        at once. With `paired`, the edges are in pair order and hidden has one row per pair
        (edges 2p and 2p + 1 take row p; `equimd.potentials.nn.edge_pairs`)."""
        weights = torch.mm(hidden, last_weight)  # [E or P, weight_numel]
        weights = per_edge(weights, sender.shape[0])  # [E, weight_numel]
        return self.aggregate(node_features, edge_sh, weights, sender, receiver, num_nodes)

    def aggregate(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        weights: Tensor,
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
    ) -> Tensor:
        raise NotImplementedError


class EdgeChunkedConvolution(UVUConvolution):
    """Base of the fast "uvu" convolution backends (see the module docstring).

    A subclass calls `super().__init__(irreps_node, irreps_sh, irreps_out, instructions)`, then
    sets:
      input_permutation (buffer [irreps_node.dim]): e3nn node layout → the backend's input order;
      output_permutation (buffer [irreps_out.dim]): concatenated group messages → e3nn layout;
      group_message_sizes: per-edge size of each group's messages;
      elements_per_edge: largest per-edge tensor of one chunk (elements);
      saved_per_edge: values autograd keeps per edge (for the recompute decision);
      weight_group_sizes, weight_group_columns (optional): how the weights are cut into the
        blocks `_messages` takes (default: one block, as they are; `_grouped_weights` cuts a
        weight tensor the same way);
    and implements `_messages(inputs, edge_sh [E, D_sh], weight_groups, sender)`: inputs are the
    senders' features [E, ·], or with `sender` [E] the node features [N, ·] (`_edge_blocks`
    gathers them); its weight blocks have a row per edge or, for edges in pair order, per pair
    ([E/2, ·]: edges 2p and 2p + 1 share row p; `per_edge` expands them).
    Constants derived in float64 are registered with `_register_exact(name, tensor)`: the buffer
    is re-derived from the float64 value on every dtype/device change (no float32 rounding
    survives `.double()`).

    forward(node_features [E, irreps_node.dim], edge_sh [E, irreps_sh.dim],
            weights [E, weight_numel]) -> [E, irreps_out.dim]                (e3nn layouts)
    aggregate(node_features [N, irreps_node.dim], edge_sh, weights, sender [E], receiver [E],
              num_nodes) -> [N, irreps_out.dim] = Σ_{e: receiver[e] = n} forward(x[sender])[e]
    """

    __jit_ignored_attributes__ = ["_exact_constants"]

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        instructions: list[tuple[int, int, int, float]],
    ) -> None:
        super().__init__(irreps_node, irreps_sh, irreps_out, instructions)
        self._exact_constants: Dict[str, Tensor] = {}
        # how `_grouped_weights` / `_last_layer_blocks` cut the weights for `_messages`: column
        # blocks of these sizes, taken in this order of e3nn's columns (empty: as they are)
        self.weight_group_sizes: List[int] = [self.weight_numel]
        self.register_buffer("weight_group_columns", torch.zeros(0, dtype=torch.long), False)
        self.chunk_elements = DEFAULT_CHUNK_ELEMENTS
        self.recompute_above_bytes = RECOMPUTE_ABOVE_BYTES
        self.keep_messages_below_bytes = KEEP_MESSAGES_BELOW_BYTES

    def _register_exact(self, name: str, exact: Tensor) -> None:
        """A non-persistent buffer `name` in the default dtype, re-derived from `exact`
        (float64) whenever the module changes dtype or device."""
        self._exact_constants[name] = exact
        self.register_buffer(name, exact.to(torch.get_default_dtype()), persistent=False)

    def _apply(self, fn: Callable, recurse: bool = True):  # noqa: ANN201 - nn.Module signature
        module = super()._apply(fn, recurse)
        for name, exact in self._exact_constants.items():
            current = getattr(self, name)
            setattr(self, name, exact.to(device=current.device, dtype=current.dtype))
        return module

    def _messages(
        self, inputs: Tensor, edge_sh: Tensor, weight_groups: List[Tensor],
        sender: Optional[Tensor] = None,
    ) -> List[Tensor]:
        raise NotImplementedError

    def _edge_blocks(self, inputs: Tensor, sizes: List[int], sender: Optional[Tensor]) -> List[Tensor]:
        """The senders' features cut into blocks [E, size] (m-major): `inputs` per edge
        ([E, Σ sizes]) when `sender` is None, else node features [N, Σ sizes] gathered block by
        block. Gathering per block, the backward pass scatters each block's gradient onto
        [N, size] instead of first concatenating an [E, Σ sizes] gradient (the split's backward):
        NequIP's 1088-wide layers on the water box, 4.3 against 5.8 ms (float32)."""
        blocks = torch.split(inputs, sizes, dim=1)
        if sender is None:
            return blocks
        return [block.index_select(0, sender) for block in blocks]

    def _grouped_weights(self, weights: Tensor) -> List[Tensor]:
        """[E, weight_numel] (e3nn's order) → the blocks `_messages` takes (`weight_group_sizes`
        columns in `weight_group_columns` order); here one block, the weights as they are."""
        return [weights]

    def _weight_groups(self, source: Tensor, blocks: List[Tensor]) -> List[Tensor]:
        """One edge chunk's weights as `_messages` takes them, a row per row of `source`: from
        the weights themselves (`blocks` empty; source [E_c, weight_numel]) or from the radial
        MLP's last hidden layer (source [E_c or P_c, h], per edge or per pair) times each block
        of its last weight matrix ([h, size_g] each)."""
        if len(blocks) == 0:
            return self._grouped_weights(source)
        return [torch.mm(source, block) for block in blocks]  # [E_c or P_c, size_g] each

    def _last_layer_blocks(self, last_weight: Tensor) -> List[Tensor]:
        """[h, weight_numel] (e3nn's column order) → [h, size_g] per group (the backend's order)."""
        if self.weight_group_columns.shape[0] == 0:  # already in group order
            return list(torch.split(last_weight, self.weight_group_sizes, dim=1))
        ordered = last_weight.index_select(1, self.weight_group_columns)
        return list(torch.split(ordered, self.weight_group_sizes, dim=1))

    def contracts_by_receiver(self, edge_sh: Tensor) -> bool:
        """Whether `aggregate` sums per receiver with `_aggregate_by_receiver` instead of
        scattering messages (a backend may override both; here: never)."""
        return False

    def _aggregate_by_receiver(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        source: Tensor,
        blocks: List[Tensor],
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
        paired: bool = False,
    ) -> Tensor:
        raise NotImplementedError

    def forward(self, node_features: Tensor, edge_sh: Tensor, weights: Tensor) -> Tensor:
        inputs = node_features.index_select(1, self.input_permutation)
        return self._to_e3nn_layout(self._messages(inputs, edge_sh, self._grouped_weights(weights)))

    def keeps_messages(self, edge_sh: Tensor) -> bool:
        """Whether the scatter-sum may keep this call's messages for the backward pass
        (faster) rather than only the receiver index: when they are small."""
        message_bytes = edge_sh.shape[0] * sum(self.group_message_sizes) * edge_sh.element_size()
        return message_bytes <= self.keep_messages_below_bytes

    def edge_chunk_size(self, num_edges: int) -> int:
        """Edges per chunk in `aggregate` (0: one chunk). Bounds every edge-level tensor to
        about `chunk_elements` elements, so large systems reuse memory instead of mapping fresh
        pages for every intermediate (see docs/performance.md)."""
        if is_symbolic_size(num_edges):  # make_fx, export: one chunk
            return 0
        size = max(self.chunk_elements // self.elements_per_edge, 1)
        return 0 if num_edges <= size else size

    @torch.jit.export
    def aggregate(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        weights: Tensor,
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
    ) -> Tensor:
        return self._aggregate(node_features, edge_sh, weights, [], sender, receiver, num_nodes)

    @torch.jit.export
    def aggregate_radial(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        hidden: Tensor,
        last_weight: Tensor,
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
        paired: bool = False,
    ) -> Tensor:
        """`aggregate` with weights = hidden [E, h] @ last_weight [h, weight_numel] (the radial
        MLP's last layer, e3nn's column order), computed per edge chunk and per group from the
        matching column blocks: no [E, weight_numel] weights, regrouping copy or their
        gradients are formed, only [E_c, size_g] pieces. With `paired` (edges in pair order,
        `equimd.potentials.nn.edge_pairs`), hidden has one row per pair [P, h], and each pair's
        weights are formed once for its two edges."""
        blocks = self._last_layer_blocks(last_weight)
        return self._aggregate(
            node_features, edge_sh, hidden, blocks, sender, receiver, num_nodes, paired
        )

    def _aggregate(
        self,
        node_features: Tensor,
        edge_sh: Tensor,
        source: Tensor,
        blocks: List[Tensor],
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
        paired: bool = False,
    ) -> Tensor:
        """`aggregate` with the weights as (source, blocks), see `_weight_groups`; with
        `paired`, source has one row per pair of the edges in pair order."""
        if self.contracts_by_receiver(edge_sh):
            return self._aggregate_by_receiver(
                node_features, edge_sh, source, blocks, sender, receiver, num_nodes, paired
            )
        features = node_features.index_select(1, self.input_permutation)
        chunk = self.edge_chunk_size(edge_sh.shape[0])
        if chunk == 0:
            messages = self._messages(
                features, edge_sh, self._weight_groups(source, blocks), sender
            )
            keep = self.keeps_messages(edge_sh)
            summed = [scatter_sum(message, receiver, num_nodes, keep) for message in messages]
            return self._to_e3nn_layout(summed)
        keep = self.keeps_messages(edge_sh)
        if paired:  # chunks of whole pairs: a chunk's rows of source are those of its pairs
            chunk = chunk + chunk % 2
        if not torch.jit.is_scripting():
            saved_bytes = edge_sh.shape[0] * self.saved_per_edge * edge_sh.element_size()
            if torch.is_grad_enabled() and saved_bytes > self.recompute_above_bytes:
                return self._aggregate_recomputed(
                    features, edge_sh, source, blocks, sender, receiver, num_nodes, chunk, keep,
                    paired, saved_bytes,
                )  # fmt: skip
        return self._to_e3nn_layout(
            self._chunk_sums(
                features, edge_sh, source, blocks, sender, receiver, num_nodes, chunk, keep, paired
            )
        )

    def _chunk_sums(
        self,
        features: Tensor,
        edge_sh: Tensor,
        source: Tensor,
        blocks: List[Tensor],
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
        chunk: int,
        keep: bool,
        paired: bool,
    ) -> List[Tensor]:
        """Per-group message sums [N, size_g] over edge chunks of `chunk` edges: each chunk's
        messages accumulate in place on the node tensors (kept for the backward pass if
        `keep`, decided once per `aggregate` call). features: m-major [N, ·]; the weights
        (source, blocks) as in `_weight_groups`, source with a row per edge, or per pair when
        `paired` (then `chunk` is even: a chunk holds whole pairs)."""
        summed = [features.new_zeros(num_nodes, size) for size in self.group_message_sizes]
        rows = chunk // 2 if paired else chunk
        sh_chunks, source_chunks = torch.split(edge_sh, chunk), torch.split(source, rows)
        sender_chunks, receiver_chunks = torch.split(sender, chunk), torch.split(receiver, chunk)
        for c in range(len(sh_chunks)):
            weights = self._weight_groups(source_chunks[c], blocks)
            messages = self._messages(features, sh_chunks[c], weights, sender_chunks[c])
            for g, message in enumerate(messages):
                scatter_add_(summed[g], receiver_chunks[c], message, keep)
        return summed

    @torch.jit.unused
    def _aggregate_recomputed(
        self,
        features: Tensor,
        edge_sh: Tensor,
        source: Tensor,
        blocks: List[Tensor],
        sender: Tensor,
        receiver: Tensor,
        num_nodes: int,
        chunk: int,
        keep: bool,
        paired: bool,
        saved_bytes: int,
    ) -> Tensor:
        """`aggregate` over as few edge pieces as keep each piece's saved tensors below
        `recompute_above_bytes`; each piece runs the chunked loop under `checkpoint`, so
        autograd keeps only its inputs and recomputes its messages in the backward pass (one
        piece's tensors at a time)."""
        from torch.utils.checkpoint import checkpoint

        def piece_sums(features: Tensor, sh: Tensor, weight: Tensor, sender: Tensor,
                       receiver: Tensor, *blocks: Tensor) -> Tensor:
            sums = self._chunk_sums(
                features, sh, weight, list(blocks), sender, receiver, num_nodes, chunk, keep, paired
            )
            return torch.cat(sums, dim=1)

        num_edges = edge_sh.shape[0]
        num_pieces = min(-(-saved_bytes // max(self.recompute_above_bytes, 1)), -(-num_edges // chunk))
        piece = max(-(-num_edges // max(num_pieces, 2)), 1)
        piece = piece + piece % 2 if paired else piece  # pieces of whole pairs
        summed = features.new_zeros(num_nodes, sum(self.group_message_sizes))
        pieces = zip(
            torch.split(edge_sh, piece), torch.split(source, piece // 2 if paired else piece),
            torch.split(sender, piece), torch.split(receiver, piece), strict=True,
        )  # fmt: skip
        for sh, weight, send, receive in pieces:
            summed = summed + checkpoint(
                piece_sums, features, sh, weight, send, receive, *blocks, use_reentrant=False
            )
        return self._to_e3nn_layout([summed])

    def _to_e3nn_layout(self, pieces: List[Tensor]) -> Tensor:
        """Per-group pieces [rows, size_g] → [rows, irreps_out.dim] in e3nn's layout."""
        return torch.cat(pieces, dim=1).index_select(1, self.output_permutation)
