"""The peers' cells of `bench_accuracy.py`: mace-torch's MACE and nequip's NequIP trained on
the same frames, for the same CPU budget, with each code's recommended recipe, at the size of
equimd's example config of that model, and tested on the same frames with equimd's metrics.

A peer cell runs in the peer's own venv (`.peers/mace`, `.peers/nequip`; made by
`benchmarks/peers/setup_peers.sh`): this module writes the cell's frames as extxyz
(`REF_energy` eV, `REF_forces` eV/Å; the training and validation frames of equimd's split of
the same data section, and each test selection), a job JSON, runs
`benchmarks/peers/<peer>_accuracy_worker.py`, and computes the test metrics from the
predictions it writes (`predictions_<test>.npz`) with the functions of `equimd evaluate`.

The recipes (each code's documented defaults for training from scratch; what differs from
them is said):
- mace-torch 0.3.16 (`mace_run_train` defaults, model "MACE"): AMSGrad, lr 0.01, weight decay
  5e-7, EMA 0.99, `WeightedEnergyForcesLoss` energy 1 / forces 100, ReduceLROnPlateau
  (factor 0.8, patience 50), gradient clipping 10, float64, E0s "average" (least squares),
  scale = RMS of the forces, shift 0, and its Stage Two (`--swa`) from 3/4 of the budget: energy
  weight 1000, forces 100, lr 1e-3. Batch size 5 (mace's default is 10; 5 as in its
  small-molecule examples and equimd's config).
- nequip 0.19.1 (`configs/tutorial.yaml`): `EMALightningModule` with EMA 0.999,
  `EnergyForceLoss` (per-atom energy) 1 / forces 1, Adam lr 0.01, ReduceLROnPlateau (factor
  0.6, patience 5, threshold 0.2) on validation E MAE + F MAE, batch 5, model_dtype float32,
  avg_num_neighbors / per-type energy scales (forces RMS per type) / shifts (mean energy per
  atom) from the training frames, as the tutorial's `training_data_stats`; no ZBL term.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import ROOT, peer_python, write_labelled_extxyz

# size of each peer's model = equimd's example config of the same model (examples/train_*.yaml)
PEERS: dict[str, dict[str, Any]] = {
    "mace-torch": {
        "venv": "mace", "worker": "mace_accuracy_worker.py",
        "kwargs": {"num_bessel": 8, "num_polynomial_cutoff": 5, "max_ell": 3, "correlation": 3,
                   "num_interactions": 2, "hidden_irreps": "128x0e+128x1o", "MLP_irreps": "16x0e",
                   "radial_MLP": [64, 64, 64],
                   "interaction_first": "RealAgnosticResidualInteractionBlock",
                   "interaction": "RealAgnosticResidualInteractionBlock"},
        "training": {"batch_size": 5, "valid_batch_size": 10, "lr": 0.01, "weight_decay": 5e-7,
                     "ema_decay": 0.99, "energy_weight": 1.0, "forces_weight": 100.0,
                     "scheduler_factor": 0.8, "scheduler_patience": 50, "clip_grad_norm": 10.0,
                     "stage_two_fraction": 0.75, "stage_two_energy_weight": 1000.0,
                     "stage_two_forces_weight": 100.0, "stage_two_lr": 1e-3, "dtype": "float64"},
    },
    "nequip-0.19": {
        "venv": "nequip", "worker": "nequip_accuracy_worker.py",
        "kwargs": {"l_max": 2, "num_features": 32, "num_layers": 4, "parity": True, "num_bessels": 8,
                   "bessel_trainable": False, "polynomial_cutoff_p": 6, "radial_mlp_depth": 2,
                   "radial_mlp_width": 64},
        "training": {"batch_size": 5, "valid_batch_size": 10, "lr": 0.01, "ema_decay": 0.999,
                     "energy_weight": 1.0, "forces_weight": 1.0, "scheduler_factor": 0.6,
                     "scheduler_patience": 5, "scheduler_threshold": 0.2, "min_lr": 1e-6,
                     "dtype": "float32"},
    },
}


def is_peer(model: str) -> bool:
    return model in PEERS


def peer_missing(model: str) -> str | None:
    """Why the peer cannot run here (None: it can)."""
    python = peer_python(PEERS[model]["venv"])
    if not python.exists():
        return f"{python} is missing: bash benchmarks/peers/setup_peers.sh {PEERS[model]['venv']}"
    return None


def test_metrics(configs: list, predictions: Path) -> dict[str, float]:
    """equimd's test metrics (`equimd.potentials.train.metrics.UNITS`) of a peer's predictions."""
    from equimd.potentials.train.evaluate import mae_rmse, parity_data

    stored = np.load(predictions)
    offsets = np.concatenate([[0], np.cumsum(stored["n_atoms"])])
    frames = [{"energy": float(stored["energy"][k]), "forces": stored["forces"][offsets[k]:offsets[k + 1]]}
              for k in range(len(stored["energy"]))]
    if len(frames) != len(configs):
        raise RuntimeError(f"{predictions}: {len(frames)} frames predicted, {len(configs)} in the test")
    reference, predicted = parity_data(configs, frames)
    energy_per_atom = predicted["energy"] - reference["energy"]
    n_atoms = np.array([c.n_atoms for c in configs], dtype=float)
    energy_total = energy_per_atom * n_atoms
    forces = predicted["forces"] - reference["forces"]
    return {**mae_rmse([energy_per_atom], "energy"), **mae_rmse([energy_total], "energy_total"),
            **mae_rmse([forces], "forces")}


def run_peer_cell(model: str, data, budget_s: float, threads: int, folder: Path) -> dict[str, Any]:
    """Train and test one peer cell; returns the fields of its result.json that describe the
    run (the caller adds the common ones)."""
    from equimd.potentials.data.io import read_configurations
    from equimd.potentials.train.config import config_from_dict
    from equimd.potentials.train.data import dataset_keys, read_split

    missing = peer_missing(model)
    if missing:
        raise SystemExit(f"bench_accuracy: {model}: {missing}")
    peer = PEERS[model]
    config = config_from_dict({"data": dict(data.data)})
    split = read_split(config.data, seed=0)  # equimd's split of the same data section (seed 0)
    files = folder / "frames"
    tests, test_configs = {}, {}
    for test in data.tests:
        configs = read_configurations(test.file, dataset_keys(config.data), test.index)
        test_configs[test.label] = configs
        tests[test.label] = str(write_labelled_extxyz(configs, files / f"test_{test.label}.xyz"))
    job = {
        "train": str(write_labelled_extxyz(split.train, files / "train.xyz")),
        "valid": str(write_labelled_extxyz(split.valid, files / "valid.xyz")),
        "tests": tests,
        "r_max": 5.0, "kwargs": peer["kwargs"],
        "training": {**peer["training"], **{k: v for k, v in data.training.items() if k == "batch_size"}},
        "cpu_budget_s": budget_s, "threads": threads, "seed": 0, "out": str(folder / "peer"),
    }
    (folder / "peer").mkdir(parents=True, exist_ok=True)
    command = [str(peer_python(peer["venv"])), str(ROOT / "benchmarks" / "peers" / peer["worker"]),
               "--job-json", json.dumps(job)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("PYTHONPATH", None)
    wall = time.monotonic()
    completed = subprocess.run(command, env=env, cwd=ROOT)
    if completed.returncode != 0:
        raise SystemExit(f"bench_accuracy: {model} worker failed (exit {completed.returncode})")
    report = json.loads((folder / "peer" / "peer_result.json").read_text())
    metrics = {}
    for test in data.tests:
        configs = test_configs[test.label]
        metrics[test.label] = {"file": test.file.name, "index": test.index, "frames": len(configs),
                               **test_metrics(configs, folder / "peer" / f"predictions_{test.label}.npz")}
    return {
        "cpu_s": report["cpu_s"], "wall_s": round(time.monotonic() - wall, 1), "epochs": report["epochs"],
        "best_epoch": report["best_epoch"], "stop_reason": report["stop_reason"],
        "validation": {"loss": report["best_loss"]}, "tests": metrics,
        "config": {"peer": report["implementation"], "version": report["version"],
                   "parameters": report["parameters"], "job": job},
        "torch": report["torch"], "history": report["history"],
    }


if __name__ == "__main__":
    sys.exit("peer_cells.py is used by bench_accuracy.py")
