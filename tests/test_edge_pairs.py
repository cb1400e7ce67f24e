"""The radial part computed once per pair of reverse edges (`equimd.potentials.nn.edge_pairs`):
the pair order itself (periodic cells with several images of an atom, molecules, any edge
order, and lists that are not made of pairs), the convolution with per-pair hidden rows (every
backend, in one piece and in chunks, including chunk sizes that would split a pair), and whole
models: the same energy, forces and stress as per edge, scripted too."""

from __future__ import annotations

import e3nn.util.jit
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import AtomicGraph, configuration_to_graph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.nn.convolution import available_backends
from equimd.potentials.nn.edge_pairs import (
    first_of_pairs,
    harmonics_per_edge,
    pair_order,
    per_edge,
    reflection_signs,
)
from tests.test_tensor_product_backends import convolution_pair, random_inputs


def structures() -> dict[str, Atoms]:
    small_cell = bulk("Cu", "fcc", a=3.6) * (1, 1, 1)  # 1 atom: every neighbour is an image
    small_cell.rattle(0.05, seed=1)
    triclinic = bulk("NaCl", "rocksalt", a=5.0) * (2, 1, 1)
    triclinic.set_cell(triclinic.cell.array + np.array([[0, 0.4, 0], [0.3, 0, 0], [0, 0, 0]]),
                       scale_atoms=True)  # fmt: skip
    triclinic.rattle(0.05, seed=2)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    slab.pbc = (True, True, False)
    slab.rattle(0.05, seed=3)
    return {"one-atom cell": small_cell, "triclinic": triclinic, "slab": slab,
            "molecule": molecule("CH3CH2OH")}  # fmt: skip


def graph_of(atoms: Atoms, r_max: float = 4.0, dtype=torch.float64) -> AtomicGraph:
    return configuration_to_graph(Configuration.from_atoms(atoms), r_max, dtype=dtype)


@pytest.mark.parametrize("name", list(structures()))
@pytest.mark.parametrize("shuffled", [False, True])
def test_every_edge_is_paired_with_its_reverse(name, shuffled):
    graph = graph_of(structures()[name])
    edge_index, shift = graph.edge_index, graph.edge_shift
    if shuffled:  # any edge order (e.g. a list not sorted by sender)
        order = torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(0))
        edge_index, shift = edge_index[:, order], shift[order]
    order = pair_order(edge_index, shift, graph.positions.shape[0])
    assert order is not None
    assert torch.equal(torch.sort(order).values, torch.arange(edge_index.shape[1]))  # a permutation
    # edge 2p + 1 is the reverse of edge 2p: (j, i, -S) of (i, j, S), and not the edge itself
    first, second = order[0::2], order[1::2]
    assert torch.equal(edge_index[:, second], edge_index[:, first].flip(0))
    assert torch.equal(shift[second], -shift[first])
    assert bool((first < second).all())
    # per-pair rows and back: every other edge's row, then each row for both edges
    values = torch.arange(edge_index.shape[1], dtype=torch.float64)[order].unsqueeze(1)
    assert torch.equal(per_edge(first_of_pairs(values, True), values.shape[0])[0::2], values[0::2])
    assert torch.equal(per_edge(first_of_pairs(values, True), values.shape[0])[1::2], values[0::2])
    scripted = torch.jit.script(pair_order)
    assert torch.equal(scripted(edge_index, shift, graph.positions.shape[0]), order)


def test_lists_that_are_not_made_of_pairs_are_not_paired():
    graph = graph_of(structures()["triclinic"])
    edge_index, shift, n = graph.edge_index, graph.edge_shift, graph.positions.shape[0]
    half = edge_index[0] < edge_index[1]
    assert pair_order(edge_index[:, half], shift[half], n) is None  # a half list
    assert pair_order(edge_index[:, 1:], shift[1:], n) is None  # one edge without its reverse
    keep = torch.cat([torch.arange(edge_index.shape[1]), torch.tensor([0, 0])])
    assert pair_order(edge_index[:, keep], shift[keep], n) is None  # a duplicated edge
    loops = torch.tensor([[0, 1], [0, 1]])
    assert pair_order(loops, torch.zeros(2, 3, dtype=shift.dtype), n) is None  # (i, i, 0)
    swapped = edge_index.clone()
    e = int((edge_index[0] != edge_index[1]).nonzero()[0])  # an edge between two atoms
    swapped[0, e], swapped[1, e] = edge_index[1, e], edge_index[0, e]
    assert pair_order(swapped, shift, n) is None  # (j, i, S) where (j, i, -S) was
    assert pair_order(edge_index[:, :0], shift[:0], n) is None  # no edges


@pytest.mark.parametrize("chunked", [0, 1, 3])  # edges per chunk (0: one piece)
@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("name", ["mace_first_layer", "mace_vector", "nequip_hidden"])
def test_per_pair_hidden_rows_equal_the_same_rows_per_edge(name, backend, chunked):
    """aggregate_radial(hidden [P, h], paired=True) = aggregate_radial(each row twice), edges in
    pair order: values and gradients (features, harmonics, hidden, last layer), in one piece
    and in edge or receiver chunks."""
    if backend == "cueq":
        pytest.skip("cueq needs an NVIDIA GPU (tests/test_cueq_convolution.py)")
    _, convolution = convolution_pair(name, backend)
    convolution = convolution.double()
    if chunked and hasattr(convolution.tp, "chunk_elements"):
        # edge chunks of 1 or 3 edges (taken up to whole pairs), receiver chunks of one receiver
        convolution.tp.chunk_elements = chunked * convolution.tp.elements_per_edge
    num_edges, num_nodes = 60, 9
    features, edge_sh, _, sender, receiver = random_inputs(convolution, num_edges, num_nodes,
                                                           torch.float64, seed=5)  # fmt: skip
    # pair order: edge 2p + 1 is the reverse of edge 2p
    sender, receiver = (torch.stack([sender[:30], receiver[:30]], dim=1).view(-1),
                        torch.stack([receiver[:30], sender[:30]], dim=1).view(-1))  # fmt: skip
    generator = torch.Generator().manual_seed(7)
    hidden = torch.randn(30, 12, generator=generator, dtype=torch.float64)
    last = torch.randn(12, convolution.weight_numel, generator=generator, dtype=torch.float64)

    def run(per_pair: bool) -> list[torch.Tensor]:
        inputs = [t.clone().requires_grad_(True) for t in (features, edge_sh, hidden, last)]
        x, sh, h, w = inputs
        if per_pair:
            out = convolution.aggregate_radial(x, sh, h, w, sender, receiver, num_nodes, True)
        else:
            rows = h.repeat_interleave(2, dim=0)  # [E, h]
            out = convolution.aggregate_radial(x, sh, rows, w, sender, receiver, num_nodes)
        cotangent = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        return [out.detach(), *torch.autograd.grad((out * cotangent).sum(), inputs)]

    for actual, expected in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


MODELS = {
    "mace": ("mace", dict(hidden_irreps="8x0e+8x1o", max_ell=2, correlation=2,
                          radial_MLP=[16], distance_transform="Agnesi", apply_cutoff=False)),
    "mace_density": ("mace", dict(hidden_irreps="8x0e", max_ell=1, correlation=2,
                                  radial_MLP=[16],
                                  interaction="RealAgnosticDensityResidualInteractionBlock")),
    "nequip": ("nequip", dict(num_features=8, l_max=2, num_layers=2, radial_mlp_hidden=[16])),
}  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parity", [-1, 1])
def test_reverse_edges_harmonics_are_their_own_bit_for_bit(dtype, parity):
    """Y(-r) = (-1)^l Y(r) exactly in floating point for e3nn's harmonics (l <= 4, with either
    parity label), so models may evaluate them once per pair."""
    irreps_sh = e3nn.o3.Irreps.spherical_harmonics(4, p=parity)
    harmonics = e3nn.o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(500, 3, generator=generator, dtype=torch.float64).to(dtype) * 3.0
    vectors[:4] = torch.tensor([[0, 0, 1.5], [2.0, 0, 0], [0, -1.0, 0], [1e-3, 2.0, -4.0]])
    paired_vectors = torch.stack([vectors, -vectors], dim=1).view(-1, 3)  # pair order
    expected = harmonics(paired_vectors)
    signs = reflection_signs(irreps_sh).to(dtype)
    actual = harmonics_per_edge(harmonics(first_of_pairs(paired_vectors, True)), signs, True)
    assert torch.equal(actual, expected)
    assert torch.equal(harmonics_per_edge(expected, signs, False), expected)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", ["one-atom cell", "triclinic", "molecule"])
def test_models_give_the_same_energy_forces_and_stress_per_pair_as_per_edge(model_name, name):
    model_type, hyperparameters = MODELS[model_name]
    atoms = structures()[name]
    torch.manual_seed(0)
    model = build_model(model_type, species=sorted(set(atoms.numbers.tolist())), r_max=4.0,
                        **hyperparameters).double()  # fmt: skip
    graph = graph_of(atoms)
    forcefield = ForceField(model)
    stress = bool(atoms.pbc.any())
    model.share_pair_radial = True
    paired = forcefield(graph, compute_stress=stress)
    model.share_pair_radial = False
    per_edge = forcefield(graph, compute_stress=stress)
    for key in ["energy", "forces"] + (["stress"] if stress else []):
        torch.testing.assert_close(paired[key], per_edge[key], rtol=1e-10, atol=1e-10)
    model.share_pair_radial = True
    scripted = torch.jit.script(e3nn.util.jit.compile(model))  # as deployed: pairs found there too
    torch.testing.assert_close(scripted(graph), model(graph), rtol=1e-12, atol=1e-12)
    # a list that is not made of pairs takes the per-edge path: same numbers as a model told so
    half = graph._replace(edge_index=graph.edge_index[:, 1:], edge_shift=graph.edge_shift[1:])
    model.share_pair_radial = False
    expected = model(half)
    model.share_pair_radial = True
    torch.testing.assert_close(model(half), expected, rtol=0, atol=0)

