"""Benchmark worker for the mace-torch peer (runs in .peers/mace; never imports equimd).

Used by benchmarks/bench_mace.py. Two commands, each printing one ``BENCH_RESULT {json}`` line:

    .peers/mace/bin/python benchmarks/peers/mace_bench_worker.py make \
        --config-json '{"hidden_irreps": "128x0e", ...}' --system water --out DIR
        builds a seeded float64 ScaleShiftMACE for the system's elements and writes
        DIR/mace.model (the pickled module, as mace-torch saves it) and DIR/export.pt
        (`mace_export.py`'s format, which equimd imports: same weights on both sides)

    .peers/mace/bin/python benchmarks/peers/mace_bench_worker.py time \
        --model DIR/mace.model --system water --dtype float32 --threads 2 --repeats 20 ...
        times energy + forces of the model alone (mace's own neighbor list and data
        pipeline, built beforehand) with the measurement code of `harness.measure`

The structures are `harness.SYSTEMS` (the same as equimd's worker).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# mace before e3nn (torch >= 2.6 with e3nn 0.4.4; see setup_peers.sh)
import mace  # noqa: F401  isort: skip

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as bench  # noqa: E402  (benchmarks/harness.py: systems, timing, workers)

MAKE_DEFAULTS = dict(
    r_max=6.0,
    num_bessel=8,
    num_polynomial_cutoff=5,
    max_ell=3,
    correlation=3,
    num_interactions=2,
    hidden_irreps="128x0e",
    MLP_irreps="16x0e",
    radial_MLP=[64, 64, 64],
    interaction_first="RealAgnosticResidualInteractionBlock",
    interaction="RealAgnosticResidualInteractionBlock",
    seed=0,
)


def _graph(atoms, r_max: float, z_table: list[int]) -> dict:
    """mace's data pipeline: config → AtomicData → Batch, as a dict (default dtype)."""
    from mace import data as mace_data
    from mace.tools import torch_geometric
    from mace.tools.utils import AtomicNumberTable

    config = mace_data.config_from_atoms(atoms)
    graph = mace_data.AtomicData.from_config(
        config, z_table=AtomicNumberTable(z_table), cutoff=r_max
    )
    return torch_geometric.Batch.from_data_list([graph]).to_dict()


def make(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from mace_build import scale_shift_mace
    from mace_export import export_model, save_export

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(args.threads)
    cfg = {**MAKE_DEFAULTS, **json.loads(args.config_json)}
    atoms = bench.SYSTEMS[args.system]()
    # the model's elements: the config's (e.g. MACE-MP-0's 89), else the system's
    z_table = sorted(cfg.get("atomic_numbers") or {int(z) for z in atoms.numbers})
    batch = _graph(atoms, cfg["r_max"], z_table)
    num_edges = int(batch["edge_index"].shape[1])
    torch.manual_seed(cfg["seed"])
    model = scale_shift_mace(
        cfg, z_table, np.linspace(-10.0, -5.0, len(z_table)), num_edges / len(atoms), 1.1, 0.05
    ).eval()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model, out_dir / "mace.model")
    save_export(export_model(model, drop_coupling_buffers=True), str(out_dir / "export.pt"))
    # the float64 energy, a cross-check of the import; skipped for the 2048-atom system, where
    # mace-torch's float64 forward alone needs more than 17 GB
    energy = None
    if len(atoms) <= 1000:
        energy = float(model(batch, training=False, compute_force=False)["energy"][0])
    return {
        "implementation": "mace",
        "model": str(out_dir / "mace.model"),
        "export": str(out_dir / "export.pt"),
        "atoms": len(atoms),
        "edges": num_edges,
        "energy_float64": energy,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def time_model(args: argparse.Namespace) -> dict:
    import torch
    from mace.__version__ import __version__ as mace_version

    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    torch.set_num_threads(args.threads)
    model = torch.load(args.model, map_location="cpu", weights_only=False).to(dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    atoms = bench.SYSTEMS[args.system]()
    z_table = [int(z) for z in model.atomic_numbers]
    batch = _graph(atoms, float(model.r_max), z_table)

    def evaluate() -> None:
        model(batch, training=False, compute_force=True)["forces"].sum().item()

    out = model(batch, training=False, compute_force=True)
    result = {
        "implementation": "mace",
        "version": mace_version,
        "atoms": len(atoms),
        "edges": int(batch["edge_index"].shape[1]),
        "energy": float(out["energy"][0]),
    }
    result.update(
        bench.measure(evaluate, args.repeats, args.warmup, args.quiet_load, args.max_wait)
    )
    result["peak_rss_mb"] = round(bench.peak_rss_mb(), 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("make", "time"))
    parser.add_argument("--config-json", default="{}", help="make: ScaleShiftMACE arguments")
    parser.add_argument("--out", default="bench_out/mace_model", help="make: output directory")
    parser.add_argument("--model", help="time: the mace.model file written by make")
    parser.add_argument("--system", required=True, choices=sorted(bench.SYSTEMS))
    bench.add_timing_arguments(parser)
    args = parser.parse_args(argv)
    bench.emit(make(args) if args.command == "make" else time_model(args))


if __name__ == "__main__":
    main()
