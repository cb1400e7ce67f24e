"""TokenGT (potentials/models/tokengt.py) against a dense reference of its equations.

No reference implementation installs from a registry: TokenGT's code (jw9730/tokengt, fairseq
based) is not on PyPI. The reference here is the module docstring written densely: all
N + N·M tokens (atoms, and an edge token for every atom × periodic image pair, masked beyond
r_max) and a dense [T, T] attention-weight matrix built from the incidence rules, on the
model's parameters, sharing no code with the fast path (dense helpers from
tests/test_graphormer3d.py: no edge lists, scatter or `equimd.potentials.nn`).
"""

from __future__ import annotations

import math

import pytest
import torch
from ase import Atoms

from tests.model_zoo import contract_model
from tests.test_graphormer3d import (
    assert_close,
    assert_smooth_across_cutoff,
    dense_block,
    dense_envelope,
    dense_geometry,
    dense_linear,
    dense_readout,
    dense_results,
    model_results,
    reference_structures,
    species_of,
)


def dense_tokengt_energy(model, atoms: Atoms, positions: torch.Tensor, images: int):
    """Total energy (eV): token t < N is atom t, token N + i·M + m the edge from image m
    (atom j(m)) to atom i; U[t, t'] is the summed weight of t' among t's keys."""
    species = species_of(model, atoms)
    num_atoms = len(atoms)
    distances, key_atom, is_self = dense_geometry(atoms, positions, images)  # [N, M]
    num_images = distances.shape[1]
    valid = (distances < model.r_max) & ~is_self  # [N, M] neighbour edges
    safe = torch.where(valid, distances, torch.ones_like(distances))
    envelope = dense_envelope(safe, model.r_max) * valid  # [N, M]
    num_bessel = model.edge_encoder.weight.shape[1]
    n = torch.arange(1, num_bessel + 1, dtype=torch.float64)
    bessel = (
        math.sqrt(2.0 / model.r_max) * torch.sin(n * math.pi * safe.unsqueeze(-1) / model.r_max)
    ) / safe.unsqueeze(-1)  # [N, M, num_bessel]
    radial = bessel * envelope.unsqueeze(-1)

    identifiers = model.node_identifier.weight[species]  # [N, d_p]
    type_node, type_edge = model.type_identifier.weight
    one_hot = torch.eye(model.num_species, dtype=torch.float64)[species]
    node_tokens = (
        dense_linear(model.node_encoder, one_hot)
        + dense_linear(model.identifier_proj, torch.cat([identifiers, identifiers], dim=-1))
        + type_node
    )  # [N, D]
    pair_ids = torch.cat(
        [
            identifiers[key_atom].unsqueeze(0).expand(num_atoms, -1, -1),
            identifiers.unsqueeze(1).expand(-1, num_images, -1),
        ],
        dim=-1,
    )  # [N, M, 2 d_p]: [P_sender ‖ P_receiver]
    edge_tokens = (
        dense_linear(model.edge_encoder, radial)
        + dense_linear(model.identifier_proj, pair_ids)
        + type_edge
    ).reshape(num_atoms * num_images, -1)  # [N·M, D]
    tokens = torch.cat([node_tokens, edge_tokens])  # [T, D]

    num_tokens = tokens.shape[0]
    weights = torch.zeros(num_tokens, num_tokens, dtype=torch.float64)
    image_to_atom = torch.eye(num_atoms, dtype=torch.float64)[key_atom]  # [M, N]
    weights[:num_atoms, :num_atoms] += envelope @ image_to_atom  # atom j → atom i
    edge_index = num_atoms + torch.arange(num_atoms * num_images).reshape(num_atoms, num_images)
    rows = torch.arange(num_atoms).unsqueeze(1).expand(-1, num_images)
    weights[rows, edge_index] += envelope  # edge token → its receiver atom i
    flat_valid = valid.reshape(-1).to(torch.float64)
    weights[edge_index.reshape(-1), rows.reshape(-1)] += flat_valid  # receiver → edge
    weights[edge_index.reshape(-1), key_atom.repeat(num_atoms)] += flat_valid  # sender → edge
    weights = weights + torch.eye(num_tokens, dtype=torch.float64)  # every token itself

    keys = torch.arange(num_tokens)
    for layer in model.layers:
        tokens = dense_block(layer, tokens, keys, weights)
    return dense_readout(model, tokens[:num_atoms], model.final_layer_norm, species)


@pytest.fixture(scope="module")
def tokengt():
    return contract_model("tokengt")


@pytest.mark.parametrize("name, atoms, images", reference_structures())
def test_tokengt_matches_dense_equations(tokengt, name, atoms, images):
    assert_close(
        model_results(tokengt, atoms), dense_results(dense_tokengt_energy, tokengt, atoms, images)
    )


def test_tokengt_energy_is_smooth_across_the_cutoff(tokengt):
    assert_smooth_across_cutoff(tokengt)
