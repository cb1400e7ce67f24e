"""Implicit-steerable-kernel potential (potentials/models/implicit_kernels.py) against a direct,
slow reference of the paper's equations.

No installable reference: the authors' code (maxxxzdn/implicit-steerable-kernels) is a
repository built on escnn and torch-geometric, not a package, and its kernels are escnn MLPs
acting on r itself (Fourier non-linearities, batch norm), a different parameterisation of the
same kernel space: no weights map from one to the other. The reference below forms every
kernel matrix explicitly, as the paper writes it (Zhdanov et al., NeurIPS 2023, section 3):
K(r, z) = Σ_J f_J(z) · C^{l_in J l_out} Y_J(r̂) as a dense [E, out, in] tensor, from Clebsch-Gordan
coefficients (`e3nn.o3.wigner_3j`), spherical harmonics (`e3nn.o3.spherical_harmonics`) and the
kernel MLP written out with the model's weights, then m_i = Σ_j K h_j. It shares no code with the
fast path (which never forms K: an e3nn tensor product with per-edge weights).
The physics, export and fuzzing checks run for "implicit_kernels" through the contract tests.
"""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3

from equimd.potentials.models.implicit_kernels import ImplicitConv
from tests.model_zoo import SPECIES
from tests.reference_checks import (
    assert_matches_reference,
    assert_reference_sees_weight,
    assert_smooth_at_cutoff,
    perturbed_model,
)
from tests.test_segnn import _gate_input_irreps, _irreps_list, reference_gate

HYPERPARAMETERS = dict(
    num_features=3,
    L=2,
    num_layers=2,
    num_inv_features=5,
    kernel_n_layers=3,
    kernel_n_channels=6,
    num_bessel=4,
    polynomial_p=5,
    avg_num_neighbors=6.0,
)


def _perturbed_model(seed: int = 0, **changes) -> torch.nn.Module:
    return perturbed_model("implicit_kernels", {**HYPERPARAMETERS, **changes}, seed)


# ---------------------------------------------------------------- the reference, from the paper


def reference_kernel_mlp(state, prefix, z, n_layers):
    """f(z): n_layers affine maps with SiLU between them."""
    for index in range(n_layers):
        if index > 0:
            z = torch.nn.functional.silu(z)
        layer = f"{prefix}kernel_mlp.{2 * index}."  # Linear, SiLU, Linear, ...
        z = z @ state[layer + "weight"].T + state[layer + "bias"]
    return z


def reference_kernel_matrices(f, sh, irreps_in, irreps_out, lmax_sh):
    """K [E, out_dim, in_dim]: Σ over paths (l_in ⊗ J → l_out, parity-allowed) of
    √((2 l_out + 1) / fan_in) · f[u, w] · Σ_M C[m_in, M, m_out] Y_J[M], one (u, w) block per
    channel pair; f [E, Σ paths mul_in·mul_out], sh [E, (lmax_sh + 1)²]."""
    sh_blocks = [(J, (-1) ** J) for J in range(lmax_sh + 1)]
    paths = [
        (i, J, k)
        for i, (_, li, pi) in enumerate(irreps_in)
        for J, pj in sh_blocks
        for k, (_, lo, po) in enumerate(irreps_out)
        if abs(li - J) <= lo <= li + J and pi * pj == po
    ]
    fan_in = {k: 0 for k in range(len(irreps_out))}
    for i, _, k in paths:
        fan_in[k] += irreps_in[i][0]
    in_start = [sum(m * (2 * d + 1) for m, d, _ in irreps_in[:i]) for i in range(len(irreps_in))]
    out_start = [sum(m * (2 * d + 1) for m, d, _ in irreps_out[:k]) for k in range(len(irreps_out))]
    in_dim = sum(m * (2 * d + 1) for m, d, _ in irreps_in)
    out_dim = sum(m * (2 * d + 1) for m, d, _ in irreps_out)
    kernel = sh.new_zeros(sh.shape[0], out_dim, in_dim)
    offset = 0
    for i, J, k in paths:
        (mi, li, _), (mo, lo, _) = irreps_in[i], irreps_out[k]
        w = f[:, offset : offset + mi * mo].reshape(-1, mi, mo)
        offset += mi * mo
        y = sh[:, J * J : (J + 1) * (J + 1)]
        angular = torch.einsum("aMb,eM->eba", o3.wigner_3j(li, J, lo, dtype=sh.dtype), y)
        block = math.sqrt((2 * lo + 1) / fan_in[k]) * torch.einsum("euw,eba->ewbua", w, angular)
        rows, cols = mo * (2 * lo + 1), mi * (2 * li + 1)
        r0, c0 = out_start[k], in_start[i]
        kernel[:, r0 : r0 + rows, c0 : c0 + cols] += block.reshape(-1, rows, cols)
    assert offset == f.shape[1]
    return kernel


def reference_energy(state, model, positions, numbers, edge_index, shifts, cell):
    """Σ_i E_i of one structure from the paper's equations and the model's weights."""
    p = model.hyperparameters()
    r_max, n_bessel, poly_p, avg = (
        p["r_max"],
        p["num_bessel"],
        p["polynomial_p"],
        p["avg_num_neighbors"],
    )
    L, n_layers = p["L"], p["kernel_n_layers"]
    hidden = _irreps_list(model.irreps_hidden)
    gate_in = _gate_input_irreps(hidden)
    n_species, n_atoms = len(SPECIES), positions.shape[0]
    n_scalars = hidden[0][0]

    send, recv = edge_index
    rel = positions[recv] - positions[send] + shifts @ cell  # r_ij, sender → receiver
    r = rel.norm(dim=1, keepdim=True)
    x = r / r_max
    envelope = (
        1
        - (poly_p + 1) * (poly_p + 2) / 2 * x**poly_p
        + poly_p * (poly_p + 2) * x ** (poly_p + 1)
        - poly_p * (poly_p + 1) / 2 * x ** (poly_p + 2)
    ) * (x < 1)
    k = torch.arange(1, n_bessel + 1, dtype=r.dtype)
    bessel = math.sqrt(2 / r_max) * torch.sin(k * math.pi * r / r_max) / r
    sh = torch.cat(
        [o3.spherical_harmonics(J, rel, True, normalization="component") for J in range(2 * L + 1)],
        1,
    )
    species = torch.tensor([SPECIES.index(int(z)) for z in numbers])
    onehot = torch.nn.functional.one_hot(species, n_species).to(r.dtype)

    def conv(prefix, h, irreps_out):
        z = torch.cat([bessel, onehot[recv], onehot[send]], 1)
        if p["kernel_node_scalars"]:
            z = torch.cat([z, h[recv, :n_scalars], h[send, :n_scalars]], 1)
        f = reference_kernel_mlp(state, prefix + "convolution.", z, n_layers) * envelope
        kernel = reference_kernel_matrices(f, sh, hidden, irreps_out, 2 * L)
        messages = torch.einsum("eoi,ei->eo", kernel, h[send])
        out = torch.zeros(n_atoms, messages.shape[1], dtype=r.dtype).index_add(0, recv, messages)
        out = out / math.sqrt(avg)
        n_bias = irreps_out[0][0] if irreps_out[0][1:] == (0, 1) else 0
        return torch.cat([out[:, :n_bias] + state[prefix + "convolution.bias"], out[:, n_bias:]], 1)

    def pad_to_gate_layout(h):  # scalars, zero gates, gated
        n_gates = gate_in[0][0] - n_scalars
        return torch.cat([h[:, :n_scalars], h.new_zeros(n_atoms, n_gates), h[:, n_scalars:]], 1)

    h = onehot @ state["embedding.weight"].reshape(n_species, n_scalars) / math.sqrt(n_species)
    h = torch.cat([h, h.new_zeros(n_atoms, sum(m * (2 * d + 1) for m, d, _ in hidden[1:]))], 1)
    for t in range(p["num_layers"]):
        prefix = f"residual_blocks.{t}."
        y = reference_gate(conv(prefix + "conv_1.", h, gate_in), hidden)
        h = reference_gate(conv(prefix + "conv_2.", y, gate_in) + pad_to_gate_layout(h), hidden)
    s = conv("invariant_map.", h, [(p["num_inv_features"], 0, 1)])
    s = torch.nn.functional.silu(s) @ state["readout.1.weight"].T + state["readout.1.bias"]
    e = torch.nn.functional.silu(s) @ state["readout.3.weight"].T + state["readout.3.bias"]
    energy = state["scale_shift.e0"][species] + state["scale_shift.scale"] * e[:, 0]
    return (energy + state["scale_shift.shift"]).sum()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _perturbed_model()


@pytest.mark.parametrize("structure", ["molecule", "periodic_mixed_species"])
def test_matches_reference_equations(model, structure: str) -> None:
    """Energy and forces of the fast path = the explicit kernel matrices, ≤ 1e-6 (float64)."""
    assert_matches_reference(model, structure, reference_energy)


def test_kernel_is_steerable(model) -> None:
    """K(g r, z) = ρ_out(g) K(r, z) ρ_in(g)⁻¹ for rotations and the inversion (the kernel
    constraint, eq. 2), checked on the explicit reference kernel built from the model's MLP."""
    torch.manual_seed(3)
    conv = model.residual_blocks[0].conv_1.convolution
    irreps_in, irreps_out = conv.irreps_in, conv.irreps_out
    lmax_sh = conv.irreps_sh.lmax
    vectors = torch.randn(5, 3, dtype=torch.float64)
    f = conv.kernel_mlp(torch.randn(5, conv.kernel_mlp[0].in_features, dtype=torch.float64))
    f = f.detach()

    def kernel(v):
        sh = o3.spherical_harmonics(list(range(lmax_sh + 1)), v, True, normalization="component")
        return reference_kernel_matrices(
            f, sh, _irreps_list(irreps_in), _irreps_list(irreps_out), lmax_sh
        )

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn's Wigner D in float64
    try:
        rotations = (o3.rand_matrix(), -torch.eye(3))
        wigner = [(irreps_in.D_from_matrix(g), irreps_out.D_from_matrix(g)) for g in rotations]
    finally:
        torch.set_default_dtype(previous)
    for rotation, (d_in, d_out) in zip(rotations, wigner, strict=True):
        expected = d_out @ kernel(vectors) @ d_in.T
        assert torch.allclose(kernel(vectors @ rotation.T), expected, atol=1e-10)


def test_kernel_depends_on_the_species_pair_and_node_scalars(model) -> None:
    """The kernels see more than the distance: at one geometry with the same features, the
    messages change with the species pair of the edge and with the scalar features of the
    sending atom (kernel_node_scalars), not only with what they multiply."""
    torch.manual_seed(4)
    conv = model.residual_blocks[0].conv_1
    num_bessel, num_species = model.hyperparameters()["num_bessel"], len(SPECIES)
    features = torch.randn(2, conv.convolution.irreps_in.dim, dtype=torch.float64)
    vector = torch.tensor([[1.1, 0.3, -0.2]], dtype=torch.float64)
    sh = model.spherical_harmonics(vector)
    radial = model.radial_basis(vector.norm(dim=1, keepdim=True))
    cutoff = model.cutoff(vector.norm(dim=1, keepdim=True))
    sender, receiver = torch.tensor([0]), torch.tensor([1])

    def messages(layer, pair: tuple[int, int], features: torch.Tensor) -> torch.Tensor:
        onehot = torch.eye(num_species, dtype=torch.float64)
        invariants = torch.cat([radial, onehot[[pair[1]]], onehot[[pair[0]]]], dim=1)
        assert invariants.shape[1] == num_bessel + 2 * num_species
        return layer(features, sh, invariants, cutoff, sender, receiver)[1].detach()

    base = messages(conv, (1, 2), features)
    assert not torch.allclose(base, messages(conv, (2, 1), features), atol=1e-6)
    # a kernel that ignores the features is linear: m(2h) − 2 m(h) + m(0) = 0 (bias cancels)
    blind = ImplicitConv(
        conv.convolution.irreps_in,
        conv.convolution.irreps_out,
        model.spherical_harmonics.irreps_out,
        num_bessel + 2 * num_species,
        False,
        2,
        6,
        6.0,
    ).double()
    for layer, sees_features in ((conv, True), (blind, False)):
        second_difference = (
            messages(layer, (1, 2), 2 * features)
            - 2 * messages(layer, (1, 2), features)
            + messages(layer, (1, 2), 0 * features)
        )
        assert (second_difference.abs().max() > 1e-6) == sees_features


def test_energy_is_smooth_when_a_neighbour_crosses_the_cutoff(model) -> None:
    """A third atom crossing r_max changes neither energy nor forces abruptly (the polynomial
    envelope on every kernel)."""
    assert_smooth_at_cutoff(model)


def test_reference_sees_a_changed_weight(model) -> None:
    """The comparison can fail: one changed weight of the last kernel MLP moves the reference
    energy by far more than the 1e-6 tolerance."""
    assert_reference_sees_weight(
        model, reference_energy, "residual_blocks.1.conv_2.convolution.kernel_mlp.4.weight", (0, 0)
    )
