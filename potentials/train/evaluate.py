"""`evaluate(checkpoint, data)`: error metrics of a trained model on a labelled data set.

Prints an MAE/RMSE table (energy meV/atom and meV, forces meV/Å, stress meV/Å³), the force
errors per element and all errors per structure type (extxyz `config_type`), writes the
predictions next to the reference labels as extxyz and a parity plot as PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from equimd.checks import check_species
from equimd.devices import check_device
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models.serialization import model_dtype, model_from_record, read_checkpoint
from equimd.potentials.train.batching import batch_indices, batch_to, collate_labelled
from equimd.potentials.train.data import build_graphs
from equimd.potentials.train.metrics import ErrorAccumulator, format_metrics_table
from equimd.potentials.train.parity import parity_plot

PREDICTIONS_NAME = "predictions.extxyz"
PARITY_NAME = "parity.png"


def predict(
    forcefield: ForceField,
    configs: list[Configuration],
    r_max: float,
    dtype: torch.dtype,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Predictions per frame ({"energy": eV, "forces": [n, 3] eV/Å, "stress": [3, 3] eV/Å³ for
    fully periodic frames}) and the error metrics against the frames' labels."""
    graphs = build_graphs(configs, r_max, dtype)
    errors = ErrorAccumulator()
    predictions: list[dict[str, Any]] = []
    forcefield.eval()
    for indices in batch_indices(len(graphs), batch_size):
        batch = batch_to(collate_labelled([graphs[i] for i in indices]), device, dtype)
        periodic = [bool(configs[i].pbc.all()) for i in indices]
        with torch.enable_grad():
            output = forcefield(
                batch.graph,
                compute_forces=True,
                compute_stress=any(periodic) or batch.has_stress,
                training=False,
            )
        output = {k: v.detach() for k, v in output.items()}
        errors.update(output, batch)
        ptr = batch.graph.ptr.tolist()
        for k, is_periodic in enumerate(periodic):
            frame = {
                "energy": float(output["energy"][k]),
                "forces": output["forces"][ptr[k] : ptr[k + 1]].cpu().double().numpy(),
            }
            if is_periodic and "stress" in output:
                frame["stress"] = output["stress"][k].cpu().double().numpy()
            predictions.append(frame)
    return predictions, errors.compute()


def predict_deployed(
    model: Any, configs: list[Configuration]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """`predict` for a loaded deployed model file (`equimd.deploy.load`, passed in by the
    caller: this layer does not import `deploy`): one structure at a time, in the file's dtype
    on its device, so the metrics are those of the file that MD will run."""
    graphs = build_graphs(configs, model.r_max, model.dtype)  # the labels, in the same layout
    errors = ErrorAccumulator()
    predictions: list[dict[str, Any]] = []
    for config, labelled in zip(configs, graphs, strict=True):
        periodic = bool(config.pbc.all())
        out = model(config.positions, config.numbers, config.cell, config.pbc,
                    compute_stress=periodic, source=config.source)
        output = {"energy": out["energy"].reshape(1), "forces": out["forces"]}
        frame = {"energy": float(out["energy"]),
                 "forces": out["forces"].cpu().double().numpy()}
        if periodic:
            output["stress"] = out["stress"].reshape(1, 3, 3)
            frame["stress"] = out["stress"].cpu().double().numpy()
        errors.update(output, batch_to(labelled, model.device, model.dtype))
        predictions.append(frame)
    return predictions, errors.compute()


def parity_data(
    configs: list[Configuration], predictions: list[dict[str, Any]]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Flat reference/predicted arrays per quantity over the frames that carry the label."""
    reference: dict[str, list] = {"energy": [], "forces": [], "stress": []}
    predicted: dict[str, list] = {"energy": [], "forces": [], "stress": []}
    for config, frame in zip(configs, predictions, strict=True):
        if config.energy is not None:
            reference["energy"].append([config.energy / config.n_atoms])
            predicted["energy"].append([frame["energy"] / config.n_atoms])
        if config.forces is not None:
            reference["forces"].append(config.forces.ravel())
            predicted["forces"].append(frame["forces"].ravel())
        if config.stress is not None and "stress" in frame:
            reference["stress"].append(config.stress.ravel())
            predicted["stress"].append(frame["stress"].ravel())

    def flat(values: dict[str, list]) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in values.items()}

    return flat(reference), flat(predicted)


def mae_rmse(errors: list[np.ndarray], name: str) -> dict[str, float]:
    """{name_mae, name_rmse} in meV units of eV errors (NaN when there are none)."""
    flat = np.concatenate([np.ravel(e) for e in errors]) if errors else np.zeros(0)
    if flat.size == 0:
        return {f"{name}_mae": float("nan"), f"{name}_rmse": float("nan")}
    return {f"{name}_mae": 1000.0 * float(np.abs(flat).mean()),
            f"{name}_rmse": 1000.0 * float(np.sqrt((flat**2).mean()))}


def error_breakdown(
    configs: list[Configuration], predictions: list[dict[str, Any]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Errors split two ways (units of `equimd.potentials.train.metrics.UNITS`):

    per_element: {symbol: forces_mae/rmse (meV/Å) over that element's atoms, "atoms": count}
    per_type:    {config_type ("-" where a frame has none): energy_mae/rmse (meV/atom),
                  energy_total_mae/rmse (meV), forces_mae/rmse, stress_mae/rmse, "frames"}
    """
    from ase.data import chemical_symbols

    by_element: dict[int, list[np.ndarray]] = {}
    by_type: dict[str, dict[str, list]] = {}
    for config, frame in zip(configs, predictions, strict=True):
        group = by_type.setdefault(config.config_type or "-",
                                   {"energy": [], "energy_total": [], "forces": [], "stress": [], "frames": []})
        group["frames"].append(1)
        if config.energy is not None:
            group["energy_total"].append(np.array([frame["energy"] - config.energy]))
            group["energy"].append(group["energy_total"][-1] / config.n_atoms)
        if config.forces is not None:
            error = frame["forces"] - config.forces
            group["forces"].append(error)
            for number in np.unique(config.numbers):
                by_element.setdefault(int(number), []).append(error[config.numbers == number])
        if config.stress is not None and "stress" in frame:
            group["stress"].append(frame["stress"] - config.stress)
    per_element = {
        chemical_symbols[z]: {**mae_rmse(errors, "forces"), "atoms": sum(len(e) for e in errors)}
        for z, errors in sorted(by_element.items())
    }
    per_type = {
        name: {**{k: v for q in ("energy", "energy_total", "forces", "stress") for k, v in mae_rmse(group[q], q).items()},
               "frames": len(group["frames"])}
        for name, group in sorted(by_type.items())
    }
    return {"per_element": per_element, "per_type": per_type}


def format_breakdown(breakdown: dict[str, dict[str, dict[str, float]]]) -> str:
    """The per-element force table and, with more than one structure type, the per-type table."""
    lines = [f"{'element':<10}{'atoms':>8}{'F MAE':>10}{'F RMSE':>10}  meV/Å"]
    for symbol, row in breakdown["per_element"].items():
        lines.append(f"{symbol:<10}{row['atoms']:>8}{row['forces_mae']:>10.2f}{row['forces_rmse']:>10.2f}")
    if len(breakdown["per_type"]) > 1:
        lines.append(f"{'config_type':<14}{'frames':>7}{'E MAE':>9}{'E RMSE':>9}{'F MAE':>9}{'F RMSE':>9}"
                     f"{'S MAE':>9}  (meV/atom, meV/Å, meV/Å³)")
        for name, row in breakdown["per_type"].items():
            values = "".join(f"{row[k]:>9.2f}" for k in ("energy_mae", "energy_rmse", "forces_mae",
                                                          "forces_rmse", "stress_mae"))
            lines.append(f"{name[:14]:<14}{row['frames']:>7}{values}")
    return "\n".join(lines)


def _as_columns(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-frame predictions → the layout of `write_extxyz` (stress only if every frame has
    one, i.e. every frame is fully periodic)."""
    columns: dict[str, Any] = {
        "energy": np.array([p["energy"] for p in predictions]),
        "forces": [p["forces"] for p in predictions],
    }
    if predictions and all("stress" in p for p in predictions):
        columns["stress"] = np.stack([p["stress"] for p in predictions])
    return columns


def evaluate(
    checkpoint_path: str | Path,
    data_path: str | Path,
    keys=None,
    output_dir: str | Path | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    index: str = ":",
    deployed: Any = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a data file (.xyz/.extxyz, equimd .h5, rMD17 .npz).

    deployed: the model file `checkpoint_path` loaded with `equimd.deploy.load` when it is a
    deployed model rather than a checkpoint (the `equimd evaluate` command does this); it
    runs as loaded (dtype, device) and `batch_size` is not used.

    keys: `equimd.potentials.data.io.DatasetKeys` (label names and units), default keys if None.
    output_dir: where predictions.extxyz and parity.png go (default: next to the checkpoint,
    in eval_<data file stem>/).
    Returns {"metrics": {name: value} (units in `equimd.potentials.train.metrics.UNITS`),
    "num_frames": int, "per_element": ..., "per_type": ... (`error_breakdown`),
    "predictions": path, "parity_plot": path}.
    Raises `UnknownElementError` naming the file, frame, atom and element the model lacks.
    """
    from equimd.potentials.data.io import DatasetKeys, read_configurations, write_extxyz

    checkpoint_path, data_path = Path(checkpoint_path), Path(data_path)
    if deployed is None:
        record = read_checkpoint(checkpoint_path)
        device = check_device(device, option="--device")
        model = model_from_record(record).to(device).eval()
    configs = read_configurations(data_path, keys or DatasetKeys(), index)
    species = deployed.species if deployed is not None else model.species
    for config in configs:  # source: "<file>, frame <index in the file>"
        check_species(config.numbers, species, config.source)
    if deployed is not None:
        predictions, metrics = predict_deployed(deployed, configs)
    else:
        predictions, metrics = predict(
            ForceField(model), configs, model.r_max, model_dtype(model), batch_size, device
        )

    output_dir = Path(output_dir) if output_dir else checkpoint_path.parent / f"eval_{data_path.stem}"
    output_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = output_dir / PREDICTIONS_NAME
    write_extxyz(configs, predictions_path, predictions=_as_columns(predictions))
    reference, predicted = parity_data(configs, predictions)
    plot_path = parity_plot(
        reference, predicted, output_dir / PARITY_NAME, title=f"{checkpoint_path.name} on {data_path.name}"
    )

    breakdown = error_breakdown(configs, predictions)
    print(format_metrics_table(metrics, f"{checkpoint_path} on {data_path} ({len(configs)} frames)"))
    print(format_breakdown(breakdown))
    print(f"predictions: {predictions_path}")
    print(f"parity plot: {plot_path}")
    return {
        "metrics": metrics,
        "num_frames": len(configs),
        **breakdown,
        "predictions": str(predictions_path),
        "parity_plot": str(plot_path),
    }
