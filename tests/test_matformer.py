"""Matformer: the fast edge path against a dense reference of the equations, the periodic
multi-edge graph and lattice self-connections, and smoothness at r_max.

No reference implementation installs from a package registry (`pip install matformer`: "No
matching distribution found for matformer"; the authors' code, github.com/YKQ98/Matformer, is
installed from source with torch-geometric, torch-scatter, torch-sparse and jarvis-tools), so
the reference here is a direct, dense transcription of the equations in
potentials/models/matformer.py: every atom pair and every periodic image within reach
enumerated by brute force ([images, N, N, ...] tensors), the Gaussian expansion, envelope and
layer norms written out. It shares no code with the model's forward pass, only its weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms

from tests.model_zoo import R_MAX, contract_model, graph_of
from tests.test_geot import (
    affine,
    assert_continuous_across_r_max,
    assert_matches_dense_reference,
    envelope,
    image_distances,
    layer_norm,
    model_results,
    reference_results,
    reference_structures,
)

TOLERANCE = 1e-6  # eV and eV/Å, float64
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, as the reference's layer norms


def dense_matformer_energy(model, atoms: Atoms, positions: torch.Tensor) -> torch.Tensor:
    """Total energy (eV) of the equations in the module docstring, all pairs at once."""
    params = dict(model.state_dict())
    hp = model.hyperparameters()
    heads, channels, r_max = hp["node_layer_head"], hp["node_features"], hp["r_max"]
    distances, mask = image_distances(positions, atoms.get_cell().array, atoms.pbc, r_max)
    weight = envelope(distances, r_max, hp["polynomial_p"]) * mask  # [S, N(i), N(j)]
    bins = hp["edge_features"]
    centers = torch.linspace(0.0, r_max, bins, dtype=positions.dtype)
    gamma = (bins - 1) / r_max  # 1 / spacing of the centres
    gaussians = torch.exp(-gamma * (distances[..., None] - centers) ** 2)  # [S, N, N, bins]
    hidden = torch.log1p(torch.exp(affine(gaussians, params, "edge_embedding.linear_1")))
    edge_features = affine(hidden, params, "edge_embedding.linear_2")  # [S, N, N, C]

    species = torch.tensor([model.species.index(int(z)) for z in atoms.numbers])
    h = params["atom_embedding.weight"][species]  # [N, C]
    num_atoms = h.shape[0]
    for t in range(hp["conv_layers"]):
        layer = f"att_layers.{t}."
        q, k, v = (
            affine(h, params, layer + name).unflatten(-1, (heads, channels))
            for name in ("lin_query", "lin_key", "lin_value")
        )  # [N, H, C], atom i receives (query), atom j sends
        e = (edge_features @ params[layer + "lin_edge.weight"].T).unflatten(-1, (heads, channels))
        shape = e.shape  # [S, N, N, H, C]
        q_i, k_i, v_i = (x[None, :, None].expand(shape) for x in (q, k, v))
        k_j, v_j = (x[None, None, :].expand(shape) for x in (k, v))
        alpha = torch.cat([q_i * k_i, q_i * k_j, q_i * e], dim=-1) / math.sqrt(3 * channels)
        gate = torch.sigmoid(
            layer_norm(
                alpha,
                params[layer + "layer_norm.weight"],
                params[layer + "layer_norm.bias"],
                LN_EPS,
            )
        )
        message = affine(torch.cat([v_i, v_j, e], dim=-1), params, layer + "lin_msg_update")
        message = layer_norm(
            affine(message * gate, params, layer + "msg_linear"),
            params[layer + "msg_norm.weight"],
            params[layer + "msg_norm.bias"],
            LN_EPS,
        )  # [S, N, N, H, C]
        summed = torch.einsum("sij,sijhc->ihc", weight, message).reshape(num_atoms, -1)
        out = layer_norm(
            affine(summed, params, layer + "lin_concate"),
            params[layer + "norm.weight"],
            params[layer + "norm.bias"],
            LN_EPS,
        )
        h = out * torch.sigmoid(out) + affine(h, params, layer + "lin_skip")
    hidden = affine(h, params, "fc")
    e_atom = affine(hidden * torch.sigmoid(hidden), params, "fc_out")[:, 0]
    energy = (
        params["scale_shift.e0"][species]
        + params["scale_shift.scale"] * e_atom
        + params["scale_shift.shift"]
    )
    return energy.sum()


@pytest.fixture(scope="module")
def model():
    return contract_model("matformer")


@pytest.mark.parametrize("name", sorted(reference_structures()))
def test_edge_attention_matches_dense_reference(model, name):
    assert_matches_dense_reference(model, reference_structures()[name], dense_matformer_energy)


def test_multi_edges_and_lattice_self_connections_are_in_the_graph():
    """A cell with vectors shorter than r_max: atom 0 reaches atom 1 through several images
    (one edge each) and itself at lattice vectors (edges 0 → 0 with a non-zero shift)."""
    atoms = reference_structures()["small_triclinic"]
    graph = graph_of(atoms)
    sender, receiver = graph.edge_index
    shift_norm = graph.edge_shift.abs().sum(-1)
    self_connections = (sender == receiver) & (shift_norm > 0)
    lengths = torch.linalg.norm(graph.edge_shift @ graph.cell[0], dim=-1)
    assert self_connections.any()
    assert torch.all(lengths[self_connections] < R_MAX)  # exactly the images within r_max
    assert int(((sender == 0) & (receiver == 1)).sum()) > 1  # multi-edge 0 → 1
    # the shortest lattice vector (a = 2.6 Å) is one of them, both directions
    a = torch.as_tensor(atoms.cell[0])
    assert torch.isclose(lengths[self_connections].min(), torch.linalg.norm(a))


def test_lattice_self_connections_enter_the_energy(model):
    """One atom in a cubic cell: its only neighbours are its own images; the energy differs
    from the isolated atom's, matches the dense reference, and forces vanish by symmetry."""
    isolated, _ = model_results(model, Atoms("Cu", positions=[[0, 0, 0]]))
    crystal = Atoms("Cu", positions=[[0.3, 0.2, 0.1]], cell=[2.5, 2.5, 2.5], pbc=True)
    energy, forces = model_results(model, crystal)
    ref_energy, _ = reference_results(model, crystal, dense_matformer_energy)
    assert abs(energy - isolated) > 1e-4
    assert energy == pytest.approx(ref_energy, abs=TOLERANCE)
    np.testing.assert_allclose(forces, 0.0, atol=1e-12)


def test_molecule_has_no_lattice_self_connections(model):
    atoms = reference_structures()["ethanol"]
    sender, receiver = graph_of(atoms).edge_index
    assert not bool((sender == receiver).any())


def test_energy_and_forces_are_continuous_when_an_atom_crosses_r_max(model):
    assert_continuous_across_r_max(model)
