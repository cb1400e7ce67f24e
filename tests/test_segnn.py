"""SEGNN (potentials/models/segnn.py) against a direct, slow reference of the paper's equations.

No installable reference: the authors' code (RobDHess/Steerable-E3-GNN) is a repository, not a
package, built on torch-geometric, and segnn-jax is JAX. The reference below writes the
equations of Brandstetter et al. (ICLR 2022, eq. 6-9) with dense primitives only: Clebsch-Gordan
coefficients from `e3nn.o3.wigner_3j`, spherical harmonics from `e3nn.o3.spherical_harmonics`,
the gate, radial basis, envelope and aggregation written out here. It reads the model's weights
from its state dict by name and shares no code with the fast path (no equimd nn module).
The physics, export and fuzzing checks run for "segnn" through the shared contract tests.
"""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3

from equimd.potentials.models import build_model
from equimd.potentials.nn.steerable_mlp import weight_balanced_irreps
from tests.model_zoo import SPECIES
from tests.reference_checks import (
    assert_matches_reference,
    assert_reference_sees_weight,
    assert_smooth_at_cutoff,
    perturbed_model,
)

HYPERPARAMETERS = dict(
    hidden_features=8,
    lmax_h=2,
    lmax_attr=2,
    num_layers=2,
    num_bessel=4,
    polynomial_p=5,
    avg_num_neighbors=6.0,
)


def _perturbed_model(seed: int = 0, **changes) -> torch.nn.Module:
    return perturbed_model("segnn", {**HYPERPARAMETERS, **changes}, seed)


# ---------------------------------------------------------------- the reference, from the paper


def _irreps_list(irreps: o3.Irreps) -> list[tuple[int, int, int]]:
    return [(mul, ir.l, ir.p) for mul, ir in irreps]


def _blocks(x: torch.Tensor, irreps: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """[N, dim] → per irrep block [N, mul, 2l+1]."""
    out, start = [], 0
    for mul, deg, _ in irreps:
        out.append(x[:, start : start + mul * (2 * deg + 1)].reshape(-1, mul, 2 * deg + 1))
        start += mul * (2 * deg + 1)
    return out


def reference_cg_layer(x, irreps_x, a, irreps_a, irreps_out, weights, bias):
    """W_a x + b (eq. 6-7): every allowed (l1 ⊗ l2 → l) path, one weight per
    (input channel, attribute channel, output channel), the output of each irrep block averaged
    over its fan-in with unit-component normalisation √((2l+1) / fan_in); a bias on 0e outputs."""
    paths = [
        (i, j, k)
        for i, (_, l1, p1) in enumerate(irreps_x)
        for j, (_, l2, p2) in enumerate(irreps_a)
        for k, (_, deg, p) in enumerate(irreps_out)
        if abs(l1 - l2) <= deg <= l1 + l2 and p1 * p2 == p
    ]
    x_blocks, a_blocks = _blocks(x, irreps_x), _blocks(a, irreps_a)
    fan_in = {k: 0 for k in range(len(irreps_out))}
    for i, j, k in paths:
        fan_in[k] += irreps_x[i][0] * irreps_a[j][0]
    outputs = [x.new_zeros(x.shape[0], mul, 2 * deg + 1) for mul, deg, _ in irreps_out]
    offset = 0
    for i, j, k in paths:
        (m1, l1, _), (m2, l2, _), (mo, lo, _) = irreps_x[i], irreps_a[j], irreps_out[k]
        w = weights[offset : offset + m1 * m2 * mo].reshape(m1, m2, mo)
        offset += m1 * m2 * mo
        cg = o3.wigner_3j(l1, l2, lo, dtype=x.dtype)
        coupled = torch.einsum("nui,nvj,ijk->nuvk", x_blocks[i], a_blocks[j], cg)
        outputs[k] = outputs[k] + math.sqrt((2 * lo + 1) / fan_in[k]) * torch.einsum(
            "nuvk,uvw->nwk", coupled, w
        )
    assert offset == weights.numel()
    out = torch.cat([o.reshape(x.shape[0], -1) for o in outputs], dim=1)
    bias_columns = [
        c
        for (mul, deg, p), block in zip(
            irreps_out, o3.Irreps([(m, (deg, p)) for m, deg, p in irreps_out]).slices(), strict=True
        )
        if deg == 0 and p == 1
        for c in range(block.start, block.stop)
    ]
    out = out.clone()
    out[:, bias_columns] = out[:, bias_columns] + bias
    return out


def _gate_input_irreps(irreps: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Scalars, then one 0e gate per l > 0 channel (merged with the even scalars), then gated."""
    scalars = [b for b in irreps if b[1] == 0]
    gated = [b for b in irreps if b[1] > 0]
    n_gates = sum(m for m, _, _ in gated)
    assert [s[2] for s in scalars] == [1], "the reference handles even scalars only"
    return [(scalars[0][0] + n_gates, 0, 1)] + gated


def _unit_second_moment(f) -> float:
    """c with E[(c f(z))²] = 1 for z ~ N(0, 1). SEGNN's gate is e3nn's, whose activations are
    scaled so; e3nn estimates E[f(z)²] from 10⁶ normal samples (seed 0), and so does this, to
    agree beyond the estimate's 1e-3 sampling error."""
    z = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return float(f(z).pow(2).mean().pow(-0.5))


SILU_SCALE = _unit_second_moment(torch.nn.functional.silu)
SIGMOID_SCALE = _unit_second_moment(torch.sigmoid)


def reference_gate(y, irreps):
    """σ (eq. 9): SiLU on the scalars, sigmoid(gate) × each l > 0 channel (each activation
    scaled to unit second moment, as SEGNN's e3nn gate)."""
    n_scalars = irreps[0][0]
    gated = irreps[1:]
    n_gates = sum(m for m, _, _ in gated)
    scalars = SILU_SCALE * torch.nn.functional.silu(y[:, :n_scalars])
    gates = SIGMOID_SCALE * torch.sigmoid(y[:, n_scalars : n_scalars + n_gates])
    parts, start, g = [scalars], n_scalars + n_gates, 0
    for mul, deg, _ in gated:
        block = y[:, start : start + mul * (2 * deg + 1)].reshape(-1, mul, 2 * deg + 1)
        parts.append((block * gates[:, g : g + mul, None]).reshape(y.shape[0], -1))
        start += mul * (2 * deg + 1)
        g += mul
    return torch.cat(parts, dim=1)


def reference_segnn_energy(state, model, positions, numbers, edge_index, shifts, cell):
    """Σ_i E_i of one structure, from the paper's equations and the model's weights."""
    p = model.hyperparameters()
    r_max, n_bessel, poly_p = p["r_max"], p["num_bessel"], p["polynomial_p"]
    avg = p["avg_num_neighbors"]
    hidden = _irreps_list(model.irreps_hidden)
    attr = [(1, deg, (-1) ** deg) for deg in range(p["lmax_attr"] + 1)]
    n_species = len(SPECIES)
    n_atoms = positions.shape[0]

    def cg(prefix, x, irreps_x, a, irreps_a, irreps_out):
        return reference_cg_layer(
            x,
            irreps_x,
            a,
            irreps_a,
            irreps_out,
            state[prefix + "tensor_product.weight"],
            state[prefix + "bias"],
        )

    def gated(prefix, x, irreps_x, a, irreps_a, irreps_out):
        return reference_gate(
            cg(prefix + "linear.", x, irreps_x, a, irreps_a, _gate_input_irreps(irreps_out)),
            irreps_out,
        )

    send, recv = edge_index
    rel = positions[send] - shifts @ cell - positions[recv]  # x_sender − x_receiver (SEGNN)
    r = rel.norm(dim=1, keepdim=True)
    x = r / r_max
    envelope = (
        1
        - (poly_p + 1) * (poly_p + 2) / 2 * x**poly_p
        + poly_p * (poly_p + 2) * x ** (poly_p + 1)
        - poly_p * (poly_p + 1) / 2 * x ** (poly_p + 2)
    ) * (x < 1)
    k = torch.arange(1, n_bessel + 1, dtype=r.dtype)
    radial = math.sqrt(2 / r_max) * torch.sin(k * math.pi * r / r_max) / r * envelope
    edge_attr = torch.cat(
        [
            o3.spherical_harmonics(deg, rel, normalize=True, normalization="component")
            for deg in range(len(attr))
        ],
        dim=1,
    )
    node_attr = torch.zeros(n_atoms, edge_attr.shape[1], dtype=r.dtype)
    node_attr = node_attr.index_add(0, recv, envelope * edge_attr / avg)
    node_attr = torch.cat([torch.ones(n_atoms, 1, dtype=r.dtype), node_attr[:, 1:]], dim=1)

    species = torch.tensor([SPECIES.index(int(z)) for z in numbers])
    onehot = torch.nn.functional.one_hot(species, n_species).to(r.dtype)
    h = cg("embedding.", onehot, [(n_species, 0, 1)], node_attr, attr, hidden)
    for t in range(p["num_layers"]):
        prefix = f"layers.{t}."
        message_in = torch.cat([h[recv], h[send], radial], dim=1)
        irreps_in = hidden + hidden + [(n_bessel, 0, 1)]
        m = gated(prefix + "message_layer_1.", message_in, irreps_in, edge_attr, attr, hidden)
        m = gated(prefix + "message_layer_2.", m, hidden, edge_attr, attr, hidden) * envelope
        aggregated = torch.zeros_like(h).index_add(0, recv, m / avg)
        u = gated(
            prefix + "update_layer_1.",
            torch.cat([h, aggregated], 1),
            hidden + hidden,
            node_attr,
            attr,
            hidden,
        )
        h = h + cg(prefix + "update_layer_2.", u, hidden, node_attr, attr, hidden)
    pooled = [(sum(m for m, _, _ in hidden), 0, 1)]
    h = gated("pre_pool_1.", h, hidden, node_attr, attr, hidden)
    h = cg("pre_pool_2.", h, hidden, node_attr, attr, pooled)
    ones = torch.ones(n_atoms, 1, dtype=r.dtype)
    h = gated("post_pool_1.", h, pooled, ones, [(1, 0, 1)], pooled)
    e = cg("post_pool_2.", h, pooled, ones, [(1, 0, 1)], [(1, 0, 1)])[:, 0]
    e0 = state["scale_shift.e0"][species]
    energy = e0 + state["scale_shift.scale"] * e + state["scale_shift.shift"]
    return energy.sum()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _perturbed_model()


@pytest.mark.parametrize("structure", ["molecule", "periodic_mixed_species"])
def test_matches_reference_equations(model, structure: str) -> None:
    """Energy and forces of the fast path = the paper's equations, ≤ 1e-6 (float64)."""
    assert_matches_reference(model, structure, reference_segnn_energy)


def test_scale_state_dict_keys_used_by_the_reference_exist(model) -> None:
    """The reference reads E0/scale/shift under these names (a rename must not pass silently)."""
    keys = set(model.state_dict())
    assert {"scale_shift.e0", "scale_shift.scale", "scale_shift.shift"} <= keys


def test_weight_balanced_hidden_irreps_match_a_scalar_linear_layer() -> None:
    """The hidden irreps n × (0e + 1o + 2e) are the smallest for which hidden ⊗ attributes →
    hidden has at least hidden_features² weights (SEGNN's weight-balanced subspaces), counted
    by e3nn's tensor product."""
    for hidden_features, lmax_h, lmax_attr in [(128, 2, 3), (64, 1, 2), (8, 2, 2)]:
        attrs = o3.Irreps.spherical_harmonics(lmax_attr)
        irreps = weight_balanced_irreps(hidden_features, attrs, lmax_h)
        copies = irreps[0].mul
        assert irreps == (o3.Irreps.spherical_harmonics(lmax_h) * copies).sort().irreps.simplify()

        def weights(n: int, lmax_h: int = lmax_h, attrs: o3.Irreps = attrs) -> int:
            ir = (o3.Irreps.spherical_harmonics(lmax_h) * n).sort().irreps.simplify()
            product = o3.FullyConnectedTensorProduct(ir, attrs, ir, compile_left_right=False)
            return product.weight_numel

        assert weights(copies) >= hidden_features**2
        assert copies == 1 or weights(copies - 1) < hidden_features**2


def test_energy_is_smooth_when_a_neighbour_crosses_the_cutoff(model) -> None:
    """A third atom crossing r_max changes neither energy nor forces abruptly (the message
    envelope and envelope-weighted node attributes; the paper's mean would jump)."""
    assert_smooth_at_cutoff(model)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(norm="instance"), "norm 'instance'"),
        (dict(pool="avg"), "pool 'avg'"),
        (dict(hidden_irreps="4x0e+4x1e", lmax_attr=2), "not all reachable"),
    ],
)
def test_unsupported_options_are_refused_by_name(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model("segnn", species=[1, 8], **changes)


def test_hidden_irreps_string_overrides_weight_balancing() -> None:
    model = build_model(
        "segnn", species=[1, 8], hidden_irreps="6x0e+2x1o", lmax_attr=1, num_layers=1
    )
    assert model.irreps_hidden == o3.Irreps("6x0e+2x1o")


def test_reference_sees_a_changed_weight(model) -> None:
    """The comparison can fail: one changed weight of the last message layer moves the
    reference energy by far more than the 1e-6 tolerance."""
    assert_reference_sees_weight(
        model, reference_segnn_energy, "layers.1.message_layer_2.linear.tensor_product.weight", (0,)
    )
