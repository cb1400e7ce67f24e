"""Accuracy for a fixed training budget: NequIP on rMD17 aspirin.

    python benchmarks/bench_aspirin.py [--minutes 20] [--device auto] [--dtype float64]
                                       [--test-stride 1] [--out runs/bench_aspirin]

Protocol: rMD17 split 01 (`rmd17_aspirin_train_01.npz`): the first 950 frames train, the last
50 validate; energies and forces converted from kcal/mol to eV. NequIP with its default
hyperparameters (equimd's `NequIP` constructor defaults: r_max 5 Å, l_max 2, 32 features,
4 layers) and the default training settings of `TrainingConfig` (Adam, lr 0.01, batch 5,
EMA 0.99, loss weights energy/atom 1, forces 100), trained for a fixed wall-clock budget.
The best checkpoint (lowest validation loss, EMA weights) is then evaluated on
`rmd17_aspirin_test_01.npz` — all 1000 frames, or every `--test-stride`-th frame (stated in
the result line). Reported: energy MAE per molecule (meV, the usual rMD17 number) and per atom
(meV/atom), force MAE (meV/Å). Writes `<out>/result.json`.

The budget is for training only (data loading and neighbor lists included, final evaluation
excluded). Results depend on the hardware: on CPU a 20-minute budget is far too short for the
default model to converge; state the device when quoting numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "rmd17"


def build_config(args: argparse.Namespace):
    from equimd.potentials.train.config import config_from_dict

    train_file = args.data_dir / "rmd17_aspirin_train_01.npz"
    return config_from_dict(
        {
            "data": {
                "train": str(train_file),
                "train_index": ":950",
                "valid": str(train_file),
                "valid_index": "950:1000",
                "energy_unit": "kcal/mol",
            },
            "model": {"model_type": "nequip"},
            "training": {
                "epochs": 100_000,  # the wall-clock budget ends the run
                "max_wall_time": 60.0 * args.minutes,
                "device": args.device,
                "dtype": args.dtype,
                "seed": args.seed,
            },
            "output": {"run_dir": str(args.out / "run"), "overwrite": True},
        }
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget (default 20)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-stride", type=int, default=1, help="evaluate every k-th test frame")
    parser.add_argument("--batch-size", type=int, default=16, help="evaluation batch size")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_aspirin"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from equimd.potentials.data.io import DatasetKeys
    from equimd.potentials.train.evaluate import evaluate
    from equimd.potentials.train.trainer import resolve_device, train

    config = build_config(args)
    started = time.monotonic()
    result = train(config, progress=not args.no_progress)
    training_time = time.monotonic() - started

    test_file = args.data_dir / "rmd17_aspirin_test_01.npz"
    evaluation = evaluate(
        result.best_checkpoint,
        test_file,
        keys=DatasetKeys(energy_unit="kcal/mol"),
        output_dir=args.out / "test",
        batch_size=args.batch_size,
        device=str(resolve_device(args.device)),
        index=f"::{args.test_stride}",
    )
    metrics = evaluation["metrics"]
    num_atoms = 21
    frames = evaluation["num_frames"]
    subsample = "all test_01 frames" if args.test_stride == 1 else f"every {args.test_stride}th test_01 frame"
    summary = {
        "benchmark": "rMD17 aspirin, split 01, 950 train / 50 valid",
        "model": "nequip (default hyperparameters)",
        "device": str(resolve_device(args.device)),
        "dtype": args.dtype,
        "budget_minutes": args.minutes,
        "training_seconds": round(training_time, 1),
        "epochs": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "test_frames": frames,
        "test_subsample": subsample,
        "energy_mae_meV": metrics["energy_total_mae"],
        "energy_mae_meV_per_atom": metrics["energy_mae"],
        "forces_mae_meV_per_A": metrics["forces_mae"],
        "forces_rmse_meV_per_A": metrics["forces_rmse"],
        "validation": result.final_metrics,
        "checkpoint": str(result.best_checkpoint),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "result.json"
    json_path.write_text(json.dumps(summary, indent=2))
    print(
        f"RESULT aspirin rMD17: energy MAE {metrics['energy_total_mae']:.1f} meV "
        f"({metrics['energy_mae']:.2f} meV/atom, {num_atoms} atoms), force MAE "
        f"{metrics['forces_mae']:.1f} meV/Å on {frames} test frames ({subsample}); "
        f"{result.epochs_completed} epochs in {args.minutes:g} min on {summary['device']} "
        f"({args.dtype})"
    )
    print(f"wrote {json_path}")
    return summary


if __name__ == "__main__":
    main()
