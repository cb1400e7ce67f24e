"""The refit of the per-species energy reference after training
(potentials/train/energy_reference.py): it finds the constants a model's energies are off by,
per species, and a finished run's best.pt carries them (energies on the training frames
without a mean error, forces unchanged)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from ase.build import molecule

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models.base import build_model
from equimd.potentials.models.serialization import load_model
from equimd.potentials.train.data import build_graphs
from equimd.potentials.train.energy_reference import (
    energy_reference_correction,
    shift_energy_reference,
)
from equimd.potentials.train.evaluate import predict
from equimd.potentials.train.trainer import train
from tests.test_train import copper, tiny_config  # noqa: F401 (fixture)

SPECIES = [1, 6, 8]
TRUE_SHIFT = torch.tensor([0.137, -2.5, 0.81], dtype=torch.float64)  # eV per H, C, O atom


def frames(names: list[str], seed: int = 0) -> list[Configuration]:
    rng = np.random.default_rng(seed)
    configs = []
    for name in names:
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        configs.append(Configuration.from_atoms(atoms))
    return configs


def labelled_off_by(model: torch.nn.Module, configs: list[Configuration], shift: torch.Tensor) -> list[Configuration]:
    """The frames labelled with the model's own energies plus Σ_s n_s shift_s."""
    predictions, _ = predict(ForceField(model), configs, model.r_max, torch.float64)
    out = []
    for config, prediction in zip(configs, predictions, strict=True):
        counts = torch.tensor([int((config.numbers == z).sum()) for z in SPECIES], dtype=torch.float64)
        energy = prediction["energy"] + float(counts @ shift)
        out.append(dataclasses.replace(config, energy=energy, forces=prediction["forces"]))
    return out


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("nequip", species=SPECIES, r_max=4.0, num_features=4, l_max=1, num_layers=2).double()


def test_the_correction_recovers_per_species_constants_where_compositions_differ():
    potential = model()
    configs = labelled_off_by(potential, frames(["CH4", "H2O", "CO2", "CH3OH", "C2H6", "HCOOH"]), TRUE_SHIFT)
    graphs = build_graphs(configs, potential.r_max, torch.float64)
    correction = energy_reference_correction(
        ForceField(potential), graphs, SPECIES, 4, torch.device("cpu"), torch.float64
    )
    torch.testing.assert_close(correction, TRUE_SHIFT, rtol=0, atol=1e-10)
    shift_energy_reference(potential, correction)
    predictions, _ = predict(ForceField(potential), configs, potential.r_max, torch.float64)
    assert max(abs(p["energy"] - c.energy) for p, c in zip(predictions, configs, strict=True)) < 1e-9


def test_one_composition_fixes_the_molecule_s_constant_with_the_smallest_correction():
    potential = model()
    configs = labelled_off_by(potential, frames(["CH3OH"] * 5, seed=1), TRUE_SHIFT)
    graphs = build_graphs(configs, potential.r_max, torch.float64)
    correction = energy_reference_correction(
        ForceField(potential), graphs, SPECIES, 2, torch.device("cpu"), torch.float64
    )
    counts = torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)  # CH3OH: H, C, O
    torch.testing.assert_close(counts @ correction, counts @ TRUE_SHIFT, rtol=0, atol=1e-10)
    torch.testing.assert_close(correction, counts * (counts @ TRUE_SHIFT) / (counts @ counts), rtol=0, atol=1e-10)


def test_unlabelled_frames_give_no_correction():
    potential = model()
    graphs = build_graphs(frames(["CH4", "H2O"]), potential.r_max, torch.float64)
    assert energy_reference_correction(ForceField(potential), graphs, SPECIES, 2, torch.device("cpu"), torch.float64) is None


def training_energy_bias(checkpoint, data) -> float:
    import ase.io

    configs = [Configuration.from_atoms(atoms) for atoms in ase.io.read(data, ":")]
    references = [atoms.get_potential_energy() for atoms in ase.io.read(data, ":")]
    best = load_model(checkpoint)
    predictions, _ = predict(ForceField(best), configs, best.r_max, torch.float64)
    return float(np.mean([r - p["energy"] for r, p in zip(references, predictions, strict=True)]))


def test_a_finished_run_s_best_checkpoint_has_no_mean_energy_error_on_its_training_frames(copper, tmp_path):  # noqa: F811
    """Two epochs leave the tiny model's energies off by a constant; with the refit (the
    default) best.pt's mean error over the frames it trained on vanishes, its forces are those
    of the same weights without the refit, and the reported metrics are best.pt's."""
    refit = train(tiny_config(copper, tmp_path / "refit", epochs=2, energy_weight=0.01), progress=False)
    plain = train(
        tiny_config(copper, tmp_path / "plain", epochs=2, energy_weight=0.01, refit_energy_reference=False),
        progress=False,
    )
    import ase.io

    split = torch.load(refit.best_checkpoint, weights_only=False)["split"]["train"]
    frames_file = tmp_path / "train_frames.xyz"
    all_frames = ase.io.read(copper, ":")
    ase.io.write(frames_file, [all_frames[i] for i in split])
    assert abs(training_energy_bias(plain.best_checkpoint, frames_file)) > 1e-3  # eV per cell
    assert abs(training_energy_bias(refit.best_checkpoint, frames_file)) < 1e-9
    refit_model, plain_model = load_model(refit.best_checkpoint), load_model(plain.best_checkpoint)
    configs = [Configuration.from_atoms(atoms) for atoms in all_frames[:3]]
    refit_forces, _ = predict(ForceField(refit_model), configs, 3.5, torch.float64)
    plain_forces, _ = predict(ForceField(plain_model), configs, 3.5, torch.float64)
    for a, b in zip(refit_forces, plain_forces, strict=True):
        np.testing.assert_allclose(a["forces"], b["forces"], rtol=0, atol=1e-12)
    assert refit.final_metrics["energy_mae"] < plain.final_metrics["energy_mae"]
    assert refit.final_metrics["forces_mae"] == plain.final_metrics["forces_mae"]
