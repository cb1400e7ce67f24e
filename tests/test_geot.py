"""GeoT: the fast edge path against a dense reference of the equations, smoothness at r_max, and
the attention maps.

No reference implementation installs from a package registry (the authors' TensorFlow code,
github.com/oleneyl/geometry-aware-transformer, is not packaged; PyPI's `geot` is an unrelated
optimal-transport package), so the reference here is a
direct, dense transcription of the equations in potentials/models/geot.py: all atom pairs and
all periodic images within reach enumerated by brute force, [N, N, ...] tensors and einsum,
the Gaussian expansion, envelope and layer norm written out. It shares no code with the model's
forward pass, only its weights.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from equimd.potentials.forcefield import ForceField
from tests.model_zoo import R_MAX, contract_model, graph_of

TOLERANCE = 1e-6  # eV and eV/Å, float64


def image_distances(positions: torch.Tensor, cell: np.ndarray, pbc, r_max: float):
    """Brute force: d[n, i, j] = |x_j + n·cell - x_i| for every lattice translation n that can
    bring an image within r_max, and mask[n, i, j] = 0 < d < r_max (an atom's own position
    excluded, its other images kept)."""
    reach = []
    for axis in range(3):
        if pbc[axis]:
            # planes of the lattice along `axis` are 1/|b_axis| apart (b: reciprocal vectors)
            spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell).T[axis])
            reach.append(
                range(-int(np.ceil(r_max / spacing)) - 1, int(np.ceil(r_max / spacing)) + 2)
            )
        else:
            reach.append(range(0, 1))
    shifts = torch.tensor(list(itertools.product(*reach)), dtype=positions.dtype)  # [S, 3]
    translations = shifts @ torch.as_tensor(cell, dtype=positions.dtype)  # [S, 3]
    vectors = (
        positions[None, None, :, :] + translations[:, None, None, :] - positions[None, :, None, :]
    )
    distances = torch.sqrt((vectors**2).sum(-1) + 1e-300)  # [S, N, N]
    mask = (distances > 1e-8) & (distances < r_max)
    return distances, mask.to(positions.dtype)


def envelope(r: torch.Tensor, r_max: float, p: int) -> torch.Tensor:
    """DimeNet's polynomial envelope, eq. (8) of Klicpera et al. 2020."""
    x = r / r_max
    value = (
        1
        - (p + 1) * (p + 2) / 2 * x**p
        + p * (p + 2) * x ** (p + 1)
        - p * (p + 1) / 2 * x ** (p + 2)
    )
    return value * (x < 1).to(r.dtype)


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * weight + bias


def ssp(x: torch.Tensor) -> torch.Tensor:
    return torch.log(1 + torch.exp(x)) - math.log(2.0)


def affine(x: torch.Tensor, params: dict, name: str) -> torch.Tensor:
    return x @ params[name + ".weight"].T + params[name + ".bias"]


def dense_geot_energy(model, atoms: Atoms, positions: torch.Tensor) -> torch.Tensor:
    """Total energy (eV) of the equations in the module docstring, all pairs at once."""
    params = dict(model.state_dict())
    hp = model.hyperparameters()
    heads = hp["transformer_num_heads"]
    head_dim = hp["transformer_model_dim"] // heads
    r_max, p = hp["r_max"], hp["polynomial_p"]
    distances, mask = image_distances(positions, atoms.get_cell().array, atoms.pbc, r_max)
    centers = torch.linspace(0.0, r_max, hp["num_basis"], dtype=positions.dtype)

    def attribute(r: torch.Tensor, layer: str) -> torch.Tensor:  # [...] → [..., H, d]
        gaussians = torch.exp(-hp["basis_gamma"] * (r[..., None] - centers) ** 2)
        hidden = ssp(affine(gaussians, params, layer + "distance_attribute.linear_1"))
        return ssp(affine(hidden, params, layer + "distance_attribute.linear_2")).unflatten(
            -1, (heads, head_dim)
        )

    species = torch.tensor([model.species.index(int(z)) for z in atoms.numbers])
    h = params["embedding.weight"][species]  # [N, D]
    weight = envelope(distances, r_max, p) * mask  # [S, N(query), N(key)]
    for t in range(hp["transformer_num_layers"]):
        layer = f"layers.{t}."
        q, k, v = (
            affine(h, params, layer + "attention." + name).unflatten(-1, (heads, head_dim))
            for name in ("query", "key", "value")
        )
        w = attribute(distances, layer + "attention.")  # [S, N, N, H, d]
        logits = torch.einsum("ihc,jhc,sijhc->sijh", q, k, w) / math.sqrt(head_dim)
        attention = (logits * weight[..., None]).sum(0)  # [N, N, H] summed over images
        w_self = attribute(torch.zeros((), dtype=positions.dtype), layer + "attention.")
        attention = attention + torch.diag_embed(
            torch.einsum("ihc,ihc,hc->ih", q, k, w_self).T / math.sqrt(head_dim)
        ).permute(1, 2, 0)  # the atom attends to itself at r = 0
        attended = torch.einsum("ijh,jhc->ihc", attention, v).flatten(1)  # [N, D]
        h = layer_norm(
            h + affine(attended, params, layer + "attention.output"),
            params[layer + "norm_attention.weight"],
            params[layer + "norm_attention.bias"],
            1e-6,
        )
        hidden = torch.nn.functional.elu(affine(h, params, layer + "feed_forward_1"))
        h = layer_norm(
            h + affine(hidden, params, layer + "feed_forward_2"),
            params[layer + "norm_feed_forward.weight"],
            params[layer + "norm_feed_forward.bias"],
            1e-6,
        )
    e = affine(torch.nn.functional.elu(affine(h, params, "readout_hidden")), params, "readout")[
        :, 0
    ]
    energy = (
        params["scale_shift.e0"][species]
        + params["scale_shift.scale"] * e
        + params["scale_shift.shift"]
    )
    return energy.sum()


def reference_structures() -> dict[str, Atoms]:
    rng = np.random.default_rng(3)
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, rng=rng)
    small = Atoms(  # triclinic, two cell vectors shorter than r_max: self-images and multi-edges
        "CuO",
        positions=[[0.1, 0.0, 0.2], [1.2, 1.1, 0.9]],
        cell=[[2.6, 0.0, 0.0], [0.4, 3.1, 0.0], [0.3, -0.5, 4.7]],
        pbc=True,
    )
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    copper.rattle(0.08, rng=rng)
    slab = Atoms(
        "HCO",
        positions=[[0, 0, 0], [1.1, 0.2, 0.0], [2.0, 1.0, 0.3]],
        cell=[3.0, 3.3, 10.0],
        pbc=[True, True, False],
    )
    return {"ethanol": ethanol, "small_triclinic": small, "copper": copper, "slab": slab}


@pytest.fixture(scope="module")
def model():
    return contract_model("geot")


def model_results(model, atoms: Atoms) -> tuple[float, np.ndarray]:
    out = ForceField(model)(graph_of(atoms), compute_forces=True)
    return float(out["energy"].sum().detach()), out["forces"].detach().numpy()


def reference_results(
    model, atoms: Atoms, dense_energy=dense_geot_energy
) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/Å) of a dense reference `dense_energy(model, atoms, positions)`."""
    positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    energy = dense_energy(model, atoms, positions)
    (gradient,) = torch.autograd.grad(energy, positions)
    return float(energy.detach()), -gradient.numpy()


def assert_matches_dense_reference(model, atoms: Atoms, dense_energy) -> None:
    energy, forces = model_results(model, atoms)
    ref_energy, ref_forces = reference_results(model, atoms, dense_energy)
    assert abs(energy - ref_energy) <= TOLERANCE
    np.testing.assert_allclose(forces, ref_forces, rtol=0, atol=TOLERANCE)
    assert np.abs(ref_forces).max() > 1e-4  # the comparison is not between zeros


@pytest.mark.parametrize("name", sorted(reference_structures()))
def test_edge_attention_matches_dense_reference(model, name):
    assert_matches_dense_reference(model, reference_structures()[name], dense_geot_energy)


def dimer_energy_and_force(model, distance: float) -> tuple[float, float]:
    atoms = Atoms("CO", positions=[[0, 0, 0], [distance, 0, 0]])
    energy, forces = model_results(model, atoms)
    return energy, forces[1, 0]


def assert_continuous_across_r_max(model) -> None:
    """A C-O dimer 1 mÅ inside and outside r_max, and 1 Å inside (where it must interact)."""
    far, _ = dimer_energy_and_force(model, R_MAX + 1.0)
    inside, inside_force = dimer_energy_and_force(model, R_MAX - 1e-3)
    outside, outside_force = dimer_energy_and_force(model, R_MAX + 1e-3)
    assert outside == pytest.approx(far, abs=1e-12) and outside_force == 0.0
    # envelope ~ (r_max - r)³ near r_max: energy 1e-9·scale, force 1e-6·scale away at 1 mÅ
    assert abs(inside - far) < 1e-7
    assert abs(inside_force) < 1e-4
    # ... and the pair does interact inside the cutoff (so the checks above can fail)
    bonded, bonded_force = dimer_energy_and_force(model, R_MAX - 1.0)
    assert abs(bonded - far) > 1e-4 and abs(bonded_force) > 1e-4


def test_energy_and_forces_are_continuous_when_an_atom_crosses_r_max(model):
    assert_continuous_across_r_max(model)


def test_attention_maps_have_one_value_per_edge_and_head_and_vanish_at_r_max(model):
    atoms = Atoms("COH", positions=[[0, 0, 0], [1.2, 0, 0], [0, R_MAX - 1e-3, 0]])
    graph = graph_of(atoms)
    _, maps = model.energy_and_attention(graph)
    hp = model.hyperparameters()
    assert len(maps) == hp["transformer_num_layers"]
    num_edges = graph.edge_index.shape[1]
    lengths = torch.linalg.norm(
        graph.positions[graph.edge_index[1]] - graph.positions[graph.edge_index[0]], dim=-1
    )
    for attention in maps:
        assert attention.shape == (num_edges, hp["transformer_num_heads"])
        near_cutoff = lengths > R_MAX - 0.01
        assert near_cutoff.any() and (~near_cutoff).any()
        assert attention[near_cutoff].abs().max() < 1e-8
        assert attention[~near_cutoff].abs().max() > 1e-4


def test_one_atom_attends_only_to_itself(model):
    """No edges: the energy is that of the self-attention term alone (finite, no NaN)."""
    atoms = Atoms("O", positions=[[0, 0, 0]])
    energy, forces = model_results(model, atoms)
    ref_energy, _ = reference_results(model, atoms)
    assert energy == pytest.approx(ref_energy, abs=TOLERANCE)
    assert np.all(forces == 0.0)
