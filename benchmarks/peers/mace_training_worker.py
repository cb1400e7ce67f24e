"""Training-throughput worker for the mace-torch peer (runs in .peers/mace; never imports
equimd). Used by benchmarks/bench_training.py:

    .peers/mace/bin/python benchmarks/peers/mace_training_worker.py --job-json '<job>' \
        --dtype float32 --threads 2 --repeats 10 --warmup 2 --quiet-load 0.15 --max-wait 60

The job (written by bench_training.py) names the extxyz frames (REF_energy eV, REF_forces
eV/Å), the batch size, the model hyperparameters (`kwargs`, ScaleShiftMACE's names), the E0s and
the optimisation settings. mace-torch's own pieces: its data pipeline (`config_from_atoms`,
`AtomicData.from_config`, the `torch_geometric` DataLoader, shuffled), `ScaleShiftMACE` with
avg_num_neighbors and the scale/shift from its own `compute_avg_num_neighbors` /
`compute_mean_rms_energy_forces`, `WeightedEnergyForcesLoss`, AMSGrad (`torch.optim.Adam`,
amsgrad=True, one parameter group), `torch_ema.ExponentialMovingAverage`, and one call of
`mace.tools.train.take_step` (forward with training=True, loss, backward, clipping, optimizer
step, EMA update) per timed step, on the next batch of its DataLoader. Prints one
``BENCH_RESULT {json}`` line with frames/s.
"""

from __future__ import annotations

import sys
from pathlib import Path

# mace before e3nn (torch >= 2.6 with e3nn 0.4.4; see setup_peers.sh)
import mace  # noqa: F401  isort: skip

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness as bench  # noqa: E402  (benchmarks/harness.py: timing, load, workers)


def main(argv: list[str] | None = None) -> None:
    args, job = bench.job_arguments(__doc__.split("\n")[0], argv)

    import ase.io
    import numpy as np
    import torch
    from ase.data import atomic_numbers
    from mace import data as mace_data
    from mace import modules
    from mace.__version__ import __version__ as mace_version
    from mace.tools import torch_geometric
    from mace.tools.train import take_step
    from mace.tools.utils import AtomicNumberTable
    from mace_build import scale_shift_mace
    from torch_ema import ExponentialMovingAverage

    dtype = getattr(torch, job["dtype"])
    torch.set_default_dtype(dtype)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frames = ase.io.read(job["frames"], index=":")
    z_table = AtomicNumberTable(sorted(atomic_numbers[s] for s in job["e0s"]))
    keys = mace_data.KeySpecification(
        info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"}
    )
    configs = [mace_data.config_from_atoms(atoms, key_specification=keys) for atoms in frames]
    cutoff = float(job["r_max"])
    dataset = [mace_data.AtomicData.from_config(c, z_table=z_table, cutoff=cutoff) for c in configs]
    loader = torch_geometric.dataloader.DataLoader(
        dataset, batch_size=job["batch_size"], shuffle=True, drop_last=True
    )
    e0s = np.array([job["e0s"][s] for s in sorted(job["e0s"], key=atomic_numbers.get)])
    mean, rms = modules.compute_mean_rms_energy_forces(loader, e0s)
    cfg = job["kwargs"]
    model = scale_shift_mace(
        {**cfg, "r_max": cutoff}, z_table.zs, e0s, modules.compute_avg_num_neighbors(loader),
        float(np.asarray(rms).reshape(-1)[0]), float(np.asarray(mean).reshape(-1)[0]),
        reduced_cg=None,  # mace-torch's own default, as its training CLI builds it
    ).to(dtype)  # fmt: skip
    training = job["training"]
    loss_fn = modules.WeightedEnergyForcesLoss(
        energy_weight=training["energy_weight"], forces_weight=training["forces_weight"]
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=training["lr"], amsgrad=True)
    ema = ExponentialMovingAverage(model.parameters(), decay=training["ema_decay"])
    output_args = {"energy": True, "forces": True, "virials": False, "stress": False}
    device = torch.device("cpu")
    state = {"batches": iter(loader)}

    def next_batch():
        try:
            return next(state["batches"])
        except StopIteration:
            state["batches"] = iter(loader)
            return next(state["batches"])

    def step() -> None:
        model.train()
        take_step(
            model, loss_fn, next_batch(), optimizer, ema, output_args,
            training["clip_grad_norm"], device,
        )  # fmt: skip

    result = {
        "implementation": "mace",
        "version": mace_version,
        "parameters": sum(p.numel() for p in model.parameters()),
        "edges": sum(int(d.edge_index.shape[1]) for d in dataset) / len(dataset),
    }
    bench.emit_measurement(result, step, args, frames_per_call=job["batch_size"])


if __name__ == "__main__":
    main()
