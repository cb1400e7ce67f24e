"""Scoring of `bench_accuracy.py`'s cells: every test of a dataset on a checkpoint, and the
end-of-run energy-reference refit for cells trained before the trainer did it.

`data` is a `bench_accuracy.Dataset` (its `tests`, `energy_unit`); the cell folder holds
`result.json` (with the cell's `config`) and `run/best.pt`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def score_tests(checkpoint: Path, data: Any, folder: Path) -> dict[str, Any]:
    """Every test of `data` scored on `checkpoint`'s model (predictions under `folder`)."""
    from equimd.potentials.data.io import DatasetKeys
    from equimd.potentials.train.evaluate import evaluate

    tests = {}
    for test in data.tests:
        evaluation = evaluate(checkpoint, test.file, keys=DatasetKeys(energy_unit=data.energy_unit),
                              output_dir=folder / f"test_{test.label}", batch_size=8, index=test.index)
        tests[test.label] = {"file": test.file.name, "index": test.index, "frames": evaluation["num_frames"],
                             **evaluation["metrics"]}
    return tests


def refit_cell(folder: Path, data: Any, commit: str) -> dict[str, Any]:
    """A cell trained before the trainer refitted the energy reference when a run ends: apply
    that refit (`potentials.train.energy_reference`, on the cell's training frames) to its
    best.pt, written as best_refit.pt, and score the tests again. Returns the cell's result
    with the new scores (the earlier ones as `tests_before_refit`), for the caller to write."""
    import torch

    from equimd.potentials.forcefield import ForceField
    from equimd.potentials.models.serialization import load_model, read_checkpoint
    from equimd.potentials.train.checkpoint import save_checkpoint
    from equimd.potentials.train.config import config_from_dict
    from equimd.potentials.train.distributed import Ranks
    from equimd.potentials.train.energy_reference import (
        energy_reference_correction,
        shift_energy_reference,
    )
    from equimd.potentials.train.trainer import _prepare_data

    result = json.loads((folder / "result.json").read_text())
    config = config_from_dict(result["config"])
    record = read_checkpoint(folder / "run" / "best.pt")
    dtype = getattr(torch, config.training.dtype)
    graphs = _prepare_data(config, record, dtype, Ranks()).train_graphs
    model = load_model(folder / "run" / "best.pt")
    correction = energy_reference_correction(ForceField(model), graphs, model.species,
                                             config.training.batch_size, torch.device("cpu"), dtype)
    for key in ("state_dict", "raw_state_dict"):  # the EMA weights and the raw ones
        model.load_state_dict(record[key])
        shift_energy_reference(model, correction)
        record[key] = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    save_checkpoint(record, folder / "run" / "best_refit.pt")
    result.update(tests_before_refit=result["tests"],
                  tests=score_tests(folder / "run" / "best_refit.pt", data, folder / "refit"),
                  energy_reference_refit={"after_the_run": True, "commit": commit,
                                          "e0_shift_eV": [float(d) for d in correction]})
    return result
