"""The published Matformer crystal graph of a few structures, for tests/test_matformer_graph.py.

Run by the torch-geometric peer venv (bash benchmarks/peers/setup_peers.sh pyg; its
requirements add jarvis-tools) on a snapshot of the authors' code, github.com/YKQ98/Matformer
(not on PyPI):

    .peers/pyg/bin/python benchmarks/peers/make_matformer_graph_fixtures.py --matformer PATH

PATH is a checkout of YKQ98/Matformer or its bare git directory (the file is read from HEAD).
Only `matformer/graphs.py` is loaded, as a module of its own (the package's __init__ and models
need torch-scatter and torch-sparse, which have no wheels for torch 2.9). The graph is the one
its training scripts build: `nearest_neighbor_edges_submit(atoms, cutoff=8, max_neighbors=12,
use_canonize=True, use_lattice=True)` (MatformerConfig's defaults; train_props.py passes
use_lattice=True) and `build_undirected_edgedata`, on jarvis-tools `Atoms`. The structures are
made here (rattled and perfect fcc, bcc, diamond and a triclinic three-element cell); written:
tests/data/matformer_graph_reference.pt (per structure the positions, cell, numbers and the
reference's edge list: source u, target v, displacement r from u to v's image, Å; float64).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "matformer_graph_reference.pt"
CUTOFF, MAX_NEIGHBORS = 8.0, 12


def structures() -> dict[str, tuple[np.ndarray, np.ndarray, list[int]]]:
    """name → (positions [N, 3] Å, cell [3, 3] Å rows, atomic numbers)."""
    from ase.build import bulk

    rng = np.random.default_rng(20261205)
    out = {}

    def add(name: str, atoms, rattle: float) -> None:
        positions = atoms.positions + rng.normal(scale=rattle, size=atoms.positions.shape)
        out[name] = (positions, np.array(atoms.cell), [int(z) for z in atoms.numbers])

    add("fcc_cu_primitive", bulk("Cu", "fcc", a=3.62), 0.0)  # the 12 neighbours are its own images
    add("fcc_cu_conventional", bulk("Cu", "fcc", a=3.62, cubic=True), 0.0)
    add("fcc_cu_rattled", bulk("Cu", "fcc", a=3.62, cubic=True).repeat((2, 1, 1)), 0.08)
    add("bcc_mo", bulk("Mo", "bcc", a=3.16, cubic=True), 0.0)  # 8 + 6 neighbours tie at the 12th
    add("diamond_si_rattled", bulk("Si", "diamond", a=5.43, cubic=True), 0.05)
    cell = np.array([[4.1, 0.0, 0.0], [1.3, 3.9, 0.0], [0.7, -0.9, 4.6]])
    fractional = rng.uniform(size=(6, 3))
    out["triclinic_mixed"] = (fractional @ cell, cell, [3, 29, 42, 29, 3, 14])
    return out


def load_graphs_module(matformer: Path):
    """matformer/graphs.py of the checkout or bare git directory `matformer`, as a module."""
    if (matformer / "matformer" / "graphs.py").is_file():
        source, commit = (matformer / "matformer" / "graphs.py").read_text(), "checkout"
        try:
            commit = subprocess.run(["git", "-C", str(matformer), "rev-parse", "HEAD"],
                                    capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    else:
        git = ["git", f"--git-dir={matformer}"]
        source = subprocess.run(git + ["show", "HEAD:matformer/graphs.py"],
                                capture_output=True, text=True, check=True).stdout
        commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    path = Path(tempfile.mkdtemp()) / "matformer_graphs.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("matformer_graphs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--matformer", type=Path, required=True,
                        help="a checkout of github.com/YKQ98/Matformer or its bare git directory")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)  # build_undirected_edgedata's r takes it
    graphs, commit = load_graphs_module(args.matformer)
    from jarvis.core.atoms import Atoms

    fixtures = {}
    for name, (positions, cell, numbers) in structures().items():
        from ase.data import chemical_symbols

        atoms = Atoms(lattice_mat=cell, coords=positions, elements=[chemical_symbols[z] for z in numbers],
                      cartesian=True)
        edges = graphs.nearest_neighbor_edges_submit(
            atoms=atoms, cutoff=CUTOFF, max_neighbors=MAX_NEIGHBORS, use_canonize=True, use_lattice=True
        )
        u, v, r = graphs.build_undirected_edgedata(atoms, edges)
        fixtures[name] = {
            "positions": torch.tensor(positions),
            "cell": torch.tensor(cell),
            "numbers": torch.tensor(numbers),
            "source": u.long(),
            "target": v.long(),
            "displacement": r.double(),
        }
        print(f"{name}: {len(numbers)} atoms, {len(u)} directed edges", flush=True)
    import jarvis

    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"structures": fixtures, "matformer_commit": commit, "cutoff": CUTOFF,
                "max_neighbors": MAX_NEIGHBORS, "jarvis_tools": jarvis.__version__,
                "python": sys.version.split()[0]}, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
