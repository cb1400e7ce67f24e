"""Equiformer against a direct, slow reference of its equations (Liao & Smidt, ICLR 2023).

No reference implementation installs from PyPI: the paper's code (atomicarchitects/equiformer)
is a research repository, not a package, and needs torch_cluster, torch_scatter,
torch_geometric and ocpmodels; `equiformer-pytorch` on PyPI is lucidrains' different
architecture, not a parity reference. So this file writes the equations of
potentials/models/equiformer.py again with dense primitives only (e3nn's `wigner_3j`,
`spherical_harmonics` and activation normalisation constants; explicit loops over edges and
atoms; a per-atom softmax written as f·exp(z)/Σ f·exp(z)), reads the model's weights by name
and compares energies and forces in float64. It shares no code with the fast path: no equimd
nn module, no e3nn Linear/TensorProduct/Gate module, no scatter or edge_softmax.
"""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3
from e3nn.math import normalize2mom

from equimd.potentials.models import build_model
from tests.model_zoo import STRUCTURES, batch_of, graph_of

SPECIES = [1, 6, 8, 29]
SMALL = dict(
    irreps_node_embedding="6x0e+3x1o+2x1e+2x2e",
    num_layers=2,
    lmax=2,
    number_of_basis=4,
    fc_neurons=[5],
    irreps_feature="6x0e",
    irreps_head="3x0e+2x1o+1x1e+1x2e",
    num_heads=2,
    irreps_mlp_mid="10x0e+3x1o+2x1e+2x2e",
    avg_num_neighbors=7.0,
    polynomial_p=5,
)
EVEN_SCALAR = o3.Irrep("0e")


# ---- primitives of the reference (dense, per block) ------------------------------------------
def blocks(x: torch.Tensor, irreps: o3.Irreps) -> list[torch.Tensor]:
    """[R, irreps.dim] -> per block [R, mul, 2l+1]."""
    out, start = [], 0
    for mul, ir in irreps:
        out.append(x[:, start : start + mul * ir.dim].reshape(-1, mul, ir.dim))
        start += mul * ir.dim
    return out


def join(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)


def ref_linear(x, irreps_in, irreps_out, weight, bias=None):
    """y_v = Σ_u w_uv x_u / sqrt(Σ fan-in of the output block) (+ bias on every 0e block)."""
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    x_blocks = blocks(x, irreps_in)
    pairs = [
        (i, k)
        for i, (_, ir_in) in enumerate(irreps_in)
        for k, (_, ir_out) in enumerate(irreps_out)
        if ir_in == ir_out
    ]
    out = [x.new_zeros(x.shape[0], mul, ir.dim) for mul, ir in irreps_out]
    start = 0
    for i, k in pairs:
        fan_in = sum(irreps_in[a].mul for a, b in pairs if b == k)
        m_in, m_out = irreps_in[i].mul, irreps_out[k].mul
        w = weight[start : start + m_in * m_out].reshape(m_in, m_out)
        start += m_in * m_out
        out[k] = out[k] + torch.einsum("uv,rum->rvm", w, x_blocks[i]) / math.sqrt(fan_in)
    if bias is not None and bias.numel() > 0:
        b_start = 0
        for k, (mul, ir) in enumerate(irreps_out):
            if ir == EVEN_SCALAR:
                out[k] = out[k] + bias[b_start : b_start + mul].reshape(1, mul, 1)
                b_start += mul
    return join(out)


def ref_depthwise_tp(x, y, weights, irreps_in, irreps_sh, irreps_target):
    """Per edge: for every block (mul × l1) and harmonic l2, each l3 ∈ l1 ⊗ l2 of the target
    (or 0e): out_u = sqrt(2l3+1) · w_u · C^{l1 l2 l3} x_u y. Outputs sorted by irrep (stable)."""
    irreps_in, irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
    targets = {ir for _, ir in o3.Irreps(irreps_target)} | {EVEN_SCALAR}
    x_blocks, y_blocks = blocks(x, irreps_in), blocks(y, irreps_sh)
    outputs, start = [], 0
    for i, (mul, ir_1) in enumerate(irreps_in):
        for j, (_, ir_2) in enumerate(irreps_sh):
            for ir_3 in ir_1 * ir_2:
                if ir_3 not in targets:
                    continue
                w = weights[:, start : start + mul]
                start += mul
                cg = o3.wigner_3j(ir_1.l, ir_2.l, ir_3.l, dtype=x.dtype)
                value = torch.einsum("ijk,eui,ej->euk", cg, x_blocks[i], y_blocks[j][:, 0])
                outputs.append((ir_3, len(outputs), value * w.unsqueeze(-1) * math.sqrt(ir_3.dim)))
    assert start == weights.shape[1]
    outputs.sort(key=lambda item: (item[0].l, item[0].p, item[1]))
    irreps_out = o3.Irreps([(v.shape[1], ir) for ir, _, v in outputs])
    return join([v for _, _, v in outputs]), irreps_out


SILU_CST = normalize2mom(torch.nn.functional.silu).cst
SIGMOID_CST = normalize2mom(torch.sigmoid).cst


def ref_gate_irreps(irreps):
    scalars = o3.Irreps([(m, ir) for m, ir in o3.Irreps(irreps) if ir == EVEN_SCALAR]).simplify()
    gated = o3.Irreps([(m, ir) for m, ir in o3.Irreps(irreps) if ir != EVEN_SCALAR]).simplify()
    gates = o3.Irreps([(m, "0e") for m, _ in gated]).simplify()
    return (scalars + gates + gated).simplify(), scalars + gated, scalars, gated


def ref_gate(x, irreps):
    """SiLU(scalars) ⊕ σ(gate_c) · gated_c, both activations scaled to unit second moment."""
    _, _, scalars, gated = ref_gate_irreps(irreps)
    n_s, n_g = scalars.dim, gated.num_irreps
    out = [SILU_CST * torch.nn.functional.silu(x[:, :n_s])]
    gates = SIGMOID_CST * torch.sigmoid(x[:, n_s : n_s + n_g])
    start, copy = n_s + n_g, 0
    for mul, ir in gated:
        field = x[:, start : start + mul * ir.dim].reshape(-1, mul, ir.dim)
        out.append(field * gates[:, copy : copy + mul].unsqueeze(-1))
        start, copy = start + mul * ir.dim, copy + mul
    return join(out)


def ref_layer_norm(x, irreps, weight, bias, eps):
    out, w_start, b_start = [], 0, 0
    for (mul, ir), field in zip(o3.Irreps(irreps), blocks(x, irreps), strict=True):
        if ir == EVEN_SCALAR:
            field = field - field.mean(dim=1, keepdim=True)
        sigma2 = (field**2).mean(dim=(1, 2), keepdim=True)  # component normalisation
        field = field / torch.sqrt(sigma2 + eps) * weight[w_start : w_start + mul].view(1, -1, 1)
        w_start += mul
        if ir == EVEN_SCALAR:
            field = field + bias[b_start : b_start + mul].view(1, -1, 1)
            b_start += mul
        out.append(field)
    return join(out)


def ref_radial_profile(basis, p, prefix, num_hidden):
    h = basis
    for k in range(num_hidden):
        h = torch.nn.functional.linear(
            h, p[f"{prefix}.net.{3 * k}.weight"], p[f"{prefix}.net.{3 * k}.bias"]
        )
        ln_w, ln_b = p[f"{prefix}.net.{3 * k + 1}.weight"], p[f"{prefix}.net.{3 * k + 1}.bias"]
        h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(
            h.var(-1, unbiased=False, keepdim=True) + 1e-5
        )
        h = torch.nn.functional.silu(h * ln_w + ln_b)
    return h @ p[f"{prefix}.net.{3 * num_hidden}.weight"].T + p[f"{prefix}.offset"]


# ---- the model's equations ------------------------------------------------------------------
def reference_energy(model, graph, positions):
    """Per-atom energies [N] of Equiformer's equations, with the model's weights."""
    hp = model.hyperparameters()
    p = model.state_dict()
    n_hidden = len(hp["fc_neurons"])
    r_max, pp = hp["r_max"], float(hp["polynomial_p"])
    species = torch.tensor([hp["species"].index(int(z)) for z in graph.numbers])
    num_nodes, irreps_x = len(species), o3.Irreps(hp["irreps_node_embedding"])
    irreps_sh = o3.Irreps.spherical_harmonics(hp["lmax"])
    sender, receiver = graph.edge_index
    cell = graph.cell[graph.batch[sender]]
    vec = (
        positions[sender] - positions[receiver] - torch.einsum("ei,eij->ej", graph.edge_shift, cell)
    )
    r = vec.norm(dim=1)
    sh = o3.spherical_harmonics(irreps_sh, vec, normalize=True, normalization="component")
    x_r = r / r_max
    env = (
        1
        - (pp + 1) * (pp + 2) / 2 * x_r**pp
        + pp * (pp + 2) * x_r ** (pp + 1)
        - pp * (pp + 1) / 2 * x_r ** (pp + 2)
    )
    n = torch.arange(1, hp["number_of_basis"] + 1, dtype=r.dtype)
    basis = (
        math.sqrt(2 / r_max)
        * torch.sin(n * math.pi * r[:, None] / r_max)
        / r[:, None]
        * env[:, None]
    )

    def neighbour_sum(messages):  # Σ over edges into each atom, a loop
        out = messages.new_zeros((num_nodes,) + messages.shape[1:])
        for e in range(messages.shape[0]):
            out[receiver[e]] = out[receiver[e]] + messages[e]
        return out

    # embedding: L(onehot) + 1/√⟨n⟩ Σ f · L_p(DTP(L_e(1), Y))
    onehot = torch.nn.functional.one_hot(species, len(hp["species"])).to(r.dtype)
    x = ref_linear(
        onehot, f"{len(hp['species'])}x0e", irreps_x, p["atom_embed.weight"], p["atom_embed.bias"]
    )
    irreps_s = o3.Irreps([(m, ir) for m, ir in irreps_x if ir == EVEN_SCALAR]).simplify()
    const = ref_linear(
        r.new_ones(len(r), 1),
        "1x0e",
        irreps_s,
        p["edge_deg_embed.exp.weight"],
        p["edge_deg_embed.exp.bias"],
    )
    w = ref_radial_profile(basis, p, "edge_deg_embed.radial", n_hidden)
    h, irreps_h = ref_depthwise_tp(const, sh, w, irreps_s, irreps_sh, irreps_x)
    h = ref_linear(
        h, irreps_h, irreps_x, p["edge_deg_embed.proj.weight"], p["edge_deg_embed.proj.bias"]
    )
    x = x + neighbour_sum(h * env[:, None]) / math.sqrt(hp["avg_num_neighbors"])

    head = o3.Irreps(hp["irreps_head"])
    heads = sorted(
        [(mul * hp["num_heads"], ir) for mul, ir in head], key=lambda m: (m[1].l, -m[1].p)
    )
    irreps_heads = o3.Irreps(heads).simplify()
    c = sum(mul for mul, ir in head if ir == EVEN_SCALAR)
    mul_head = {}
    for mul, ir in head:
        mul_head[ir] = mul_head.get(ir, 0) + mul
    eps = hp["norm_eps"]
    for index in range(hp["num_layers"]):
        b = f"blocks.{index}"
        last = index == hp["num_layers"] - 1
        irreps_out = o3.Irreps(hp["irreps_feature"]) if last else irreps_x
        # graph attention on LN₁(x)
        y = ref_layer_norm(
            x, irreps_x, p[f"{b}.norm_1.affine_weight"], p[f"{b}.norm_1.affine_bias"], eps
        )
        m = ref_linear(
            y, irreps_x, irreps_x, p[f"{b}.ga.merge_src.weight"], p[f"{b}.ga.merge_src.bias"]
        )[sender]
        m = m + ref_linear(y, irreps_x, irreps_x, p[f"{b}.ga.merge_dst.weight"])[receiver]
        g = f"{b}.ga.message"
        w = ref_radial_profile(basis, p, f"{g}.radial", n_hidden)
        if hp["nonlinear_message"]:
            h, irreps_h = ref_depthwise_tp(m, sh, w, irreps_x, irreps_sh, irreps_x)
            alpha = ref_linear(
                h,
                irreps_h,
                f"{c * hp['num_heads']}x0e",
                p[f"{g}.alpha_linear.weight"],
                p[f"{g}.alpha_linear.bias"],
            )
            gate_in, gate_out, _, _ = ref_gate_irreps(irreps_x)
            v = ref_gate(
                ref_linear(
                    h,
                    irreps_h,
                    gate_in,
                    p[f"{g}.value_linear_in.weight"],
                    p[f"{g}.value_linear_in.bias"],
                ),
                irreps_x,
            )
            shared = p[f"{g}.value_tp_weight"].expand(len(r), -1)
            v, irreps_v = ref_depthwise_tp(v, sh, shared, gate_out, irreps_sh, irreps_heads)
            v = ref_linear(
                v,
                irreps_v,
                irreps_heads,
                p[f"{g}.value_linear_out.weight"],
                p[f"{g}.value_linear_out.bias"],
            )
        else:
            irreps_alpha = o3.Irreps(f"{c * hp['num_heads']}x0e")
            h, irreps_h = ref_depthwise_tp(
                m, sh, w, irreps_x, irreps_sh, irreps_heads + irreps_alpha
            )
            h = ref_linear(
                h,
                irreps_h,
                irreps_alpha + irreps_heads,
                p[f"{g}.linear.weight"],
                p[f"{g}.linear.bias"],
            )
            alpha, v = h[:, : irreps_alpha.dim], h[:, irreps_alpha.dim :]
        alpha = 0.6 * alpha + 0.4 * alpha * torch.tanh(
            alpha / 2
        )  # smooth leaky ReLU: 2σ(a)−1 = tanh(a/2)
        z = torch.einsum(
            "ehc,hc->eh", alpha.reshape(len(r), hp["num_heads"], c), p[f"{b}.ga.alpha_dot"]
        )
        # softmax over each atom's incoming edges, weighted by f, then × f
        attention = torch.zeros_like(z)
        for j in range(num_nodes):
            into = (receiver == j).nonzero().flatten()
            if len(into) == 0:
                continue
            weights = env[into, None] * torch.exp(z[into] - z[into].max(dim=0).values)
            attention[into] = weights / weights.sum(dim=0) * env[into, None]
        # head of each value column
        columns = []
        for mul_all, ir in irreps_heads:
            columns += [copy // mul_head[ir] for copy in range(mul_all) for _ in range(ir.dim)]
        out = neighbour_sum(v * attention[:, columns])
        x = x + ref_linear(
            out, irreps_heads, irreps_x, p[f"{b}.ga.proj.weight"], p[f"{b}.ga.proj.bias"]
        )
        # feed-forward on LN₂(x), with the shortcut where the irreps change
        y = ref_layer_norm(
            x, irreps_x, p[f"{b}.norm_2.affine_weight"], p[f"{b}.norm_2.affine_bias"], eps
        )
        gate_in, gate_out, _, _ = ref_gate_irreps(o3.Irreps(hp["irreps_mlp_mid"]))
        y = ref_gate(
            ref_linear(
                y, irreps_x, gate_in, p[f"{b}.ffn.linear_1.weight"], p[f"{b}.ffn.linear_1.bias"]
            ),
            hp["irreps_mlp_mid"],
        )
        y = ref_linear(
            y, gate_out, irreps_out, p[f"{b}.ffn.linear_2.weight"], p[f"{b}.ffn.linear_2.bias"]
        )
        if last and irreps_out != irreps_x:
            x = ref_linear(
                x, irreps_x, irreps_out, p[f"{b}.ffn_shortcut.weight"], p[f"{b}.ffn_shortcut.bias"]
            )
        x = x + y
    irreps_f = o3.Irreps(hp["irreps_feature"])
    x = ref_layer_norm(x, irreps_f, p["norm.affine_weight"], p["norm.affine_bias"], eps)
    x = torch.nn.functional.silu(
        ref_linear(x, irreps_f, irreps_f, p["head_hidden.weight"], p["head_hidden.bias"])
    )
    e = ref_linear(x, irreps_f, "1x0e", p["head_out.weight"], p["head_out.bias"]).squeeze(-1)
    return p["scale_shift.e0"][species] + p["scale_shift.scale"] * e + p["scale_shift.shift"]


def built(seed: int, **overrides):
    """A model in float64 with random (non-trivial) weights and energy statistics."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        model = build_model("equiformer", species=SPECIES, r_max=4.0, **dict(SMALL, **overrides))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "affine" in name or name.endswith(("net.1.weight", "net.1.bias")):
                    parameter.add_(0.3 * torch.randn_like(parameter))  # layer norms off identity
                elif name.endswith("bias"):
                    parameter.normal_(0.0, 0.5)
            model.scale_shift.set_statistics([-1.0, -2.0, -3.0, -4.0], 1.7, 0.3)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def energies_and_forces(function, graph):
    positions = graph.positions.clone().requires_grad_(True)
    energy = function(positions)
    (gradient,) = torch.autograd.grad(energy.sum(), positions)
    return energy.detach(), -gradient


@pytest.mark.parametrize("nonlinear_message", [True, False], ids=["nonlinear", "linear"])
@pytest.mark.parametrize("structure", ["molecule", "periodic_mixed_species"])
def test_model_matches_the_equations_reference(structure, nonlinear_message):
    """Energies [N] and forces of the model = the dense reference, float64, ≤ 1e-6 (eV, eV/Å)."""
    model = built(seed=3, nonlinear_message=nonlinear_message)
    graph = graph_of(STRUCTURES[structure](), dtype=torch.float64)

    fast_energy, fast_forces = energies_and_forces(
        lambda positions: model(graph._replace(positions=positions)), graph
    )
    ref_energy, ref_forces = energies_and_forces(
        lambda pos: reference_energy(model, graph, pos), graph
    )
    assert fast_energy.abs().max() > 1e-3  # a non-trivial comparison
    assert torch.allclose(fast_energy, ref_energy, rtol=0, atol=1e-6), (
        (fast_energy - ref_energy).abs().max()
    )
    assert torch.allclose(fast_forces, ref_forces, rtol=0, atol=1e-6), (
        (fast_forces - ref_forces).abs().max()
    )


def test_reference_sees_a_wrong_weight():
    """The comparison can fail: one changed attention weight changes the model's energies."""
    model = built(seed=4)
    graph = graph_of(STRUCTURES["molecule"](), dtype=torch.float64)
    reference = reference_energy(model, graph, graph.positions)
    with torch.no_grad():
        model.blocks[0].ga.alpha_dot[0, 0] += 0.5
    assert (model(graph) - reference).abs().max() > 1e-6


def test_attention_is_a_weighted_average_over_neighbours():
    """α_ij sums to one over each atom's neighbours (before the × f of the message)."""
    from equimd.potentials.nn.edge_softmax import edge_softmax
    from equimd.potentials.nn.irreps_attention import log_envelope

    torch.manual_seed(0)
    receiver = torch.tensor([0, 0, 0, 2, 2])
    logits = torch.randn(5, 3, dtype=torch.float64)
    envelope = torch.tensor([1.0, 0.5, 0.0, 0.2, 0.9], dtype=torch.float64)
    alpha = edge_softmax(logits + log_envelope(envelope).unsqueeze(-1), receiver, 3)
    assert torch.allclose(alpha[:3].sum(0), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(alpha[3:].sum(0), torch.ones(3, dtype=torch.float64))
    assert torch.all(alpha[2] < 1e-300)  # an edge at the cutoff (f = 0) gets no weight
    assert torch.isfinite(torch.autograd.functional.jacobian(log_envelope, envelope)).all()


def test_energy_is_smooth_when_a_neighbour_crosses_the_cutoff():
    """A dimer pulled through r_max: energy and force go continuously to the isolated atoms'."""
    from ase import Atoms

    model = built(seed=5)
    energies = []
    for distance in (3.999, 3.9999, 4.0001):
        atoms = Atoms("CO", positions=[[0, 0, 0], [distance, 0, 0]])
        energies.append(float(model(graph_of(atoms, dtype=torch.float64)).sum().detach()))
    assert abs(energies[1] - energies[2]) < 1e-9  # at 1e-4 Å inside the cutoff: the isolated value
    assert abs(energies[0] - energies[2]) < 1e-6


def test_batch_of_structures_equals_each_structure():
    model = built(seed=6)
    atoms = [STRUCTURES["molecule"](), STRUCTURES["periodic_mixed_species"]()]
    together = model(batch_of(atoms))
    apart = torch.cat([model(graph_of(a, dtype=torch.float64)) for a in atoms])
    assert torch.allclose(together, apart, atol=1e-12)
