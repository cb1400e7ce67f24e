"""Graphormer-3D (potentials/models/graphormer3d.py) against the published model and against a
dense reference of its equations.

1. Published model: fixtures from graphormer-pretrained 0.2.3's graphormer_3d.py (the
   microsoft/Graphormer OC20 model; benchmarks/peers/make_graphormer3d_fixtures.py, which says
   how it installs), molecules only (the published model attends over all atoms of a cell); its
   weights are mapped onto ours with r_max large enough that the envelope is 1.
2. Equations: the module docstring's equations written densely with torch primitives, periodic
   images included (every image within a few lattice vectors is a key); distances, the Gaussian
   basis, the envelope, LayerNorm, attention and the readout are plain tensor expressions on the
   model's parameters, sharing no code with the fast path (no edge lists, no scatter, no
   `equimd.potentials.nn`). Forces come from autograd of the dense energy. These helpers are
   reused by tests/test_tokengt.py.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph
from equimd.potentials.forcefield import ForceField
from tests.model_zoo import contract_model

F = torch.nn.functional


def model_results(model, atoms: Atoms) -> dict[str, np.ndarray]:
    """Energy [1] eV and forces [N, 3] eV/Å of the fast path (neighbour list, ForceField)."""
    graph = configuration_to_graph(Configuration.from_atoms(atoms), model.r_max, torch.float64)
    out = ForceField(model)(graph)
    return {key: out[key].detach().numpy() for key in ("energy", "forces")}


def dense_geometry(atoms: Atoms, positions: torch.Tensor, images: int):
    """Every (atom i, image m = (j, shift)) pair with |shift| ≤ images: distances [N, M] Å
    (0 for the atom itself, differentiable there), key atom j(m) [M], self mask [N, M]."""
    num_atoms = len(atoms)
    cell = torch.tensor(np.asarray(atoms.cell), dtype=torch.float64)
    periodic = [images if p else 0 for p in atoms.pbc]
    shifts = torch.tensor(
        list(itertools.product(*(range(-n, n + 1) for n in periodic))), dtype=torch.float64
    )  # [S, 3]
    image_positions = positions.unsqueeze(0) + (shifts @ cell).unsqueeze(1)  # [S, N, 3]
    image_positions = image_positions.reshape(-1, 3)  # [M, 3], m = s·N + j
    key_atom = torch.arange(num_atoms).repeat(shifts.shape[0])  # [M]
    zero_shift = (shifts.abs().sum(dim=1) == 0).repeat_interleave(num_atoms)  # [M]
    is_self = (key_atom.unsqueeze(0) == torch.arange(num_atoms).unsqueeze(1)) & zero_shift
    vectors = image_positions.unsqueeze(0) - positions.unsqueeze(1)  # [N, M, 3]
    self_ = is_self.to(torch.float64)
    distances = torch.sqrt((vectors * vectors).sum(dim=-1) + self_) - self_  # [N, M]
    return distances, key_atom, is_self


def dense_envelope(distances: torch.Tensor, r_max: float, p: int = 6) -> torch.Tensor:
    """DimeNet polynomial envelope, zero from r_max on; written out, not imported."""
    x = distances / r_max
    value = (
        1.0
        - (p + 1) * (p + 2) / 2 * x**p
        + p * (p + 2) * x ** (p + 1)
        - p * (p + 1) / 2 * x ** (p + 2)
    )
    return torch.where(x < 1.0, value, torch.zeros_like(value))


def dense_linear(module, x: torch.Tensor) -> torch.Tensor:
    out = x @ module.weight.T
    return out if module.bias is None else out + module.bias


def dense_mlp(module, x: torch.Tensor) -> torch.Tensor:
    """fc2(GELU(fc1(x))), GELU written with erf."""
    hidden = dense_linear(module.fc1, x)
    return dense_linear(module.fc2, 0.5 * hidden * (1.0 + torch.erf(hidden / math.sqrt(2.0))))


def dense_layer_norm(module, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight + module.bias


def dense_block(layer, tokens, key_token, weights, bias=None) -> torch.Tensor:
    """One pre-LN layer, dense: tokens [T, D]; key k is token key_token[k] [K]; weights
    U [T, K] (envelope, 0 for no edge); bias [H, T, K]. w = U e^a / Σ_k U e^a."""
    attention = layer.self_attn
    heads, dim = attention.num_heads, tokens.shape[1]
    head_dim = dim // heads
    normed = dense_layer_norm(layer.self_attn_layer_norm, tokens)
    qkv = dense_linear(attention.in_proj, normed)
    q = qkv[:, :dim].reshape(-1, heads, head_dim).transpose(0, 1) / math.sqrt(head_dim)
    k = qkv[key_token, dim : 2 * dim].reshape(-1, heads, head_dim).transpose(0, 1)
    v = qkv[key_token, 2 * dim :].reshape(-1, heads, head_dim).transpose(0, 1)
    logits = q @ k.transpose(1, 2)  # [H, T, K]
    if bias is not None:
        logits = logits + bias
    unnormalised = weights * torch.exp(logits - logits.max(dim=-1, keepdim=True).values.detach())
    attended = (unnormalised / unnormalised.sum(dim=-1, keepdim=True)) @ v  # [H, T, D/H]
    tokens = tokens + dense_linear(attention.out_proj, attended.transpose(0, 1).reshape(-1, dim))
    return tokens + dense_mlp(layer.feed_forward, dense_layer_norm(layer.final_layer_norm, tokens))


def dense_readout(model, features: torch.Tensor, layer_norm, species) -> torch.Tensor:
    energy = dense_mlp(model.energy_proj, dense_layer_norm(layer_norm, features)).squeeze(-1)
    stats = model.scale_shift
    return (stats.e0[species] + stats.scale * energy + stats.shift).sum()


def species_of(model, atoms: Atoms) -> torch.Tensor:
    return torch.tensor([model.species.index(int(z)) for z in atoms.numbers])


def dense_graphormer3d_energy(model, atoms: Atoms, positions: torch.Tensor, images: int):
    """Total energy (eV) of the module docstring's equations, every image a dense key."""
    species = species_of(model, atoms)
    distances, key_atom, is_self = dense_geometry(atoms, positions, images)
    envelope = dense_envelope(distances, model.r_max)  # [N, M], 1 on the self key
    num_species = model.num_species
    pair_type = species.unsqueeze(1) * num_species + species[key_atom].unsqueeze(0)  # [N, M]
    gbf = model.gbf
    x = gbf.mul[pair_type] * distances + gbf.bias[pair_type]
    std = gbf.stds.abs() + 1e-5
    gaussians = torch.exp(-0.5 * ((x.unsqueeze(-1) - gbf.means) / std) ** 2) / (
        math.sqrt(2 * math.pi) * std
    )  # [N, M, K]
    centrality = (envelope.unsqueeze(-1) * gaussians).sum(dim=1)  # [N, K]
    features = model.atom_encoder.weight[species] + dense_linear(model.edge_proj, centrality)
    bias = dense_mlp(model.bias_proj, gaussians).permute(2, 0, 1)  # [H, N, M]
    for _ in range(model.blocks):
        for layer in model.layers:
            features = dense_block(layer, features, key_atom, envelope, bias)
    return dense_readout(model, features, model.final_ln, species)


def dense_results(energy_fn, model, atoms: Atoms, images: int) -> dict[str, np.ndarray]:
    positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    energy = energy_fn(model, atoms, positions, images)
    (gradient,) = torch.autograd.grad(energy, positions)
    return {"energy": energy.detach().reshape(1).numpy(), "forces": -gradient.numpy()}


def reference_structures() -> list[tuple[str, Atoms, int]]:
    """(name, structure, image range): a molecule, a mixed periodic cell, and a ~2.9 Å cell
    (smaller than r_max = 4 Å, images up to 2 cells away)."""
    rng = np.random.default_rng(3)
    ethanol = molecule("CH3CH2OH")
    ethanol.positions += rng.normal(scale=0.05, size=ethanol.positions.shape)
    mixed = Atoms(
        "CuHCO", positions=rng.uniform(0, 4.4, (4, 3)), cell=np.diag([4.4, 4.6, 4.8]), pbc=True
    )
    cell = np.diag([2.7, 2.9, 3.1]) + rng.normal(scale=0.1, size=(3, 3))
    small = Atoms("CuO", positions=rng.uniform(0, 2.7, (2, 3)), cell=cell, pbc=True)
    return [("molecule", ethanol, 0), ("periodic", mixed, 1), ("small_cell", small, 2)]


def assert_close(fast: dict, reference: dict, tolerance: float = 1e-6) -> None:
    for key in ("energy", "forces"):
        deviation = np.abs(fast[key] - reference[key]).max()
        assert deviation <= tolerance, (key, deviation)


@pytest.fixture(scope="module")
def graphormer():
    return contract_model("graphormer3d")


@pytest.mark.parametrize("name, atoms, images", reference_structures())
def test_graphormer3d_matches_dense_equations(graphormer, name, atoms, images):
    assert_close(
        model_results(graphormer, atoms),
        dense_results(dense_graphormer3d_energy, graphormer, atoms, images),
    )


def trimer_at(distance: float) -> Atoms:
    """Atom 2 at `distance` from atom 0 (and farther from atom 1): crosses r_max alone."""
    return Atoms("CuOH", positions=[[0, 0, 0], [-1.3, 0.2, 0], [distance, 0, 0]])


def assert_smooth_across_cutoff(model) -> None:
    """Energy and forces just inside and just outside r_max agree (the envelope enters the
    normalised attention; a plain softmax would jump by a finite amount here)."""
    inside = model_results(model, trimer_at(model.r_max - 1e-7))
    outside = model_results(model, trimer_at(model.r_max + 1e-7))
    far = model_results(model, trimer_at(model.r_max + 0.5))
    assert abs(inside["energy"] - outside["energy"]).max() < 1e-9
    assert np.abs(inside["forces"] - outside["forces"]).max() < 1e-6
    assert abs(outside["energy"] - far["energy"]).max() < 1e-12  # no interaction beyond r_max
    # and the third atom does interact inside the cutoff (the test can fail)
    near = model_results(model, trimer_at(model.r_max - 1.0))
    assert abs(near["energy"] - far["energy"]).max() > 1e-4


def test_graphormer3d_energy_is_smooth_across_the_cutoff(graphormer):
    assert_smooth_across_cutoff(graphormer)


# --- parity with the published model (graphormer-pretrained 0.2.3, fixtures) ----------------

REFERENCE = Path(__file__).parent / "data" / "graphormer3d_reference.pt"
# the reference's Gaussian normalisation uses π ≈ 3.14159: its ψ is ours times this factor,
# folded into the two linear maps that read ψ
REFERENCE_PI_FACTOR = math.sqrt(2.0 * math.pi / (2.0 * 3.14159))
REFERENCE_SPECIES = [1, 6, 8, 29]
REFERENCE_ATOM_TYPES = 64  # Graphormer3D.atom_types: pair type Z_i · 64 + Z_j


def graphormer3d_from_reference(reference: dict):
    """equimd Graphormer3D with the reference's weights; r_max 1000 Å makes the envelope 1 to
    < 1e-12 within the test molecules, so attention runs over all atoms as in the reference."""
    from equimd.potentials.models import build_model

    config, theirs = reference["config"], reference["state_dict"]
    hyperparameters = {
        key: config[key]
        for key in (
            "layers",
            "blocks",
            "embed_dim",
            "ffn_embed_dim",
            "attention_heads",
            "num_kernel",
        )
    }
    model = build_model(
        "graphormer3d", species=REFERENCE_SPECIES, r_max=1000.0, **hyperparameters
    ).double()
    z = torch.tensor(REFERENCE_SPECIES)
    pair_types = (z.unsqueeze(1) * REFERENCE_ATOM_TYPES + z.unsqueeze(0)).reshape(-1)
    ours = {
        "atom_encoder.weight": theirs["atom_encoder.weight"][z] + theirs["tag_encoder.weight"][1],
        "gbf.means": theirs["gbf.means.weight"].reshape(-1),
        "gbf.stds": theirs["gbf.stds.weight"].reshape(-1),
        "gbf.mul": theirs["gbf.mul.weight"][pair_types, 0],
        "gbf.bias": theirs["gbf.bias.weight"][pair_types, 0],
        "edge_proj.weight": theirs["edge_proj.weight"] * REFERENCE_PI_FACTOR,
        "edge_proj.bias": theirs["edge_proj.bias"],
        "bias_proj.fc1.weight": theirs["bias_proj.layer1.weight"] * REFERENCE_PI_FACTOR,
        "bias_proj.fc1.bias": theirs["bias_proj.layer1.bias"],
        "bias_proj.fc2.weight": theirs["bias_proj.layer2.weight"],
        "bias_proj.fc2.bias": theirs["bias_proj.layer2.bias"],
        "energy_proj.fc1.weight": theirs["engergy_proj.layer1.weight"],
        "energy_proj.fc1.bias": theirs["engergy_proj.layer1.bias"],
        "energy_proj.fc2.weight": theirs["engergy_proj.layer2.weight"],
        "energy_proj.fc2.bias": theirs["engergy_proj.layer2.bias"],
    }
    for name, tensor in theirs.items():
        if name.startswith(("layers.", "final_ln.")):
            ours[
                name.replace(".fc1.", ".feed_forward.fc1.").replace(".fc2.", ".feed_forward.fc2.")
            ] = tensor
    state = model.state_dict()
    assert set(ours) | {
        name for name in state if name.startswith(("scale_shift.", "species_index.", "cutoff"))
    } == set(state)
    state.update(ours)
    model.load_state_dict(state)
    # E_i = factor[tag 1] · NonLinear(h_i): the per-tag energy factor is the scale
    model.scale_shift.set_statistics(
        [0.0] * len(REFERENCE_SPECIES), float(theirs["energe_agg_factor.weight"][1, 0]), 0.0
    )
    return model


def published_results(precision: str):
    """(our results, the reference's) per fixture structure; precision "" (as published) or
    "_float64" (the reference's float32 casts of its Gaussian basis made no-ops)."""
    reference = torch.load(REFERENCE, weights_only=True)
    model = graphormer3d_from_reference(reference)
    for structure in reference["structures"]:
        atoms = Atoms(
            numbers=structure["numbers"].numpy(), positions=structure["positions"].numpy()
        )
        yield (
            model_results(model, atoms),
            {
                "energy": structure["energy" + precision].reshape(1).numpy(),
                "forces": structure["forces" + precision].numpy(),
            },
        )


def test_graphormer3d_matches_the_published_model_in_float64():
    """Same weights as graphormer-pretrained 0.2.3's Graphormer3D run in float64 throughout
    (benchmarks/peers/make_graphormer3d_fixtures.py): energies and forces ≤ 1e-6."""
    for ours, theirs in published_results("_float64"):
        assert_close(ours, theirs, tolerance=1e-6)


def test_graphormer3d_matches_the_published_model_as_published():
    """The reference as published computes its Gaussian basis in float32: energies still
    ≤ 1e-6 eV, forces within that float32 rounding (≤ 1e-5 eV/Å)."""
    for ours, theirs in published_results(""):
        assert np.abs(ours["energy"] - theirs["energy"]).max() <= 1e-6
        assert np.abs(ours["forces"] - theirs["forces"]).max() <= 1e-5
