"""The SO(2) (eSCN) convolution backend ("so2") against the e3nn reference, on the same weights.

"so2" reads the edge direction from the l = 1 spherical harmonics and is exact when `edge_sh`
are the harmonics of the edge vectors (as in every model): the harmonics here are computed from
float64 edge vectors, and gradients are taken with respect to the node features, the weights and
the edge vectors (not with respect to `edge_sh` as a free input, which only the backends outside
`GEOMETRIC_BACKENDS` reproduce). Edges along ±x, ±y, ±z (the poles and the chart boundary r̂_y = 0 of
the edge frame) are part of every comparison.
"""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from scipy.spatial.transform import Rotation

from equimd.potentials.nn.convolution import BACKENDS, GEOMETRIC_BACKENDS, EdgeConvolution
from equimd.potentials.nn.convolution.so2 import SO2UVUConvolution, wigner_sampling
from tests.test_tensor_product_backends import (
    CONVOLUTIONS,
    TOLERANCES,
    convolution_pair,
    default_dtype,
    split_into_edge_chunks,
)

AXES = [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0],
        [0.0, 0.0, -1.0], [0.6, 0.0, -0.8], [-2.0, 0.0, 0.5]]  # poles and r̂_y = 0 exactly


def edge_vectors(num_edges: int, seed: int = 0) -> torch.Tensor:
    """[num_edges, 3] float64 Å: random lengths/directions, the first ones along the axes."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(num_edges, 3, generator=generator, dtype=torch.float64)
    axes = torch.tensor(AXES, dtype=torch.float64) * 1.7
    vectors[: len(AXES)] = axes[:num_edges]
    return vectors


def graph_inputs(convolution: EdgeConvolution, num_edges: int, num_nodes: int, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed + 1)
    features = torch.randn(num_nodes, convolution.irreps_node.dim, generator=generator)
    weights = torch.randn(num_edges, convolution.weight_numel, generator=generator)
    sender = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    receiver = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    return features.to(dtype), edge_vectors(num_edges, seed).to(dtype), weights.to(dtype), sender, receiver


def sh_of(convolution: EdgeConvolution, vectors: torch.Tensor) -> torch.Tensor:
    return o3.spherical_harmonics(convolution.irreps_sh, vectors, True, "component")


def test_so2_is_registered_as_geometric_backend():
    assert "so2" in GEOMETRIC_BACKENDS and BACKENDS["so2"] is SO2UVUConvolution
    _, so2 = convolution_pair("nequip_hidden", "so2")
    assert isinstance(so2.tp, SO2UVUConvolution)
    with pytest.raises(ValueError, match="l=1"):
        EdgeConvolution(o3.Irreps("4x0e"), o3.Irreps("0e"), o3.Irreps("4x0e"), backend="so2")


@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_so2_has_reference_layout(name):
    reference, so2 = convolution_pair(name, "so2")
    assert so2.irreps_out == reference.irreps_out
    assert so2.weight_numel == reference.weight_numel
    assert list(so2.parameters()) == []


@pytest.mark.parametrize("l_max", [1, 2, 3, 4, 6])
def test_wigner_matrices_are_exact(l_max):
    """D^l(R) = Y^l(R V) A_l⁺ reproduces e3nn's Wigner matrices for random rotations."""
    points, inverses = wigner_sampling(l_max)
    rotations = torch.as_tensor(Rotation.random(5, random_state=0).as_matrix())
    offset = 0
    for degree in range(1, l_max + 1):
        rotated = points @ rotations.transpose(1, 2)
        sampled = o3.spherical_harmonics(degree, rotated, False, "component")
        wigner = sampled.transpose(1, 2) @ inverses[:, offset : offset + 2 * degree + 1]
        with default_dtype(torch.float64):
            expected = torch.stack([o3.Irrep(degree, 1).D_from_matrix(r) for r in rotations])
        torch.testing.assert_close(wigner, expected, rtol=0, atol=1e-12)
        offset += 2 * degree + 1


@pytest.mark.parametrize("edges_per_chunk", [0, 7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_so2_equals_reference(name, dtype, edges_per_chunk):
    """Outputs and gradients (features, weights, edge vectors) equal e3nn's, poles included."""
    reference, so2 = convolution_pair(name, "so2")
    reference, so2 = reference.to(dtype), so2.to(dtype)
    if edges_per_chunk:
        split_into_edge_chunks(so2, edges_per_chunk)
        assert so2.tp.edge_chunk_size(60) == edges_per_chunk
    features, vectors, weights, sender, receiver = graph_inputs(reference, 60, 9, dtype)
    edge_sh = sh_of(reference, vectors)
    expected = reference(features[sender], edge_sh, weights)
    scale = 1.0 + expected.abs().max().item()
    tolerance = {k: v * scale for k, v in TOLERANCES[dtype].items()}
    torch.testing.assert_close(so2(features[sender], edge_sh, weights), expected, **tolerance)

    def aggregate_and_grads(convolution):
        inputs = [t.clone().requires_grad_(True) for t in (features, vectors, weights)]
        sh = sh_of(convolution, inputs[1])
        out = convolution.aggregate(inputs[0], sh, inputs[2], sender, receiver, 9)
        cotangent = torch.linspace(-1.0, 1.0, out.numel(), dtype=dtype).reshape(out.shape)
        grads = torch.autograd.grad((out * cotangent).sum(), inputs)
        return [out.detach(), *grads]

    for actual, wanted in zip(aggregate_and_grads(so2), aggregate_and_grads(reference), strict=True):
        assert torch.isfinite(actual).all()
        torch.testing.assert_close(actual, wanted, **tolerance)


def test_so2_handles_unnormalized_harmonics_and_zero_vectors():
    """Any radial scaling of the harmonics (normalize=False: |r|^l) is carried by the m = 0
    values; a zero vector (a padding edge) gives the reference's l2 = 0 contributions."""
    reference, so2 = convolution_pair("mixed_multiplicities_l3", "so2")
    features, vectors, weights, sender, receiver = graph_inputs(reference, 40, 6, torch.float64)
    vectors[-1] = 0.0
    for normalize, normalization in ((False, "component"), (True, "integral"), (True, "norm")):
        edge_sh = o3.spherical_harmonics(reference.irreps_sh, vectors, normalize, normalization)
        torch.testing.assert_close(
            so2.aggregate(features, edge_sh, weights, sender, receiver, 6),
            reference.aggregate(features, edge_sh, weights, sender, receiver, 6),
            rtol=1e-10, atol=1e-10,
        )


@pytest.mark.parametrize("edges_per_chunk", [0, 1])
def test_so2_handles_no_edges(edges_per_chunk):
    _, so2 = convolution_pair("nequip_hidden", "so2")
    if edges_per_chunk:
        split_into_edge_chunks(so2, edges_per_chunk)
    features, vectors, weights, sender, receiver = graph_inputs(so2, 0, 4, torch.float64)
    edge_sh = sh_of(so2, vectors)
    out = so2.aggregate(features, edge_sh, weights, sender, receiver, 4)
    assert out.shape == (4, so2.irreps_out.dim) and not out.any()
    assert so2(features[sender], edge_sh, weights).shape == (0, so2.irreps_out.dim)


@pytest.mark.parametrize("name", ["nequip_hidden", "mixed_multiplicities_l3"])
def test_so2_rotation_equivariance(name):
    _, so2 = convolution_pair(name, "so2")
    features, vectors, weights, sender, receiver = graph_inputs(so2, 40, 6, torch.float64)
    rotation = torch.as_tensor(Rotation.random(random_state=4).as_matrix(), dtype=torch.float64)
    out = so2.aggregate(features, sh_of(so2, vectors), weights, sender, receiver, 6)
    for matrix in (rotation, -rotation):  # proper and improper
        with default_dtype(torch.float64):
            d_node = so2.irreps_node.D_from_matrix(matrix)
            d_out = so2.irreps_out.D_from_matrix(matrix)
        rotated_sh = sh_of(so2, vectors @ matrix.T)
        rotated_out = so2.aggregate(features @ d_node.T, rotated_sh, weights, sender, receiver, 6)
        torch.testing.assert_close(rotated_out, out @ d_out.T, rtol=1e-10, atol=1e-10)


def test_so2_constants_are_float64_exact_after_double():
    node, l_max, _, target = CONVOLUTIONS["nequip_hidden"]
    irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=-1)
    with default_dtype(torch.float32):
        cast = EdgeConvolution(o3.Irreps(node), irreps_sh, o3.Irreps(target), backend="so2")
    _, exact = convolution_pair("nequip_hidden", "so2")
    cast = cast.double()
    features, vectors, weights, sender, receiver = graph_inputs(exact, 30, 5, torch.float64)
    edge_sh = sh_of(exact, vectors)
    torch.testing.assert_close(
        cast.aggregate(features, edge_sh, weights, sender, receiver, 5),
        exact.aggregate(features, edge_sh, weights, sender, receiver, 5),
        rtol=1e-13, atol=1e-13,
    )


def test_so2_convolution_is_scriptable():
    _, so2 = convolution_pair("mixed_multiplicities_l3", "so2")
    scripted = torch.jit.script(so2)
    features, vectors, weights, sender, receiver = graph_inputs(so2, 30, 5, torch.float64)
    edge_sh = sh_of(so2, vectors)
    for _ in range(3):  # the profiling executor specialises on the first calls
        out = scripted.aggregate(features, edge_sh, weights, sender, receiver, 5)
    torch.testing.assert_close(
        out, so2.aggregate(features, edge_sh, weights, sender, receiver, 5), rtol=1e-12, atol=1e-12
    )


# Whole models (checkpoints, forces/stress, training gradients, float32, finite differences,
# TorchScript, NVE) run "so2" through MODEL_BACKENDS in tests/test_tensor_product_backends.py.
