"""`evaluate`: correct metrics, predictions file, parity plot, and a clear unknown-element error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equimd.errors import UnknownElementError
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.models.serialization import save_model
from equimd.potentials.train.evaluate import evaluate
from tests.test_train import write_emt_copper


@pytest.fixture(scope="module")
def copper(tmp_path_factory):
    return write_emt_copper(tmp_path_factory.mktemp("data") / "cu_emt.xyz", num_frames=5, seed=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(
        "nequip", species=[29], r_max=3.5, num_features=4, l_max=1, num_layers=2,
        radial_mlp_hidden=[8], avg_num_neighbors=12.0,
    ).double()
    model.scale_shift.set_statistics([-0.1], scale=0.8, shift=0.05)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(model, path)
    return path, model


def reference_errors(model, path):
    """MAE per quantity computed frame by frame, independently of `evaluate`."""
    import ase.io

    forcefield = ForceField(model)
    energy, forces, stress = [], [], []
    for atoms in ase.io.read(path, ":"):
        config = Configuration.from_atoms(atoms)
        out = forcefield(configuration_to_graph(config, model.r_max), compute_stress=True)
        energy.append((float(out["energy"][0].detach()) - atoms.get_potential_energy()) / len(atoms))
        forces.append(out["forces"].detach().numpy() - atoms.get_forces())
        stress.append(out["stress"][0].detach().numpy() - atoms.get_stress(voigt=False))
    return {
        "energy_mae": 1000 * np.mean(np.abs(energy)),
        "forces_mae": 1000 * np.mean(np.abs(np.concatenate(forces))),
        "forces_rmse": 1000 * np.sqrt(np.mean(np.concatenate(forces) ** 2)),
        "stress_mae": 1000 * np.mean(np.abs(np.stack(stress))),
    }


def test_evaluate_reports_correct_metrics_and_writes_files(copper, checkpoint, tmp_path, capsys):
    path, model = checkpoint
    result = evaluate(path, copper, output_dir=tmp_path / "eval", batch_size=2)
    expected = reference_errors(model, copper)
    for name, value in expected.items():
        assert result["metrics"][name] == pytest.approx(value, rel=1e-8), name
    assert result["num_frames"] == 5

    import ase.io

    frames = ase.io.read(result["predictions"], ":")
    assert len(frames) == 5
    predicted_energy = np.array([a.info["pred_energy"] for a in frames])
    reference_energy = np.array([a.get_potential_energy() for a in frames])
    per_atom = np.abs(predicted_energy - reference_energy) / len(frames[0])
    assert 1000 * per_atom.mean() == pytest.approx(result["metrics"]["energy_mae"], rel=1e-8)
    assert frames[0].arrays["pred_forces"].shape == (8, 3)
    with open(result["parity_plot"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "forces" in out and "meV/Å" in out and str(result["parity_plot"]) in out


def test_unknown_element_names_file_frame_atom_and_element(copper, checkpoint, tmp_path):
    import ase.io

    frames = ase.io.read(copper, ":")
    frames[2].numbers[3] = 47  # silver
    data = tmp_path / "with_silver.xyz"
    ase.io.write(data, frames, format="extxyz")
    with pytest.raises(UnknownElementError) as error:
        evaluate(checkpoint[0], data, output_dir=tmp_path / "eval")
    message = str(error.value)
    assert "with_silver.xyz" in message and "frame 2" in message
    assert "atom 3" in message and "Ag" in message


def test_evaluate_reads_a_training_checkpoint(tmp_path, copper):
    from equimd.potentials.train.trainer import train
    from tests.test_train import tiny_config

    result = train(tiny_config(copper, tmp_path / "run", epochs=1), progress=False)
    metrics = evaluate(result.best_checkpoint, copper, output_dir=tmp_path / "eval")["metrics"]
    assert np.isfinite(metrics["forces_mae"])


def test_evaluate_accepts_a_deployed_model_file_with_the_same_metrics(copper, checkpoint,
                                                                       tmp_path, capsys):
    """Users evaluate the file they will run: `equimd evaluate model.pt DATA` gives the
    checkpoint's metrics (float64 export: equal to round-off) and the same outputs."""
    from equimd.cli import main
    from equimd.deploy.export import export_model

    path, _ = checkpoint
    deployed = export_model(path, tmp_path / "model.pt", dtype="float64")
    expected = evaluate(path, copper, output_dir=tmp_path / "eval_checkpoint")["metrics"]
    capsys.readouterr()
    assert main(["evaluate", str(deployed), str(copper), "-o", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "forces" in out and "meV/Å" in out and "parity plot:" in out
    assert (tmp_path / "eval" / "predictions.extxyz").is_file()
    assert (tmp_path / "eval" / "parity.png").is_file()

    from equimd.deploy.load import load

    result = evaluate(deployed, copper, output_dir=tmp_path / "eval2", deployed=load(deployed))
    for name, value in expected.items():
        if np.isfinite(value):
            assert result["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def test_errors_are_broken_down_per_element_and_per_structure_type():
    """Hand-made predictions: the force errors of each element and the errors of each
    config_type are the plain MAE/RMSE over exactly those atoms/frames."""
    from equimd.potentials.train.evaluate import error_breakdown, format_breakdown

    water = Configuration(positions=np.eye(3), numbers=[8, 1, 1], energy=-10.0,
                          forces=np.zeros((3, 3)), config_type="molecule")
    box = Configuration(positions=np.eye(3) * 2, numbers=[8, 8, 1], energy=-20.0, forces=np.zeros((3, 3)),
                        cell=np.eye(3) * 5, pbc=[True] * 3, stress=np.zeros((3, 3)), config_type="bulk")
    untyped = Configuration(positions=np.eye(3) * 3, numbers=[1, 1, 1], energy=-3.0, forces=np.zeros((3, 3)))
    predictions = [
        {"energy": -9.97, "forces": np.array([[0.3, 0, 0], [0, 0.01, 0], [0, 0, -0.02]])},
        {"energy": -20.06, "forces": np.array([[0.1, 0, 0], [0, -0.1, 0], [0, 0, 0.04]]),
         "stress": np.full((3, 3), 0.002)},
        {"energy": -3.0, "forces": np.zeros((3, 3))},
    ]
    breakdown = error_breakdown([water, box, untyped], predictions)
    oxygen = breakdown["per_element"]["O"]  # atoms 0 of water, 0 and 1 of the box
    assert oxygen["atoms"] == 3
    assert oxygen["forces_mae"] == pytest.approx(1000 * (0.3 + 0.1 + 0.1) / 9)
    assert oxygen["forces_rmse"] == pytest.approx(1000 * np.sqrt((0.09 + 0.01 + 0.01) / 9))
    assert breakdown["per_element"]["H"]["atoms"] == 6
    assert breakdown["per_element"]["H"]["forces_mae"] == pytest.approx(1000 * (0.01 + 0.02 + 0.04) / 18)
    bulk, molecule_row = breakdown["per_type"]["bulk"], breakdown["per_type"]["molecule"]
    assert bulk["frames"] == 1 and bulk["energy_total_mae"] == pytest.approx(60.0)
    assert bulk["energy_mae"] == pytest.approx(20.0) and bulk["stress_mae"] == pytest.approx(2.0)
    assert molecule_row["energy_mae"] == pytest.approx(10.0) and np.isnan(molecule_row["stress_mae"])
    assert breakdown["per_type"]["-"]["forces_mae"] == 0.0  # frames without a config_type
    text = format_breakdown(breakdown)
    assert "bulk" in text and "molecule" in text and text.splitlines()[1].startswith("H")


def test_evaluate_breakdown_agrees_with_the_overall_metrics(copper, checkpoint, tmp_path):
    path, _ = checkpoint
    result = evaluate(path, copper, output_dir=tmp_path / "eval", batch_size=2)
    assert list(result["per_element"]) == ["Cu"] and result["per_element"]["Cu"]["atoms"] == 40
    assert result["per_element"]["Cu"]["forces_mae"] == pytest.approx(result["metrics"]["forces_mae"], rel=1e-9)
    (only_type,) = result["per_type"].values()  # the EMT frames carry no config_type
    for name in ("energy_mae", "energy_total_rmse", "forces_rmse", "stress_mae"):
        assert only_type[name] == pytest.approx(result["metrics"][name], rel=1e-9), name
