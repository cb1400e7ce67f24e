"""Equal-budget accuracy worker for the nequip peer (runs in .peers/nequip; never imports
equimd). Used by benchmarks/bench_accuracy.py (`benchmarks/peer_cells.py` writes the job):

    .peers/nequip/bin/python benchmarks/peers/nequip_accuracy_worker.py --job-json '<job>'

Trains nequip 0.19's NequIP on the job's training frames for `cpu_budget_s` CPU seconds with
the recipe of nequip's `configs/tutorial.yaml`, built from nequip's own pieces: `from_ase`,
`NeighborListTransform`, `ChemicalSpeciesToAtomTypeMapper`, `AtomicDataDict.batched_from_list`
as the collate of a shuffled DataLoader, and its `EMALightningModule` (`NequIPGNNModel`,
`EnergyForceLoss` with per-atom energy, Adam) driven as Lightning's automatic optimisation
does (`training_step`, backward, `optimizer_step` with the EMA update; no gradient clipping,
as the tutorial), validation with the EMA weights (`on_validation_start`/`_end` swap them in
and out) after every epoch on the tutorial's monitored metric, total-energy MAE + force MAE
(eV, eV/Å), and ReduceLROnPlateau (factor 0.6, patience 5, threshold 0.2, min_lr 1e-6) on it.
The tutorial's `training_data_stats` are computed here from the training frames with their
definitions: avg_num_neighbors = edges / atoms, per-type energy scales = RMS of the force
components of each type, per-type energy shifts = the mean energy per atom. No ZBL term (the
other codes have none). The stopping rules and the choice of the best weights are
`budget_loop.train_for_budget`'s (the same as equimd's trainer).

Predicts every test file with the best EMA weights; `budget_loop.write_outcome` writes the
predictions and the report.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # budget_loop
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness (standard library only)


def main(argv: list[str] | None = None) -> None:
    from budget_loop import train_for_budget, write_outcome
    from harness import job_parser

    job = json.loads(job_parser(__doc__.split("\n")[0]).parse_args(argv).job_json)
    import ase.io
    import nequip
    import numpy as np
    import torch
    from ase.data import chemical_symbols
    from nequip.data import AtomicDataDict, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.train import EMALightningModule
    from nequip.utils.global_state import set_global_state

    started_cpu = time.process_time()
    set_global_state()
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer: nothing to log to
    training = job["training"]
    r_max = float(job["r_max"])
    frames = {name: ase.io.read(job[name], index=":") for name in ("train", "valid")}
    numbers = sorted({int(z) for atoms in frames["train"] + frames["valid"] for z in atoms.numbers})
    type_names = [chemical_symbols[z] for z in numbers]
    neighbors = NeighborListTransform(r_max=r_max)
    types = ChemicalSpeciesToAtomTypeMapper(model_type_names=type_names)

    def dataset(atoms_list: list) -> list:
        keys = {"REF_energy": "total_energy", "REF_forces": "forces"}
        return [types(neighbors(from_ase(atoms, key_mapping=keys))) for atoms in atoms_list]

    train, valid = dataset(frames["train"]), dataset(frames["valid"])
    edges = sum(int(d[AtomicDataDict.EDGE_INDEX_KEY].shape[1]) for d in train)
    atoms_count = sum(len(a) for a in frames["train"])
    forces = np.concatenate([a.arrays["REF_forces"] for a in frames["train"]])
    species = np.concatenate([a.numbers for a in frames["train"]])
    scales = {chemical_symbols[z]: float(np.sqrt((forces[species == z] ** 2).mean())) for z in numbers}
    shift = float(np.mean([a.info["REF_energy"] / len(a) for a in frames["train"]]))
    module = EMALightningModule(
        ema_decay=training["ema_decay"],
        model={
            "_target_": "nequip.model.NequIPGNNModel", "seed": job["seed"], "model_dtype": training["dtype"],
            "type_names": type_names, "r_max": r_max, "avg_num_neighbors": edges / atoms_count,
            "per_type_energy_scales": scales, "per_type_energy_shifts": {n: shift for n in type_names},
            "per_type_energy_scales_trainable": False, "per_type_energy_shifts_trainable": False,
            **job["kwargs"],
        },
        num_datasets={"train": 1, "val": 0, "test": 0},
        optimizer={"_target_": "torch.optim.Adam", "lr": training["lr"]},
        loss={
            "_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True,
            "coeffs": {"total_energy": training["energy_weight"], "forces": training["forces_weight"]},
        },
    )  # fmt: skip
    optimizer = module.configure_optimizers()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=training["scheduler_factor"], patience=training["scheduler_patience"],
        threshold=training["scheduler_threshold"], min_lr=training["min_lr"])
    generator = torch.Generator().manual_seed(job["seed"])
    train_loader = torch.utils.data.DataLoader(
        train, batch_size=training["batch_size"], shuffle=True, drop_last=True,
        collate_fn=AtomicDataDict.batched_from_list, generator=generator)
    counter = {"step": 0}

    def step(batch) -> float:
        module.train()
        counter["step"] += 1
        loss = module.training_step(batch, counter["step"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        module.optimizer_step(0, counter["step"], optimizer)
        return float(loss.detach())

    def predict(data: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Energies [frames], forces [atoms, 3] and atom counts with the weights in the model."""
        module.eval()
        energies, forces, counts = [], [], []
        for start in range(0, len(data), training["valid_batch_size"]):
            chunk = data[start:start + training["valid_batch_size"]]
            output = module(AtomicDataDict.batched_from_list(chunk))
            energies.append(output[AtomicDataDict.TOTAL_ENERGY_KEY].detach().double().reshape(-1).numpy())
            forces.append(output[AtomicDataDict.FORCE_KEY].detach().double().numpy())
            counts.append(np.array([int(d[AtomicDataDict.POSITIONS_KEY].shape[0]) for d in chunk]))
        return np.concatenate(energies), np.concatenate(forces), np.concatenate(counts)

    valid_energy = np.array([d[AtomicDataDict.TOTAL_ENERGY_KEY].double().item() for d in valid])
    valid_forces = np.concatenate([d[AtomicDataDict.FORCE_KEY].double().numpy() for d in valid])

    def validate() -> float:
        module.on_validation_start()  # EMA weights in
        try:
            energy, forces_predicted, _ = predict(valid)
        finally:
            module.on_validation_end()
        return float(np.abs(energy - valid_energy).mean() + np.abs(forces_predicted - valid_forces).mean())

    def snapshot():
        module.on_validation_start()
        try:
            return copy.deepcopy(module.model.state_dict())
        finally:
            module.on_validation_end()

    def end_of_epoch(loss: float) -> None:
        scheduler.step(loss)
        module.loss.reset()  # the running loss of the epoch, as on_train_epoch_end

    result = train_for_budget(
        lambda: train_loader, step, validate, snapshot, job["cpu_budget_s"], started_cpu=started_cpu,
        end_of_epoch=end_of_epoch, log=lambda line: print(line, flush=True),
    )  # fmt: skip
    module.model.load_state_dict(result.best_state)
    predictions = {label: predict(dataset(ase.io.read(path, index=":"))) for label, path in job["tests"].items()}
    write_outcome(job, predictions, result, implementation="nequip", version=nequip.__version__,
                  torch=torch.__version__, parameters=sum(p.numel() for p in module.model.parameters()))


if __name__ == "__main__":
    main()
