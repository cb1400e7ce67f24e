"""Generate the mace-torch parity fixtures in tests/data/ (runs in the MACE peer venv).

Regenerate all of them with one command from the repository root:

    bash benchmarks/peers/setup_peers.sh mace && \
        nice -n 10 .peers/mace/bin/python benchmarks/peers/make_mace_fixtures.py

(about two minutes on a quiet 2-core machine). Deterministic for a given mace-torch/e3nn/torch version: every
random number comes from a seeded generator. Writes

    tests/data/mace_<name>_model.pt       the model, in mace_export.py's format (weights_only
                                          loadable, no mace needed), U_matrix_* buffers dropped
    tests/data/mace_<name>_reference.pt   >= 50 structures with mace's energies, forces, stress
    tests/data/mace_contraction_reference.pt   the symmetric contraction alone (products.0 of
                                          each model): mace's coupling bases U (sparse COO),
                                          random inputs, mace's outputs and input gradients

for two float64 ScaleShiftMACE configurations (`CONFIGS`): "scalar" (hidden 32x0e,
non-residual first interaction as mace's default) and "vector" (hidden 64x0e+64x1o, residual
interactions everywhere as in MACE-MP). The scalar model has 32 channels (MACE-MP-0 small's
layout with a quarter of its width) so that its file stays under 2 MiB. After construction every parameter is perturbed with
seeded noise (±50 % of its RMS), so that no weight keeps an initialisation pattern a wrong
implementation could get right by accident (mace-torch 0.3.16 has no all-zero parameter at
initialisation for these configurations; its contraction weights start at N(0,1)/num_paths),
and the script checks that energy and forces depend on every parameter tensor.

Reference file layout (torch.load(path, weights_only=True)):
    {"format": "mace-torch-reference", "format_version": 1, "mace_version", "model_file",
     "z_table": [1, 6, 7, 8, 29], "r_max": float, "dtype": "float64",
     "structures": [ {"name": str, "category": str,
        "positions": [n,3] Å, "numbers": [n] int64, "cell": [3,3] Å (rows are lattice
        vectors; may be nonzero for non-periodic frames, then it must be ignored),
        "pbc": [3] bool, "energy": [] eV, "interaction_energy": [] eV (energy minus Σ E0),
        "node_energy": [n] eV (E0 + scale·Σ_layers readout + shift), "forces": [n,3] eV/Å,
        "stress": [3,3] eV/Å³ (only when all pbc; ASE sign convention),
        "stress_voigt": [6] (xx yy zz yz xz xy), "num_edges": int (mace's directed edges),
        "node_feats": [n, d] (first few structures only: concatenated product outputs of all
        layers, e3nn layout; odd-l components flip sign with the edge-vector convention)} ]}
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

# mace before e3nn (see setup_peers.sh).
import mace  # noqa: F401  isort: skip
import ase
import ase.build
import ase.io
import numpy as np
import torch
from ase.stress import full_3x3_to_voigt_6_stress
from e3nn import o3
from mace import data as mace_data
from mace import modules
from mace.__version__ import __version__ as mace_version
from mace.modules.irreps_tools import reshape_irreps
from mace.tools import torch_geometric
from mace.tools.utils import AtomicNumberTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mace_build import scale_shift_mace  # noqa: E402
from mace_export import export_model, save_export  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "data"
# the shared datasets beside the repository, or EQUIMD_DATA
DATA_3BPA = Path(os.environ.get("EQUIMD_DATA", ROOT.parent / "shared" / "data")) / "3bpa" / "train_300K.xyz"

Z_TABLE = [1, 6, 7, 8, 29]  # H C N O Cu: one-hot / element index order
# Non-trivial reference energies (eV), roughly DFT magnitudes, all different.
ATOMIC_ENERGIES = [-13.587, -1029.41, -1484.87, -2041.96, -1306.45]

COMMON = dict(
    max_ell=3,
    correlation=3,
    num_interactions=2,
    num_bessel=8,
    num_polynomial_cutoff=5,
    MLP_irreps="16x0e",
    radial_MLP=[64, 64, 64],
    gate="silu",
)
CONFIGS: dict[str, dict[str, Any]] = {
    "scalar": dict(
        COMMON,
        hidden_irreps="32x0e",
        r_max=5.0,
        interaction="RealAgnosticResidualInteractionBlock",
        interaction_first="RealAgnosticInteractionBlock",
        avg_num_neighbors=11.37,
        atomic_inter_scale=0.8734,
        atomic_inter_shift=-0.4213,
        seed=1234,
    ),
    "vector": dict(
        COMMON,
        hidden_irreps="64x0e+64x1o",
        r_max=6.0,
        interaction="RealAgnosticResidualInteractionBlock",
        interaction_first="RealAgnosticResidualInteractionBlock",
        avg_num_neighbors=17.92,
        atomic_inter_scale=1.3517,
        atomic_inter_shift=0.2871,
        seed=5678,
    ),
}
NUM_NODE_FEATS_STRUCTURES = 4  # store intermediate node features for the first few frames


def build_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """A float64 ScaleShiftMACE with seeded weights, every parameter perturbed."""
    torch.manual_seed(cfg["seed"])
    model = scale_shift_mace(
        cfg, Z_TABLE, np.array(ATOMIC_ENERGIES), cfg["avg_num_neighbors"],
        cfg["atomic_inter_scale"], cfg["atomic_inter_shift"], gate=modules.gate_dict[cfg["gate"]],
    )  # e3nn generalized-CG basis (what mace uses whenever cuequivariance is absent)
    generator = torch.Generator().manual_seed(cfg["seed"] + 1)
    with torch.no_grad():
        for param in model.parameters():
            rms = param.pow(2).mean().sqrt().item() if param.numel() else 0.0
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.add_(noise * (0.5 * rms if rms > 0 else 0.3))
    return model.eval()


# ---------------------------------------------------------------------------- structures


def _random_cell(rng: np.random.Generator, lengths: tuple[float, float], skew: float) -> np.ndarray:
    """Rows a, b, c: random lengths, off-diagonal skew (a triclinic cell), det > 0."""
    cell = np.diag(rng.uniform(*lengths, size=3))
    cell += skew * rng.uniform(-1.0, 1.0, size=(3, 3)) * cell.diagonal().mean()
    if np.linalg.det(cell) < 0:
        cell[2] *= -1
    return cell


def _random_positions(
    rng: np.random.Generator, cell: np.ndarray, n: int, min_dist: float, pbc: bool
) -> np.ndarray:
    """n points uniform in the cell, at least min_dist apart (minimum image if pbc)."""
    points: list[np.ndarray] = []
    for _ in range(10000):
        if len(points) == n:
            return np.array(points)
        candidate = rng.uniform(0, 1, size=3) @ cell
        if points:
            probe = ase.Atoms(
                "H" * (len(points) + 1), positions=[*points, candidate], cell=cell, pbc=pbc
            )
            if probe.get_distances(len(points), list(range(len(points))), mic=pbc).min() < min_dist:
                continue
        points.append(candidate)
    if len(points) == n:
        return np.array(points)
    raise RuntimeError(f"cannot place {n} points {min_dist} Å apart in cell {cell.tolist()}")


def make_structures() -> list[tuple[str, str, ase.Atoms]]:
    """(name, category, atoms): >= 50 frames, isolated and periodic, H C N O Cu."""
    rng = np.random.default_rng(20261124)
    out: list[tuple[str, str, ase.Atoms]] = []

    # 3BPA frames: isolated 27-atom molecule (C H N O); the file's 50 Å box has pbc=F.
    frames = ase.io.read(DATA_3BPA, index=":200:10")
    for i, atoms in enumerate(frames):
        atoms = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        out.append((f"3bpa_{i * 10}", "isolated_3bpa", atoms))

    # Small isolated molecules, an isolated atom (no edges), a pair beyond the cutoff.
    for formula in ["H2O", "CH4", "NH3", "CO2", "HCN"]:
        atoms = ase.build.molecule(formula)
        atoms.rattle(0.05, seed=len(out))
        out.append((f"molecule_{formula}", "isolated_molecule", atoms))
    out.append(("atom_Cu", "isolated_atom", ase.Atoms("Cu", positions=[[0.1, -0.2, 0.3]])))
    out.append(
        ("pair_OH_far", "isolated_far_pair", ase.Atoms("OH", positions=[[0, 0, 0], [0, 0, 6.5]]))
    )

    # Water boxes: random molecule orientations, cubic and triclinic.
    water = ase.build.molecule("H2O")
    for i, (n_mol, skew) in enumerate([(4, 0.0), (6, 0.08), (8, 0.12), (5, 0.2)]):
        edge = (32.0 * n_mol) ** (1 / 3)  # ~ liquid water density
        cell = _random_cell(rng, (0.95 * edge, 1.05 * edge), skew)
        centers = _random_positions(rng, cell, n_mol, 2.5, pbc=True)
        atoms = ase.Atoms(cell=cell, pbc=True)
        for center in centers:
            mol = water.copy()
            mol.rotate(rng.uniform(0, 360), rng.normal(size=3))
            mol.translate(center)
            atoms += mol
        atoms.rattle(0.03, seed=100 + i)
        out.append((f"water_box_{i}", "periodic_water", atoms))

    # Random H/C/N/O boxes (triclinic), and boxes with all five elements.
    for i in range(8):
        cell = _random_cell(rng, (4.5, 7.0), 0.15)
        n = int(rng.integers(6, 17))
        numbers = rng.choice([1, 6, 7, 8], size=n)
        positions = _random_positions(rng, cell, n, 0.95, pbc=True)
        out.append(
            (f"hcno_box_{i}", "periodic_hcno", ase.Atoms(numbers, positions, cell=cell, pbc=True))
        )
    for i in range(3):
        cell = _random_cell(rng, (5.0, 7.0), 0.15)
        numbers = np.concatenate([[1, 6, 7, 8, 29, 29], rng.choice(Z_TABLE, size=6)])
        positions = _random_positions(rng, cell, len(numbers), 1.1, pbc=True)
        out.append(
            (f"mixed_box_{i}", "periodic_mixed", ase.Atoms(numbers, positions, cell=cell, pbc=True))
        )

    # Triclinic Cu cells: strained/skewed fcc primitive (1 atom, cell << r_max),
    # conventional (4 atoms) and small supercells, rattled.
    a_cu = 3.61
    bases = [
        ("prim", ase.build.bulk("Cu", "fcc", a=a_cu)),
        ("conv", ase.build.bulk("Cu", "fcc", a=a_cu, cubic=True)),
        ("prim211", ase.build.bulk("Cu", "fcc", a=a_cu) * (2, 1, 1)),
        ("prim222", ase.build.bulk("Cu", "fcc", a=a_cu) * (2, 2, 2)),
    ]
    for i in range(16):
        label, base = bases[i % len(bases)]
        atoms = base.copy()
        strain = np.eye(3) + 0.08 * rng.normal(size=(3, 3))
        atoms.set_cell(atoms.cell @ strain, scale_atoms=True)
        atoms.rattle(0.08, seed=200 + i)
        out.append((f"cu_{label}_{i}", "periodic_cu_triclinic", atoms))

    # Cu slabs with adsorbates, periodic in x, y only.
    for i in range(2):
        slab = ase.build.fcc111("Cu", size=(2, 2, 2), a=a_cu, vacuum=5.0)
        ase.build.add_adsorbate(slab, "O" if i == 0 else "H", 1.4 + 0.2 * i, "fcc")
        slab.rattle(0.05, seed=300 + i)
        slab.pbc = (True, True, False)
        out.append((f"cu_slab_{i}", "slab_pbc_TTF", slab))
    return out


# ---------------------------------------------------------------------------- evaluation


def evaluate(model: torch.nn.Module, atoms: ase.Atoms, r_max: float) -> dict[str, Any]:
    """mace's own data pipeline (config_from_atoms → AtomicData → Batch) and forward."""
    z_table = AtomicNumberTable(Z_TABLE)
    config = mace_data.config_from_atoms(atoms)
    graph = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max)
    batch = torch_geometric.Batch.from_data_list([graph])
    periodic = bool(np.all(atoms.pbc))
    out = model(batch.to_dict(), training=False, compute_force=True, compute_stress=periodic)
    result = {
        "energy": out["energy"].detach()[0].clone(),
        "interaction_energy": out["interaction_energy"].detach()[0].clone(),
        "node_energy": out["node_energy"].detach().clone(),
        "forces": out["forces"].detach().clone(),
        "num_edges": int(graph["edge_index"].shape[1]),
        "node_feats": out["node_feats"].detach().clone(),
    }
    if periodic:
        stress = out["stress"].detach()[0].clone()
        result["stress"] = stress
        result["stress_voigt"] = torch.tensor(full_3x3_to_voigt_6_stress(stress.numpy()))
    return result


def check_every_parameter_matters(model: torch.nn.Module, atoms: ase.Atoms, r_max: float) -> None:
    """The energy (and forces) of a frame with all elements depend on every parameter tensor."""
    z_table = AtomicNumberTable(Z_TABLE)
    graph = mace_data.AtomicData.from_config(
        mace_data.config_from_atoms(atoms), z_table=z_table, cutoff=r_max
    )
    batch = torch_geometric.Batch.from_data_list([graph])
    out = model(batch.to_dict(), training=True, compute_force=True)
    objective = out["energy"].sum() + out["forces"].pow(2).sum()
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    inert = [n for n, g in zip(names, grads, strict=True) if g is None or g.abs().max() == 0]
    if inert:
        raise RuntimeError(f"parameters with no effect on energy/forces: {inert}")
    zero = [n for n, p in zip(names, params, strict=True) if p.numel() and p.abs().max() == 0]
    if zero:
        raise RuntimeError(f"all-zero parameters: {zero}")


def _sparse(u: torch.Tensor) -> dict[str, Any]:
    """A (mostly zero) coupling basis as COO: int16 indices, float64 values, shape."""
    indices = u.nonzero()
    return {
        "indices": indices.to(torch.int16),
        "values": u[tuple(indices.T)].clone(),
        "shape": list(u.shape),
    }


def contraction_reference(name: str, model: torch.nn.Module) -> dict[str, Any]:
    """mace's SymmetricContraction of products.0 on random inputs, with its U bases."""
    contraction = model.products[0].symmetric_contractions
    irreps_in = o3.Irreps(str(contraction.irreps_in))
    generator = torch.Generator().manual_seed(4242)
    num_nodes = 2 * len(Z_TABLE)
    node_features = torch.randn(num_nodes, irreps_in.dim, generator=generator, dtype=torch.float64)
    species = torch.arange(num_nodes) % len(Z_TABLE)
    one_hot = torch.nn.functional.one_hot(species, len(Z_TABLE)).to(torch.float64)
    node_features.requires_grad_(True)
    x = reshape_irreps(irreps_in)(node_features)  # [n, channels, (lmax+1)^2]
    output = contraction(x, one_hot)
    probe = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    (input_grad,) = torch.autograd.grad((output * probe).sum(), node_features)
    bases = {}
    for k, sub in enumerate(contraction.contractions):
        for nu in range(1, sub.correlation + 1):
            bases[f"contractions.{k}.U_matrix_{nu}"] = _sparse(getattr(sub, f"U_matrix_{nu}"))
    return {
        "model_file": f"mace_{name}_model.pt",
        "state_dict_prefix": "products.0.symmetric_contractions.",
        "irreps_in": str(irreps_in),
        "irreps_out": str(contraction.irreps_out),
        "correlation": model.products[0].symmetric_contractions.contractions[0].correlation,
        "num_elements": len(Z_TABLE),
        "node_features": node_features.detach(),  # [n, irreps_in.dim], e3nn layout
        "species": species,  # [n] element index (z_table order)
        "output": output.detach(),  # [n, irreps_out.dim], e3nn layout
        "probe": probe,  # [n, irreps_out.dim]
        "input_grad": input_grad,  # d(Σ output·probe)/d node_features
        "U": bases,
    }


def main() -> int:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    structures = make_structures()
    contraction_refs = {}
    for name, cfg in CONFIGS.items():
        model = build_model(cfg)
        mixed = next(atoms for _, cat, atoms in structures if cat == "periodic_mixed")
        check_every_parameter_matters(model, mixed, cfg["r_max"])

        exported = export_model(model, drop_coupling_buffers=True)
        exported["hyperparameters"]["seed"] = cfg["seed"]
        model_path = OUT_DIR / f"mace_{name}_model.pt"
        save_export(exported, str(model_path))

        frames = []
        for i, (frame_name, category, atoms) in enumerate(structures):
            result = evaluate(model, atoms, cfg["r_max"])
            if i >= NUM_NODE_FEATS_STRUCTURES:
                del result["node_feats"]
            frames.append(
                {
                    "name": frame_name,
                    "category": category,
                    "positions": torch.tensor(atoms.positions),
                    "numbers": torch.tensor(atoms.numbers, dtype=torch.int64),
                    "cell": torch.tensor(np.array(atoms.cell)),
                    "pbc": torch.tensor(atoms.pbc, dtype=torch.bool),
                    **result,
                }
            )
        reference = {
            "format": "mace-torch-reference",
            "format_version": 1,
            "mace_version": mace_version,
            "model_file": model_path.name,
            "z_table": Z_TABLE,
            "r_max": cfg["r_max"],
            "dtype": "float64",
            "structures": frames,
        }
        reference_path = OUT_DIR / f"mace_{name}_reference.pt"
        torch.save(reference, reference_path)
        torch.load(reference_path, weights_only=True)
        contraction_refs[name] = contraction_reference(name, model)
        energies = torch.stack([f["energy"] for f in frames])
        print(
            f"[{name}] {len(frames)} structures, energy {energies.min():.3f}..{energies.max():.3f} eV,"
            f" max |F| {max(f['forces'].abs().max().item() for f in frames):.3f} eV/Å"
        )
        print(f"  wrote {model_path} ({model_path.stat().st_size / 1e6:.2f} MB)")
        print(f"  wrote {reference_path} ({reference_path.stat().st_size / 1e6:.2f} MB)")

    contraction_path = OUT_DIR / "mace_contraction_reference.pt"
    torch.save(
        {
            "format": "mace-torch-contraction-reference",
            "format_version": 1,
            "mace_version": mace_version,
            "configs": contraction_refs,
        },
        contraction_path,
    )
    torch.load(contraction_path, weights_only=True)
    print(f"  wrote {contraction_path} ({contraction_path.stat().st_size / 1e6:.2f} MB)")
    assert math.isfinite(float(energies.sum()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
