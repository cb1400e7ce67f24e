"""Loss and metrics: weights, per-atom energies, masks for missing labels, units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.train.batching import collate_labelled, labelled_graph
from equimd.potentials.train.loss import LossWeights, loss_from_metrics, loss_terms, weighted_loss
from equimd.potentials.train.metrics import ErrorAccumulator

CELL = np.eye(3) * 4.0


def frame(n: int, stress: bool, seed: int) -> Configuration:
    rng = np.random.default_rng(seed)
    return Configuration(
        positions=rng.uniform(0, 4, (n, 3)),
        numbers=[29] * n,
        cell=CELL,
        pbc=[True] * 3,
        energy=-3.0 * n,
        forces=np.zeros((n, 3)),
        stress=np.zeros((3, 3)) if stress else None,
    )


@pytest.fixture
def batch():
    # frame 0: 2 atoms with stress; frame 1: 4 atoms without stress
    return collate_labelled(
        [labelled_graph(frame(2, True, 0), 3.0, torch.float64),
         labelled_graph(frame(4, False, 1), 3.0, torch.float64)]
    )


def predictions_with_errors(batch, energy_error, force_error, stress_error):
    graph = batch.graph
    return {
        "energy": graph.energy + torch.tensor(energy_error, dtype=torch.float64),
        "forces": graph.forces + force_error,
        "stress": graph.stress + stress_error,
    }


def test_energy_term_is_per_atom_and_stress_term_ignores_unlabelled_frames(batch):
    # errors: energy 0.2 eV (2 atoms) and 0.8 eV (4 atoms) → 0.1 and 0.2 eV/atom
    stress_error = torch.zeros_like(batch.graph.stress)
    stress_error[0] = 0.01
    stress_error[1] = 5.0  # frame 1 has no stress label: must not count
    predictions = predictions_with_errors(batch, [0.2, 0.8], 0.3, stress_error)
    terms = loss_terms(predictions, batch)
    assert float(terms["energy"]) == pytest.approx((0.1**2 + 0.2**2) / 2)
    assert float(terms["forces"]) == pytest.approx(0.09)
    assert float(terms["stress"]) == pytest.approx(1e-4)
    weights = LossWeights(energy=2.0, forces=10.0, stress=100.0)
    expected = 2.0 * 0.025 + 10.0 * 0.09 + 100.0 * 1e-4
    assert float(weighted_loss(predictions, batch, weights)) == pytest.approx(expected)


def test_metrics_are_in_mev_and_match_the_loss(batch):
    stress_error = torch.zeros_like(batch.graph.stress)
    stress_error[0] = 0.01
    predictions = predictions_with_errors(batch, [0.2, -0.8], 0.3, stress_error)
    errors = ErrorAccumulator()
    errors.update(predictions, batch)
    metrics = errors.compute()
    assert metrics["energy_mae"] == pytest.approx(150.0)  # meV/atom
    assert metrics["energy_total_mae"] == pytest.approx(500.0)  # meV
    assert metrics["forces_mae"] == pytest.approx(300.0)  # meV/Å
    assert metrics["stress_mae"] == pytest.approx(10.0)  # meV/Å³, labelled frame only
    weights = LossWeights(1.0, 100.0, 10.0)
    assert loss_from_metrics(metrics, weights) == pytest.approx(
        float(weighted_loss(predictions, batch, weights))
    )


def test_missing_labels_give_nan_metrics_and_zero_loss_terms():
    unlabelled = Configuration(positions=np.zeros((1, 3)), numbers=[1])
    batch = labelled_graph(unlabelled, 3.0, torch.float64)
    predictions = {"energy": torch.ones(1, dtype=torch.float64),
                   "forces": torch.ones((1, 3), dtype=torch.float64)}
    assert float(weighted_loss(predictions, batch, LossWeights())) == 0.0
    errors = ErrorAccumulator()
    errors.update(predictions, batch)
    assert all(math.isnan(v) for v in errors.compute().values())


def test_accumulator_state_round_trips():
    errors = ErrorAccumulator()
    errors.sums["forces"] = [1.0, 2.0, 3]
    again = ErrorAccumulator()
    again.load_state_dict(errors.state_dict())
    assert again.compute() == pytest.approx(errors.compute(), nan_ok=True)
