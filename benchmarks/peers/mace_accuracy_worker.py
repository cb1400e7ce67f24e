"""Equal-budget accuracy worker for the mace-torch peer (runs in .peers/mace; never imports
equimd). Used by benchmarks/bench_accuracy.py (`benchmarks/peer_cells.py` writes the job):

    .peers/mace/bin/python benchmarks/peers/mace_accuracy_worker.py --job-json '<job>'

Trains mace-torch's MACE on the job's training frames for `cpu_budget_s` CPU seconds with
mace_run_train's default recipe, built from mace-torch's own pieces: its data pipeline
(`config_from_atoms`, `AtomicData.from_config`, its DataLoader, shuffled), E0s by
`compute_average_E0s` (least squares), avg_num_neighbors by `compute_avg_num_neighbors`, scale
by `compute_mean_rms_energy_forces` (model "MACE": `ScaleShiftMACE` with shift 0), parameter
groups by `get_params_options` (weight decay on the interactions' linears and the products),
AMSGrad, `torch_ema.ExponentialMovingAverage`, `WeightedEnergyForcesLoss`, one
`mace.tools.train.take_step` per batch, `mace.tools.train.evaluate` on the validation frames
with the averaged weights after every epoch, ReduceLROnPlateau on that loss, and Stage Two
(energy weight 1000, lr 1e-3) from 3/4 of the budget. The stopping rules and the choice of
the best weights are `budget_loop.train_for_budget`'s (the same as equimd's trainer).

Predicts every test file with the best averaged weights; `budget_loop.write_outcome` writes
the predictions and the report.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

# mace before e3nn (torch >= 2.6 with e3nn 0.4.4; see setup_peers.sh)
import mace  # noqa: F401  isort: skip

sys.path.insert(0, str(Path(__file__).resolve().parent))  # budget_loop, mace_build
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness (standard library only)


def main(argv: list[str] | None = None) -> None:
    from budget_loop import train_for_budget, write_outcome
    from harness import job_parser

    job = json.loads(job_parser(__doc__.split("\n")[0]).parse_args(argv).job_json)
    import ase.io
    import numpy as np
    import torch
    from mace import data as mace_data
    from mace import modules
    from mace.__version__ import __version__ as mace_version
    from mace.data.utils import compute_average_E0s
    from mace.tools import torch_geometric
    from mace.tools.scripts_utils import get_params_options
    from mace.tools.train import evaluate, take_step
    from mace.tools.utils import AtomicNumberTable
    from mace_build import scale_shift_mace
    from torch_ema import ExponentialMovingAverage

    started_cpu = time.process_time()
    training = job["training"]
    dtype = getattr(torch, training["dtype"])
    torch.set_default_dtype(dtype)
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    keys = mace_data.KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"})

    def configs(path: str) -> list:
        return [mace_data.config_from_atoms(a, key_specification=keys) for a in ase.io.read(path, index=":")]

    train_configs, valid_configs = configs(job["train"]), configs(job["valid"])
    z_table = AtomicNumberTable(sorted({int(z) for c in train_configs + valid_configs for z in c.atomic_numbers}))
    r_max = float(job["r_max"])

    def loader(frames: list, batch_size: int, shuffle: bool):
        dataset = [mace_data.AtomicData.from_config(c, z_table=z_table, cutoff=r_max) for c in frames]
        return torch_geometric.dataloader.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                                     drop_last=shuffle)

    train_loader = loader(train_configs, training["batch_size"], True)
    valid_loader = loader(valid_configs, training["valid_batch_size"], False)
    e0_by_z = compute_average_E0s(train_configs, z_table)
    e0s = np.array([e0_by_z[z] for z in z_table.zs])
    _, rms = modules.compute_mean_rms_energy_forces(train_loader, e0s)
    model = scale_shift_mace(
        {**job["kwargs"], "r_max": r_max}, z_table.zs, e0s, modules.compute_avg_num_neighbors(train_loader),
        float(np.asarray(rms).reshape(-1)[0]), 0.0, reduced_cg=None,
    ).to(dtype)  # fmt: skip
    options = argparse.Namespace(lr=training["lr"], weight_decay=training["weight_decay"], amsgrad=True,
                                 beta=0.9, lr_params_factors="{}", freeze=None)
    optimizer = torch.optim.Adam(**get_params_options(options, model))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=training["scheduler_factor"], patience=training["scheduler_patience"])
    ema = ExponentialMovingAverage(model.parameters(), decay=training["ema_decay"])
    state = {"loss": modules.WeightedEnergyForcesLoss(training["energy_weight"], training["forces_weight"]),
             "stage_two": False}
    output_args = {"energy": True, "forces": True, "virials": False, "stress": False}
    device = torch.device("cpu")

    def step(batch) -> float:
        model.train()
        loss, _ = take_step(model, state["loss"], batch, optimizer, ema, output_args,
                            training["clip_grad_norm"], device)
        return float(loss)

    def validate() -> float:
        model.eval()
        with ema.average_parameters():
            loss, _ = evaluate(model, state["loss"], valid_loader, output_args, device)
        return float(loss)

    def snapshot():
        with ema.average_parameters():
            return copy.deepcopy(model.state_dict())

    def end_of_epoch(loss: float) -> None:
        if not state["stage_two"]:
            scheduler.step(loss)

    def stage_two() -> None:
        state["stage_two"] = True
        state["loss"] = modules.WeightedEnergyForcesLoss(training["stage_two_energy_weight"],
                                                         training["stage_two_forces_weight"])
        for group in optimizer.param_groups:
            group["lr"] = training["stage_two_lr"]
        print(f"stage two: energy weight {training['stage_two_energy_weight']}, lr {training['stage_two_lr']}",
              flush=True)

    result = train_for_budget(
        lambda: train_loader, step, validate, snapshot, job["cpu_budget_s"], started_cpu=started_cpu,
        end_of_epoch=end_of_epoch, stage_two=stage_two, stage_two_fraction=training["stage_two_fraction"],
        log=lambda line: print(line, flush=True),
    )  # fmt: skip
    model.load_state_dict(result.best_state)
    model.eval()
    predictions = {}
    for label, path in job["tests"].items():
        energies, forces, n_atoms = [], [], []
        for batch in loader(configs(path), training["valid_batch_size"], False):
            output = model(batch.to_dict(), training=False, compute_force=True)
            energies.append(output["energy"].detach().double().numpy())
            forces.append(output["forces"].detach().double().numpy())
            n_atoms.append(np.diff(batch.ptr.numpy()))
        predictions[label] = (np.concatenate(energies), np.concatenate(forces), np.concatenate(n_atoms))
    write_outcome(
        job, predictions, result, implementation="mace-torch", version=mace_version, torch=torch.__version__,
        parameters=sum(p.numel() for p in model.parameters()),
        e0s={int(z): float(e) for z, e in e0_by_z.items()},
    )  # fmt: skip


if __name__ == "__main__":
    main()
