"""Every fast tensor-product backend (and fast linear layer) against e3nn, on the same weights.

Equal outputs and gradients of the convolution, equal energies/forces/stress of a whole model,
forces = -dE/dx by finite differences, rotation equivariance, TorchScript == eager, weights and
checkpoints interchangeable between backends, and energy conservation in a short NVE run.
The physics tests of tests/test_physics.py run for the fast backend through tests/model_zoo.py.

Reference numbers are compared with models built under a float64 default dtype: e3nn stores its
Wigner-3j constants in the default dtype at construction (float32-rounded after `.double()`),
while the fused backend always derives its constants from float64 values.
"""

from __future__ import annotations

import e3nn.util.jit
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from e3nn import o3
from scipy.spatial.transform import Rotation

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.models.serialization import model_from_record, model_record
from equimd.potentials.nn.convolution import (
    GEOMETRIC_BACKENDS,
    EdgeConvolution,
    apply_convolution_backend,
    available_backends,
    convolution_backend,
)
from equimd.potentials.nn.convolution.edge_aggregation import EdgeChunkedConvolution
from equimd.potentials.nn.convolution.edge_convolution import convolution_irreps
from equimd.potentials.nn.dtype import default_dtype
from equimd.potentials.nn.linear import (
    FastLinear,
    FastScalarTensorProduct,
    linear,
    scalar_tensor_product,
)
from tests.model_zoo import STRUCTURES, graph_of

# "cueq" runs here (cuEquivariance's plain-PyTorch method on CPU) when cuequivariance-torch is
# installed, as in the dev environment; tests/test_cueq_convolution.py checks that it is.
FAST_BACKENDS = [b for b in available_backends() if b != "e3nn" and b not in GEOMETRIC_BACKENDS]
# Whole models also run the geometric backends ("so2": exact when edge_sh = Y(edge vectors), as
# in every model; its convolution-level tests are in tests/test_so2_convolution.py).
MODEL_BACKENDS = FAST_BACKENDS + list(GEOMETRIC_BACKENDS)
# Whole-model runs of the backends other than the default ("fused") go to `make test-slow`, but
# for one check each in the default suite (`test_forces_and_stress_equal_reference`): their
# convolution-level tests above run by default, and the model code is the same for every backend.
# ("compiled": its model-level checks in the default suite are in tests/test_compiled_kernel.py)
SLOW_IN_LONG_RUNS = {"so2", "cueq", "compiled"}


def long_run_backends(backends: list[str] | None = None) -> list:
    return [pytest.param(b, marks=pytest.mark.slow) if b in SLOW_IN_LONG_RUNS else b
            for b in (MODEL_BACKENDS if backends is None else backends)]

# (irreps_node, l_max of the spherical harmonics, parity, irreps_target)
CONVOLUTIONS = {
    "nequip_first_layer": ("8x0e", 2, True, "8x0e+8x0o+8x1o+8x1e+8x2e+8x2o"),
    "nequip_hidden": ("8x0o+8x0e+8x1o+8x1e+8x2o+8x2e", 2, True, "8x0e+8x0o+8x1o+8x1e+8x2e+8x2o"),
    "mixed_multiplicities_l3": ("5x0e+3x1o+2x2e+4x3o", 3, True, "0e+1o+2e+3o+1e"),
    "no_parity": ("6x0e+6x1o", 1, False, "6x0e+6x1o"),
    "parity_partners_mixed_multiplicities": ("4x0e+3x0o+4x1o+6x1e+2x2e", 2, True, "0e+0o+1o+1e+2e+2o"),
    "mace_first_layer": ("16x0e", 3, True, "16x0e+16x1o+16x2e+16x3o"),
    "mace_vector": ("8x0e+8x1o", 3, True, "8x0e+8x1o+8x2e+8x3o"),
}



def convolution_pair(name: str, backend: str) -> tuple[EdgeConvolution, EdgeConvolution]:
    node, l_max, parity, target = CONVOLUTIONS[name]
    irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=-1 if parity else 1)
    with default_dtype(torch.float64):
        reference = EdgeConvolution(o3.Irreps(node), irreps_sh, o3.Irreps(target), backend="e3nn")
        fast = EdgeConvolution(o3.Irreps(node), irreps_sh, o3.Irreps(target), backend=backend)
    return reference, fast


def random_inputs(convolution: EdgeConvolution, num_edges: int, num_nodes: int, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_nodes, convolution.irreps_node.dim, generator=generator)
    vectors = torch.randn(num_edges, 3, generator=generator)
    edge_sh = o3.spherical_harmonics(convolution.irreps_sh, vectors, True, "component")
    weights = torch.randn(num_edges, convolution.weight_numel, generator=generator)
    sender = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    receiver = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    return (
        features.to(dtype),
        edge_sh.to(dtype),
        weights.to(dtype),
        sender,
        receiver,
    )


TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_fast_backend_has_reference_layout(name, backend):
    reference, fast = convolution_pair(name, backend)
    assert fast.irreps_out == reference.irreps_out
    assert fast.weight_numel == reference.weight_numel
    assert list(fast.parameters()) == [] and list(reference.parameters()) == []


def split_into_edge_chunks(convolution: EdgeConvolution, edges_per_chunk: int) -> None:
    """Make a fast backend's `aggregate` process edges in chunks of about this size (skips the
    test for a backend without edge chunks: "cueq" hands all edges to its kernel at once)."""
    if not isinstance(convolution.tp, EdgeChunkedConvolution):
        pytest.skip(f"backend {convolution.backend!r} does not split edges into chunks")
    convolution.tp.chunk_elements = edges_per_chunk * convolution.tp.elements_per_edge
    convolution.tp.keep_messages_below_bytes = 0  # chunked runs also take the index-only scatter


@pytest.mark.parametrize("edges_per_chunk", [0, 7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_fast_backend_equals_reference(name, backend, dtype, edges_per_chunk):
    reference, fast = convolution_pair(name, backend)
    reference, fast = reference.to(dtype), fast.to(dtype)
    if edges_per_chunk:
        split_into_edge_chunks(fast, edges_per_chunk)
        assert fast.tp.edge_chunk_size(60) == edges_per_chunk
    features, edge_sh, weights, sender, receiver = random_inputs(reference, 60, 9, dtype)
    edge_features = features[sender]
    scale = 1.0 + reference(edge_features, edge_sh, weights).abs().max().item()
    tolerance = {k: v * scale for k, v in TOLERANCES[dtype].items()}
    torch.testing.assert_close(
        fast(edge_features, edge_sh, weights), reference(edge_features, edge_sh, weights), **tolerance
    )

    def aggregate_and_grads(convolution):
        inputs = [t.clone().requires_grad_(True) for t in (features, edge_sh, weights)]
        out = convolution.aggregate(inputs[0], inputs[1], inputs[2], sender, receiver, 9)
        cotangent = torch.linspace(-1.0, 1.0, out.numel(), dtype=dtype).reshape(out.shape)
        grads = torch.autograd.grad((out * cotangent).sum(), inputs)
        return [out.detach(), *grads]

    for fast_value, reference_value in zip(
        aggregate_and_grads(fast), aggregate_and_grads(reference), strict=True
    ):
        torch.testing.assert_close(fast_value, reference_value, **tolerance)


def aggregate_with_grads(tp, features, edge_sh, weights, sender, receiver, num_nodes):
    """aggregate and the gradients of a fixed linear function of it w.r.t. its three inputs
    (create_graph: the gradients are differentiable again, as training needs)."""
    inputs = [t.clone().requires_grad_(True) for t in (features, edge_sh, weights)]
    out = tp.aggregate(inputs[0], inputs[1], inputs[2], sender, receiver, num_nodes)
    cotangent = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * cotangent).sum(), inputs, create_graph=True)
    second = torch.autograd.grad(sum(g.square().sum() for g in grads), inputs[1])
    return [out.detach(), *(g.detach() for g in grads), *second]


def convolution_layer(
    node: str, sh: str, targets: str
) -> tuple[tuple[str, str, str], list[tuple[int, int, int]]]:
    """(irreps_node, irreps_sh, irreps_out) and paths (i1, i2, i_out) of the models'
    convolution (`convolution_irreps`): every input block ⊗ spherical harmonic → each irrep
    of `targets` it reaches."""
    irreps_out, instructions = convolution_irreps(o3.Irreps(node), o3.Irreps(sh), o3.Irreps(targets))
    return (node, sh, str(irreps_out)), [(i1, i2, i_out) for i1, i2, i_out, _, _ in instructions]


@pytest.mark.parametrize("nodes_per_chunk", [None, 1, 2])
@pytest.mark.parametrize("irreps, paths, most_paths", [
    # MACE's first layer: one path per group
    (("16x0e", "0e+1o+2e+3o", "16x0e+16x1o+16x2e+16x3o"), [(0, ell, ell) for ell in range(4)], 1),
    # two paths to 1o (and to 1e) from each input block: groups of two paths
    (("4x0e+3x0o", "0e+1o", "4x0e+3x0o+4x1o+3x1e+4x1o+3x1e"),
     [(0, 0, 0), (1, 0, 1), (0, 1, 2), (1, 1, 3), (0, 1, 4), (1, 1, 5)], 2),
    # vector and l = 2 inputs (MACE's and NequIP's later layers): d1 > 1, groups of 3 paths
    (*convolution_layer("4x0e+3x1o+2x1e+2x2e", "0e+1o+2e", "0e+0o+1e+1o+2e+2o+3e+3o+4e+4o"), 3),
])
def test_receiver_contraction_equals_message_path(irreps, paths, most_paths, nodes_per_chunk):
    """Layers sum per receiver with padded GEMMs (fused.py, 7.): the same values, gradients
    and second derivatives as scattering the messages, for scalar and higher-degree inputs,
    also with receivers in chunks, isolated nodes and a receiver whose edges come in any order;
    scripted (as deployed) the same values."""
    from equimd.potentials.nn.convolution.fused import FusedUVUConvolution

    node, sh, out = (o3.Irreps(x) for x in irreps)
    instructions = [(i1, i2, i_out, 1.0 + 0.1 * i_out) for i1, i2, i_out in paths]
    with default_dtype(torch.float64):
        tp = FusedUVUConvolution(node, sh, out, instructions)
    assert max(tp.group_paths) == most_paths
    generator = torch.Generator().manual_seed(3)
    num_nodes, num_edges = 11, 70
    features = torch.randn(num_nodes, node.dim, generator=generator, dtype=torch.float64)
    edge_sh = torch.randn(num_edges, sh.dim, generator=generator, dtype=torch.float64)
    weights = torch.randn(num_edges, tp.weight_numel, generator=generator, dtype=torch.float64)
    sender = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    receiver = torch.randint(0, num_nodes - 2, (num_edges,), generator=generator)  # 2 isolated
    if nodes_per_chunk is not None:  # receivers in chunks of this many nodes (not one chunk)
        counts = torch.bincount(receiver)
        tp.chunk_elements = nodes_per_chunk * int(counts.max()) * tp.padded_per_edge
        tp.receiver_one_piece = 1  # (default RECEIVER_ONE_PIECE chunks: one piece up to that many)
        assert num_nodes * int(counts.max()) * tp.padded_per_edge > tp.receiver_one_piece * tp.chunk_elements
    tp.sums_by_receiver = True  # whether or not the layer would choose it by its sizes
    assert tp.contracts_by_receiver(edge_sh)
    by_receiver = aggregate_with_grads(tp, features, edge_sh, weights, sender, receiver, num_nodes)
    if nodes_per_chunk is None:  # the deployed (TorchScript) form takes the same path
        scripted = torch.jit.script(e3nn.util.jit.compile(tp))
        torch.testing.assert_close(
            scripted.aggregate(features, edge_sh, weights, sender, receiver, num_nodes),
            by_receiver[0], rtol=0, atol=0,
        )
    tp.sums_by_receiver = False
    assert not tp.contracts_by_receiver(edge_sh)
    messages = aggregate_with_grads(tp, features, edge_sh, weights, sender, receiver, num_nodes)
    for actual, expected in zip(by_receiver, messages, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("node, sh, targets, by_receiver", [
    ("128x0e", "0e+1o+2e+3o", "0e+1o+2e+3o", True),  # MACE's first layer: scalar inputs
    ("128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e+3o", True),  # MACE-medium's second layer
    ("64x0e+64x0o+64x1o+64x1e+64x2e+64x2o", "0e+1o+2e", "0e+0o+1o+1e+2e+2o", False),  # NequIP
])
def test_layers_sum_per_receiver_when_the_padded_tables_are_smaller(node, sh, targets, by_receiver):
    """The fused backend contracts per receiver when its padded tables (with the padding
    allowance) hold fewer values per edge than the messages (fused.py, 7.)."""
    from equimd.potentials.nn.convolution.fused import (
        RECEIVER_PADDING_ALLOWANCE,
        FusedUVUConvolution,
    )

    irreps, paths = convolution_layer(node, sh, targets)
    instructions = [(i1, i2, i_out, 1.0) for i1, i2, i_out in paths]
    tp = FusedUVUConvolution(*(o3.Irreps(x) for x in irreps), instructions)
    ratio = RECEIVER_PADDING_ALLOWANCE * tp.padded_per_edge / sum(tp.group_message_sizes)
    assert tp.sums_by_receiver is by_receiver, ratio
    assert tp.contracts_by_receiver(torch.zeros(5, o3.Irreps(sh).dim)) is by_receiver


@pytest.mark.parametrize("edges_per_chunk", [None, 7])
@pytest.mark.parametrize("backend", ["e3nn", *FAST_BACKENDS, *GEOMETRIC_BACKENDS])
@pytest.mark.parametrize("name", ["mace_first_layer", "mace_vector", "nequip_hidden"])
def test_weights_from_the_radial_last_layer_equal_the_weight_tensor(name, backend, edges_per_chunk):
    """`aggregate_radial(hidden, last_weight)` (the backend forms weights = hidden @ last_weight
    per edge chunk and per group, from the matching columns) = `aggregate` on the product:
    values, gradients of every input, hidden and weight matrix, second derivatives; in one
    piece and in edge chunks (for fused scalar inputs: receivers in chunks)."""
    _, conv = convolution_pair(name, backend)
    conv = conv.double()
    features, edge_sh, _, sender, receiver = random_inputs(conv, 60, 9, torch.float64, seed=4)
    generator = torch.Generator().manual_seed(6)
    hidden0 = torch.randn(60, 12, generator=generator, dtype=torch.float64)
    last0 = torch.randn(12, conv.weight_numel, generator=generator, dtype=torch.float64)
    tp = conv.tp
    if edges_per_chunk is not None and isinstance(tp, EdgeChunkedConvolution):
        if tp.contracts_by_receiver(edge_sh):
            counts = torch.bincount(receiver)
            tp.chunk_elements = int(counts.max()) * tp.padded_per_edge
            tp.receiver_one_piece = 1
            assert 9 * int(counts.max()) * tp.padded_per_edge > tp.receiver_one_piece * tp.chunk_elements
        else:
            tp.chunk_elements = edges_per_chunk * tp.elements_per_edge
            assert tp.edge_chunk_size(60) == edges_per_chunk

    def run(radial: bool) -> list[torch.Tensor]:
        leaves = [t.clone().requires_grad_(True) for t in (features, edge_sh, hidden0, last0)]
        x, sh, hidden, last = leaves
        if radial:
            out = conv.aggregate_radial(x, sh, hidden, last, sender, receiver, 9)
        else:
            out = conv.aggregate(x, sh, hidden @ last, sender, receiver, 9)
        cotangent = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
        grads = torch.autograd.grad((out * cotangent).sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), sh)
        return [out.detach(), *(g.detach() for g in grads), *second]

    for actual, expected in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-11, atol=1e-11)


def test_radial_mlp_last_layer_reproduces_its_output_times_the_factor():
    """`RadialMLP.last_layer(x, factor)` = (hidden, W) with hidden @ W = forward(x) · factor:
    values and the gradients of x, the factor and every weight (also scripted)."""
    from equimd.potentials.nn.radial import radial_mlp

    with default_dtype(torch.float64):
        mlp = radial_mlp(8, [16, 16], 40)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(30, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    factor = torch.rand(30, 1, generator=generator, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(30, 40, generator=generator, dtype=torch.float64)
    expected = mlp(x) * factor
    grads_ref = torch.autograd.grad((expected * probe).sum(), [x, factor, *mlp.parameters()])
    for module in (mlp, torch.jit.script(mlp)):
        hidden, weight = module.last_layer(x, factor)
        assert hidden.shape == (30, 16) and weight.shape == (16, 40)
        product = hidden @ weight
        grads = torch.autograd.grad((product * probe).sum(), [x, factor, *mlp.parameters()])
        for actual, reference in zip([product, *grads], [expected, *grads_ref], strict=True):
            torch.testing.assert_close(actual, reference, rtol=1e-12, atol=1e-12)
    hidden, weight = mlp.last_layer(x)
    torch.testing.assert_close(hidden @ weight, mlp(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("edges_per_chunk", [0, 1])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fast_backend_handles_no_edges(backend, edges_per_chunk):
    reference, fast = convolution_pair("nequip_hidden", backend)
    if edges_per_chunk:
        split_into_edge_chunks(fast, edges_per_chunk)
    features, edge_sh, weights, sender, receiver = random_inputs(reference, 0, 4, torch.float64)
    out = fast.aggregate(features, edge_sh, weights, sender, receiver, 4)
    assert out.shape == (4, fast.irreps_out.dim) and not out.any()
    assert fast(features[sender], edge_sh, weights).shape == (0, fast.irreps_out.dim)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", ["nequip_hidden", "mixed_multiplicities_l3"])
def test_rotation_equivariance(name, backend):
    _, fast = convolution_pair(name, backend)
    features, edge_sh, weights, sender, receiver = random_inputs(fast, 40, 6, torch.float64)
    vectors = torch.randn(40, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    edge_sh = o3.spherical_harmonics(fast.irreps_sh, vectors, True, "component")
    rotation = torch.as_tensor(Rotation.random(random_state=4).as_matrix(), dtype=torch.float64)
    for matrix in (rotation, -rotation):  # proper and improper
        with default_dtype(torch.float64):
            d_node = fast.irreps_node.D_from_matrix(matrix)
            d_out = fast.irreps_out.D_from_matrix(matrix)
        rotated_sh = o3.spherical_harmonics(fast.irreps_sh, vectors @ matrix.T, True, "component")
        out = fast.aggregate(features, edge_sh, weights, sender, receiver, 6)
        rotated_out = fast.aggregate(features @ d_node.T, rotated_sh, weights, sender, receiver, 6)
        torch.testing.assert_close(rotated_out, out @ d_out.T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_constants_are_float64_exact_after_double(backend):
    """A model built in float32 and cast to float64 has float64-exact coupling constants."""
    node, l_max, parity, target = CONVOLUTIONS["nequip_hidden"]
    irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=-1)
    with default_dtype(torch.float32):
        cast = EdgeConvolution(o3.Irreps(node), irreps_sh, o3.Irreps(target), backend=backend)
    _, exact = convolution_pair("nequip_hidden", backend)
    cast = cast.double()
    features, edge_sh, weights, sender, receiver = random_inputs(exact, 30, 5, torch.float64)
    torch.testing.assert_close(
        cast.aggregate(features, edge_sh, weights, sender, receiver, 5),
        exact.aggregate(features, edge_sh, weights, sender, receiver, 5),
        rtol=1e-13,
        atol=1e-13,
    )


# ----------------------------------------------------------------------------- whole models


def nequip_pair(backend: str, **hyperparameters) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same NequIP weights with the e3nn reference and with `backend` (float64)."""
    settings = dict(
        species=[1, 6, 8, 29], r_max=4.0, l_max=2, num_features=8, num_layers=2,
        avg_num_neighbors=10.0, resnet=True,
    )
    settings.update(hyperparameters)
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        reference = apply_convolution_backend(build_model("nequip", **settings), "e3nn")
        fast = apply_convolution_backend(build_model("nequip", **settings), backend)
    e0 = [0.1 * (-1) ** k * (k + 1) for k in range(reference.num_species)]
    reference.scale_shift.set_statistics(e0, scale=1.3, shift=-0.2)
    fast.load_state_dict(reference.state_dict(), strict=True)
    return reference, fast


@pytest.mark.parametrize("backend", long_run_backends())
def test_checkpoints_are_interchangeable_between_backends(backend):
    reference, fast = nequip_pair(backend)
    back = apply_convolution_backend(build_model("nequip", **reference.hyperparameters()), "e3nn")
    back = back.double()
    back.load_state_dict(fast.state_dict(), strict=True)  # fast → reference
    graph = graph_of(STRUCTURES["molecule"]())
    torch.testing.assert_close(back(graph), reference(graph), rtol=0, atol=0)


@pytest.mark.parametrize("backend", long_run_backends())
def test_checkpoints_record_and_reapply_the_backend(backend):
    """The backend is stored next to the hyperparameters (not among them) and applied when the
    model is rebuilt; so is the `tp_backend` hyperparameter of checkpoints written before."""
    reference, fast = nequip_pair(backend)
    record = model_record(fast)
    assert record["convolution_backend"] == backend
    assert "tp_backend" not in record["hyperparameters"]
    older = {k: v for k, v in record.items() if k != "convolution_backend"}
    older["hyperparameters"] = dict(record["hyperparameters"], tp_backend=backend)
    graph = graph_of(STRUCTURES["molecule"]())
    for stored in (record, older):
        with default_dtype(torch.float64):
            rebuilt = model_from_record(stored)
        assert convolution_backend(rebuilt) == backend
        torch.testing.assert_close(rebuilt(graph), reference(graph), rtol=1e-10, atol=1e-10)


def test_training_config_names_the_backend():
    """`model.tp_backend` of a training config is checked by name (the trainer applies it to
    the built model)."""
    from equimd.potentials.train.config import ConfigError, config_from_dict

    raw = {"data": {"train": "frames.xyz"}, "model": {"model_type": "nequip", "tp_backend": "so2"}}
    config = config_from_dict(raw)
    assert config.model.tp_backend == "so2" and "tp_backend" not in config.model.hyperparameters
    raw["model"]["tp_backend"] = "nope"
    with pytest.raises(ConfigError, match="tp_backend"):
        config_from_dict(raw)


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_forces_and_stress_equal_reference(backend):
    reference, fast = nequip_pair(backend)
    with default_dtype(torch.float64):
        chunked = apply_convolution_backend(build_model("nequip", **fast.hyperparameters()), backend)
    chunked.load_state_dict(fast.state_dict())
    for layer in chunked.interactions:
        if isinstance(layer.convolution.tp, EdgeChunkedConvolution):
            split_into_edge_chunks(layer.convolution, 30)
    for structure in sorted(STRUCTURES):
        graph = graph_of(STRUCTURES[structure]())
        expected = ForceField(reference)(graph, compute_stress=True)
        for model in (fast, chunked):
            actual = ForceField(model)(graph, compute_stress=True)
            for key in ("energy", "atomic_energies", "forces", "stress"):
                torch.testing.assert_close(actual[key], expected[key], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", long_run_backends(FAST_BACKENDS))
def test_layers_compute_only_what_the_energy_depends_on(backend):
    """The last interaction convolves only into 0e (the readout reads only scalars), the one
    before only into the irreps the last one reads; the reference computes everything.
    (That this is exact is checked by the force/stress/gradient comparisons.)"""
    reference, fast = nequip_pair(backend, num_layers=4)
    last, before_last = fast.interactions[-1], fast.interactions[-2]
    assert set(ir for _, ir in last.pruned_convolution.irreps_out) == {o3.Irrep("0e")}
    assert last.pruned_weight_columns.numel() < last.convolution.weight_numel
    assert set(ir for _, ir in before_last.pruned_convolution.irreps_out) == {
        o3.Irrep(ir) for ir in ("0e", "1o", "2e")
    }
    assert not any(hasattr(layer, "pruned_convolution") for layer in reference.interactions)


@pytest.mark.parametrize("backend", long_run_backends())
def test_training_gradients_equal_reference(backend):
    """Parameter gradients of an energy + forces loss (double backward) are the same."""
    reference, fast = nequip_pair(backend)
    graph = graph_of(STRUCTURES["periodic_mixed_species"]())
    gradients = []
    for model in (reference, fast):
        out = ForceField(model)(graph, training=True)
        loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
        parameters = [p for p in model.parameters() if p.requires_grad]
        gradients.append(torch.autograd.grad(loss, parameters, allow_unused=True))
    parameters = [p for p in fast.parameters() if p.requires_grad]
    for parameter, expected, actual in zip(parameters, *gradients, strict=True):
        zeros = torch.zeros_like(parameter)
        torch.testing.assert_close(
            zeros if actual is None else actual,
            zeros if expected is None else expected,
            rtol=1e-9,
            atol=1e-11,
        )


@pytest.mark.parametrize("backend", ["fused", "so2"])
def test_recomputed_edge_chunks_equal_reference(monkeypatch, backend):
    """Large systems: messages recomputed in the backward pass (forced here on a small system
    by a zero byte threshold and 13-edge chunks) give the same energy, forces, stress and
    training gradients (double backward) as the reference, and keep fewer tensors."""
    reference, fast = nequip_pair(backend)
    chunked = [m for m in fast.modules() if isinstance(m, EdgeChunkedConvolution)]
    assert chunked
    for module in chunked:
        module.chunk_elements = 13 * module.elements_per_edge // 16  # 16x this in recompute
        module.recompute_above_bytes = 0
        module.keep_messages_below_bytes = 0
    calls = []
    recomputed = EdgeChunkedConvolution._aggregate_recomputed

    def counted(self, *args):
        calls.append(args[-1])
        return recomputed(self, *args)

    monkeypatch.setattr(EdgeChunkedConvolution, "_aggregate_recomputed", counted)
    graph = graph_of(STRUCTURES["periodic_mixed_species"]())
    assert graph.edge_index.shape[1] > 13
    expected = ForceField(reference)(graph, compute_stress=True)
    actual = ForceField(fast)(graph, compute_stress=True)
    assert len(calls) == len(fast.interactions)  # every layer took the recomputing path
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-10, atol=1e-10)
    gradients = []
    for model in (reference, fast):
        out = ForceField(model)(graph, training=True)
        loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
        gradients.append(torch.autograd.grad(loss, list(model.parameters()), allow_unused=True))
    for parameter, expected_grad, actual_grad in zip(fast.parameters(), *gradients, strict=True):
        zeros = torch.zeros_like(parameter)
        torch.testing.assert_close(
            zeros if actual_grad is None else actual_grad,
            zeros if expected_grad is None else expected_grad,
            rtol=1e-9, atol=1e-11,
        )  # fmt: skip


@pytest.mark.parametrize("backend", long_run_backends())
def test_float32_forces_equal_reference(backend):
    reference, fast = nequip_pair(backend)
    graph = graph_of(STRUCTURES["triclinic_cu"](), torch.float32)
    expected = ForceField(reference.float())(graph)
    actual = ForceField(fast.float())(graph)
    scale = expected["forces"].abs().max().item()
    torch.testing.assert_close(actual["energy"], expected["energy"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual["forces"], expected["forces"], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("backend", long_run_backends())
def test_forces_are_negative_energy_gradient(backend):
    _, fast = nequip_pair(backend, l_max=3)
    forcefield = ForceField(fast)
    atoms = STRUCTURES["periodic_mixed_species"]()
    forces = forcefield(graph_of(atoms))["forces"].detach().numpy()
    delta = 1e-5
    for atom, axis in [(0, 0), (3, 1), (7, 2)]:
        energies = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.positions[atom, axis] += sign * delta
            energies.append(forcefield(graph_of(displaced))["energy"].item())
        numerical = -(energies[0] - energies[1]) / (2 * delta)
        assert numerical == pytest.approx(forces[atom, axis], rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("edges_per_chunk", [0, 50])
@pytest.mark.parametrize("backend", long_run_backends())
def test_torchscript_matches_eager(backend, edges_per_chunk):
    _, fast = nequip_pair(backend)
    for layer in fast.interactions:
        if edges_per_chunk:
            split_into_edge_chunks(layer.convolution, edges_per_chunk)
    graph = graph_of(STRUCTURES["triclinic_cu"]())
    eager = ForceField(fast)(graph, compute_stress=True)
    scripted = torch.jit.script(ForceField(e3nn.util.jit.compile(fast)))
    for _ in range(3):  # the profiling executor specialises on the first calls
        out = scripted(graph, True, True, False)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(out[key], eager[key], rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- NVE


class _ModelCalculator(Calculator):
    """Minimal ASE calculator around a `ForceField` (tests only; see md_drivers for the real one)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.forcefield = ForceField(model)
        self.r_max = model.r_max

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        graph = configuration_to_graph(Configuration.from_atoms(self.atoms), self.r_max)
        out = self.forcefield(graph)
        self.results = {
            "energy": out["energy"].item(),
            "forces": out["forces"].detach().numpy().copy(),
        }


def nve_total_energies(model: torch.nn.Module, steps: int) -> np.ndarray:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.03, seed=1)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(2))
    atoms.calc = _ModelCalculator(model)
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    energies = [atoms.get_total_energy()]
    for _ in range(steps // 10):
        dynamics.run(10)
        energies.append(atoms.get_total_energy())
    return np.array(energies)


@pytest.mark.parametrize("backend", long_run_backends())
def test_nve_conserves_energy_like_reference(backend):
    """300 fs of NVE (Cu, 32 atoms): same trajectory energies and the same (small) drift."""
    reference, fast = nequip_pair(
        backend, species=[29], num_features=4, l_max=1, num_layers=2, r_max=4.0
    )
    for model in (reference, fast):
        model.scale_shift.set_statistics([0.0], scale=0.5, shift=0.0)
    expected = nve_total_energies(reference, 300)
    actual = nve_total_energies(fast, 300)
    drift_reference = np.abs(expected - expected[0]).max()
    drift_fast = np.abs(actual - actual[0]).max()
    kinetic_scale = 32 * 1.5 * units.kB * 300
    assert drift_reference < 1e-3 * kinetic_scale  # the test is meaningful: a conserving model
    assert drift_fast <= drift_reference + 1e-9
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- linear layers

LINEARS = {
    "nequip_linear_out": ("4x0o+4x0o+4x0e+4x1o+4x1o+4x1e+4x2e", "4x0e+4x0o+8x0e+4x1o+4x1e+4x2e"),
    "duplicate_blocks": ("3x0e+2x1o+5x0e", "4x0e+4x0e+5x1o"),
    "embedding": ("4x0e", "16x0e"),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(LINEARS))
def test_fast_linear_equals_e3nn(name, dtype):
    irreps_in, irreps_out = LINEARS[name]
    with default_dtype(torch.float64):
        reference = o3.Linear(irreps_in, irreps_out)
        fast = FastLinear(irreps_in, irreps_out)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    fast.load_state_dict(reference.state_dict(), strict=True)
    reference, fast = reference.to(dtype), fast.to(dtype)
    x = torch.randn(11, reference.irreps_in.dim, dtype=dtype, requires_grad=True)
    expected = reference(x)
    actual = fast(x)
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype])
    cotangent = torch.randn_like(expected)
    torch.testing.assert_close(
        torch.autograd.grad(actual, x, cotangent)[0],
        torch.autograd.grad(expected, x, cotangent)[0],
        **TOLERANCES[dtype],
    )
    scripted = torch.jit.script(e3nn.util.jit.compile(fast))
    torch.testing.assert_close(scripted(x), actual, rtol=0, atol=0)


@pytest.mark.parametrize("scalars", ["one_hot", "general"])
def test_fast_scalar_tensor_product_equals_e3nn(scalars):
    irreps_in, irreps_attrs = "4x0o+4x0e+4x1o+4x1e+4x2e", "3x0e"
    irreps_out = "4x0e+4x0o+8x0e+4x1o+4x1e+4x2e"
    with default_dtype(torch.float64):
        reference = o3.FullyConnectedTensorProduct(irreps_in, irreps_attrs, irreps_out)
        fast = FastScalarTensorProduct(irreps_in, irreps_attrs, irreps_out)
    fast.load_state_dict(reference.state_dict(), strict=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, reference.irreps_in1.dim, generator=generator, dtype=torch.float64)
    if scalars == "one_hot":
        attrs = torch.nn.functional.one_hot(torch.arange(9) % 3, 3).double()
    else:
        attrs = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(fast(x, attrs), reference(x, attrs), rtol=1e-12, atol=1e-12)
    scripted = torch.jit.script(e3nn.util.jit.compile(fast))
    torch.testing.assert_close(scripted(x, attrs), fast(x, attrs), rtol=0, atol=0)


@pytest.mark.parametrize(
    "irreps_in, irreps_out",
    [
        ("4x0e", "6x0e+4x1o+4x2e"),  # NequIP's first self-connection: 1o and 2e have no path
        ("4x0e+4x1o+4x2e", "8x0e+4x1o+4x1e+4x2o+4x2e"),  # its second: 1e and 2o have none
    ],
)
def test_fast_scalar_tensor_product_outputs_zeros_where_no_path_leads(irreps_in, irreps_out):
    """e3nn's layer outputs zeros (and passes no gradient) for output blocks that no path
    reaches; the fast layer must do the same instead of falling back to e3nn."""
    with default_dtype(torch.float64):
        reference = o3.FullyConnectedTensorProduct(irreps_in, "2x0e", irreps_out)
        fast = scalar_tensor_product(irreps_in, "2x0e", irreps_out)
    assert type(fast) is FastScalarTensorProduct
    fast.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(7, reference.irreps_in1.dim, dtype=torch.float64, requires_grad=True)
    attrs = torch.nn.functional.one_hot(torch.arange(7) % 2, 2).double()
    expected, actual = reference(x, attrs), fast(x, attrs)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    reached = {reference.irreps_out[i.i_out].ir for i in reference.instructions}
    unreached = [s for (_, ir), s in zip(reference.irreps_out, reference.irreps_out.slices(),
                                         strict=True) if ir not in reached]
    assert unreached and all(bool((actual[:, s] == 0).all()) for s in unreached)
    cotangent = torch.randn_like(expected)
    torch.testing.assert_close(
        torch.autograd.grad(actual, x, cotangent)[0],
        torch.autograd.grad(expected, x, cotangent)[0],
        rtol=1e-12, atol=1e-12,
    )
    scripted = torch.jit.script(e3nn.util.jit.compile(fast))
    torch.testing.assert_close(scripted(x, attrs), actual, rtol=0, atol=0)


def test_fast_linear_outputs_zeros_where_no_path_leads():
    with default_dtype(torch.float64):
        reference = o3.Linear("4x0e+2x1o", "3x0e+2x1o+2x2e")
        fast = linear("4x0e+2x1o", "3x0e+2x1o+2x2e")
    assert type(fast) is FastLinear
    fast.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(5, reference.irreps_in.dim, dtype=torch.float64)
    torch.testing.assert_close(fast(x), reference(x), rtol=1e-12, atol=1e-12)
    assert bool((fast(x)[:, -10:] == 0).all())


def test_fast_layers_are_float64_exact_after_double():
    with default_dtype(torch.float32):
        cast = FastLinear("5x0e+5x0e+3x1o", "7x0e+2x1o").double()
    with default_dtype(torch.float64):
        exact = FastLinear("5x0e+5x0e+3x1o", "7x0e+2x1o")
    exact.load_state_dict(cast.state_dict())
    x = torch.randn(4, exact.irreps_in.dim, dtype=torch.float64)
    torch.testing.assert_close(cast(x), exact(x), rtol=0, atol=0)


def test_layer_factories_fall_back_to_e3nn():
    assert type(linear("4x0e", "4x0e", biases=True)) is o3.Linear
    assert type(linear("4x0e+2x1o", "3x0e+1x1o")) is FastLinear
    assert type(scalar_tensor_product("4x0e", "2x0e+1x0o", "4x0e")) is o3.FullyConnectedTensorProduct
    assert type(scalar_tensor_product("4x0e", "2x0e", "4x0e")) is FastScalarTensorProduct
