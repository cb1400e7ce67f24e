"""The benchmark rows (benchmarks/rows/*.json) and the peers' graph indices, without any peer.

- every row's equimd hyperparameters are constructor arguments of its registered model;
- a row's peer names an existing worker script and a peer venv that setup_peers.sh can make;
- the peer model has the equimd row's sizes: hyperparameters that the peer spells the same way
  have the same values (so resizing one side without the other fails here), and the peer's
  `equimd_hyperparameters` (the equimd variant the peer is compared with) are valid too;
- the index arrays the peer workers build beforehand (benchmarks/peers/peer_graphs.py) are
  equimd's: the same edges as equimd's neighbor list, DimeNet++ triplets equal to equimd's
  `build_triplets`, GemNet triplets and reverse edges equal to `build_receiver_pairs` and
  `reverse_edges`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph
from equimd.potentials.models import MODELS
from equimd.potentials.nn.triplets import build_receiver_pairs, build_triplets, reverse_edges
from equimd.potentials.train.config import model_hyperparameter_defaults
from tests.test_triplets import structures  # a molecule, a one-atom cell, triclinic, a slab

ROOT = Path(__file__).resolve().parents[1]
ROWS = sorted((ROOT / "benchmarks" / "rows").glob("*.json"))
PEERS = ROOT / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

import peer_graphs  # noqa: E402  (benchmarks/peers/peer_graphs.py: NumPy and ASE only)

# peers whose venv setup_peers.sh makes without a requirements file
BUILT_IN_PEERS = {"mace", "nequip"}
# peer keywords spelled differently from equimd's for the same quantity:
# {peer: {peer name: (equimd name, peer value -> equimd value)}}
RENAMED = {
    "nequip": {
        "num_bessels": ("num_bessel", lambda value: value),
        "polynomial_cutoff_p": ("polynomial_p", lambda value: value),
    },
    "fairchem": {  # GemNetT's basis options are dicts
        "rbf": ("rbf", lambda value: value["name"]),
        "envelope": ("envelope_exponent", lambda value: value["exponent"]),
    },
}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", ROWS, ids=lambda p: p.stem)
def test_row_hyperparameters_are_model_arguments(path):
    row = load(path)
    model_type = row["equimd"]["model_type"]
    assert model_type in MODELS, f"{path.name}: no registered model {model_type!r}"
    accepted = model_hyperparameter_defaults(model_type)
    unknown = set(row["equimd"]["hyperparameters"]) - set(accepted)
    assert not unknown, f"{path.name}: {model_type} takes no {sorted(unknown)}"
    peer = row.get("peer")
    if peer and "equimd_hyperparameters" in peer:
        unknown = set(peer["equimd_hyperparameters"]) - set(accepted)
        assert not unknown, f"{path.name}: peer.equimd_hyperparameters {sorted(unknown)}"


PEER_ROWS = [path for path in ROWS if "peer" in load(path)]


@pytest.mark.parametrize("path", PEER_ROWS, ids=lambda p: p.stem)
def test_row_peer_has_a_worker_and_a_venv_recipe(path):
    peer = load(path)["peer"]
    assert (PEERS / f"{peer['name']}_worker.py").is_file(), f"no {peer['name']}_worker.py"
    assert peer["name"] in BUILT_IN_PEERS or (PEERS / "venvs" / f"{peer['name']}.txt").is_file()
    assert isinstance(peer.get("kwargs"), dict) and peer["kwargs"]


@pytest.mark.parametrize("path", PEER_ROWS, ids=lambda p: p.stem)
def test_row_peer_has_the_equimd_sizes(path):
    row = load(path)
    peer = row["peer"]
    equimd = {**row["equimd"]["hyperparameters"], **peer.get("equimd_hyperparameters", {})}
    renamed = RENAMED.get(peer["name"], {})
    shared = 0
    for name, value in peer["kwargs"].items():
        if name in renamed:
            name, convert = renamed[name]
            value = convert(value)
        if name in equimd:
            shared += 1
            assert equimd[name] == value, f"{path.name}: {name} is {equimd[name]} vs {value}"
    assert shared >= 3, f"{path.name}: the peer's kwargs share almost no name with equimd's"


def equimd_edges(atoms: Atoms, r_max: float):
    graph = configuration_to_graph(Configuration.from_atoms(atoms), r_max, torch.float64)
    sender, receiver = graph.edge_index.numpy()
    return graph, sender, receiver, graph.edge_shift.numpy().astype(np.int64)


def edge_keys(sender, receiver, shift) -> list[tuple]:
    return [
        (s, r, *sh)
        for s, r, sh in zip(sender.tolist(), receiver.tolist(), shift.tolist(), strict=True)
    ]


@pytest.mark.parametrize("name", sorted(structures()))
def test_peer_graph_indices_are_equimds(name):
    atoms, r_max = structures()[name], 3.0
    graph, sender, receiver, shift = equimd_edges(atoms, r_max)
    ase_sender, ase_receiver, ase_shift = peer_graphs.neighbor_graph(atoms, r_max)
    assert sorted(edge_keys(ase_sender, ase_receiver, ase_shift)) == sorted(
        edge_keys(sender, receiver, shift)
    )

    num_atoms = len(atoms)
    kj, ji = peer_graphs.dimenet_triplets(sender, receiver, shift, num_atoms)
    reference = build_triplets(graph.edge_index, graph.edge_shift, num_atoms)
    kept = reference.mask > 0.5
    assert len(set(zip(kj.tolist(), ji.tolist(), strict=True))) == len(kj)
    assert set(zip(kj.tolist(), ji.tolist(), strict=True)) == set(
        zip(reference.edge_kj[kept].tolist(), reference.edge_ji[kept].tolist(), strict=True)
    )

    ba, ca, ragged = peer_graphs.gemnet_triplets(receiver, num_atoms)
    pairs = build_receiver_pairs(graph.edge_index, num_atoms, torch.float64)
    kept = pairs.mask > 0.5
    assert set(zip(ba.tolist(), ca.tolist(), strict=True)) == set(
        zip(pairs.edge_kj[kept].tolist(), pairs.edge_ji[kept].tolist(), strict=True)
    )
    # ragged: 0, 1, ... within each edge ca (fairchem's id3_ragged_idx)
    for edge in np.unique(ca)[:50]:
        assert ragged[ca == edge].tolist() == list(range(int((ca == edge).sum())))

    swap = peer_graphs.reverse_edges(sender, receiver, shift)
    assert swap.tolist() == reverse_edges(graph.edge_index, graph.edge_shift).tolist()


def test_edge_pairs_follow_the_fixture_loop_order():
    """`edge_pairs` lists pairs in the order of the fixture scripts' double loops."""
    rng = np.random.default_rng(0)
    key_first, key_second = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    loop = [(a, b) for b in range(40) for a in range(40) if key_first[a] == key_second[b]]
    first, second = peer_graphs.edge_pairs(key_first, key_second, 5)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == loop
