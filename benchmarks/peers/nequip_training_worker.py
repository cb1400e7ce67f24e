"""Training-throughput worker for the nequip peer (runs in .peers/nequip; never imports
equimd). Used by benchmarks/bench_training.py:

    .peers/nequip/bin/python benchmarks/peers/nequip_training_worker.py --job-json '<job>' \
        --dtype float32 --threads 2 --repeats 10 --warmup 2 --quiet-load 0.15 --max-wait 60

The job (written by bench_training.py) names the extxyz frames (REF_energy eV, REF_forces
eV/Å), the batch size, the model hyperparameters (`kwargs`, `NequIPGNNModel`'s names), the E0s
(nequip's `per_type_energy_shifts`) and the optimisation settings. nequip 0.19's own pieces:
`from_ase`, `NeighborListTransform` and `ChemicalSpeciesToAtomTypeMapper` per frame,
`AtomicDataDict.batched_from_list` as the collate of a shuffled torch DataLoader, and its
`EMALightningModule` (model `NequIPGNNModel`, loss `EnergyForceLoss` with per-atom energy,
optimizer from its `configure_optimizers`: Adam with amsgrad). One timed step is what
Lightning's automatic optimisation does with that module, called directly (no Trainer, so no
logging or callback overhead): `training_step(batch)`, `zero_grad`, `backward`, gradient-norm
clipping, `optimizer_step` (optimizer step + EMA update). Prints one ``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness as bench  # noqa: E402  (benchmarks/harness.py: timing, load, workers)


def main(argv: list[str] | None = None) -> None:
    args, job = bench.job_arguments(__doc__.split("\n")[0], argv)

    import ase.io
    import nequip
    import torch
    from ase.data import atomic_numbers
    from nequip.data import AtomicDataDict, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.train import EMALightningModule
    from nequip.utils.global_state import set_global_state

    set_global_state()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer: nothing to log to
    r_max = float(job["r_max"])
    type_names = sorted(job["e0s"], key=atomic_numbers.get)
    neighbors = NeighborListTransform(r_max=r_max)
    types = ChemicalSpeciesToAtomTypeMapper(model_type_names=type_names)
    dataset = [
        types(
            neighbors(
                from_ase(atoms, key_mapping={"REF_energy": "total_energy", "REF_forces": "forces"})
            )
        )
        for atoms in ase.io.read(job["frames"], index=":")
    ]
    num_edges = sum(int(d[AtomicDataDict.EDGE_INDEX_KEY].shape[1]) for d in dataset)
    num_atoms = sum(int(d[AtomicDataDict.POSITIONS_KEY].shape[0]) for d in dataset)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=job["batch_size"], shuffle=True, drop_last=True,
        collate_fn=AtomicDataDict.batched_from_list, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    training = job["training"]
    module = EMALightningModule(
        ema_decay=training["ema_decay"],
        model={
            "_target_": "nequip.model.NequIPGNNModel", "seed": 0, "model_dtype": job["dtype"],
            "type_names": type_names, "r_max": r_max, "avg_num_neighbors": num_edges / num_atoms,
            "per_type_energy_shifts": {name: job["e0s"][name] for name in type_names},
            **job["kwargs"],
        },
        num_datasets={"train": 1, "val": 0, "test": 0},
        optimizer={"_target_": "torch.optim.Adam", "lr": training["lr"], "amsgrad": True},
        loss={
            "_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True,
            "coeffs": {"total_energy": training["energy_weight"], "forces": training["forces_weight"]},
        },
    )  # fmt: skip
    optimizer = module.configure_optimizers()
    module.train()
    state = {"batches": iter(loader), "index": 0}

    def next_batch():
        try:
            return next(state["batches"])
        except StopIteration:
            state["batches"] = iter(loader)
            return next(state["batches"])

    def step() -> None:
        state["index"] += 1
        loss = module.training_step(next_batch(), state["index"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), training["clip_grad_norm"])
        module.optimizer_step(0, state["index"], optimizer)
        float(loss.detach())

    result = {
        "implementation": "nequip",
        "version": nequip.__version__,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "edges": num_edges / len(dataset),
    }
    bench.emit_measurement(result, step, args, frames_per_call=job["batch_size"])


if __name__ == "__main__":
    main()
