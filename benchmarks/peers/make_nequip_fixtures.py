"""nequip parity fixtures (tests/data/nequip_*): real nequip 0.19.1 training checkpoints and
`nequip-package` archives, with nequip's energies, forces and stress.

Runs in the nequip peer venv (nequip 0.19.1, e3nn 0.6); the tests never import nequip:

    nice -n 10 .peers/nequip/bin/python benchmarks/peers/make_nequip_fixtures.py [NAME ...]

For every configuration in `CONFIGS` (small, float64, elements H C O) it

1. writes a tiny EMT data set (periodic H/C/O boxes) and a nequip training config,
2. runs `nequip-train` for one epoch (the checkpoint a user has: Lightning `.ckpt`),
3. runs `nequip-package build` on it (the `.nequip.zip` a user is given),
4. loads the packaged model with nequip itself and evaluates it with `NequIPCalculator` on a
   molecule, a triclinic periodic cell and a cell smaller than the cutoff.

Files written:
    tests/data/nequip_<name>.ckpt.gz         the checkpoint, gzip-compressed
    tests/data/nequip_<name>.nequip.zip      the packaged model, without its Python sources and
                                             its `compile` copy (see `shrink_package`)
    tests/data/nequip_<name>_reference.pt    {"format": "nequip-reference", "nequip_version",
        "config": {...}, "structures": [{"name", "positions", "numbers", "cell", "pbc",
        "energy", "energies", "forces", "stress"}]}   (torch.load(weights_only=True))
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import torch
import yaml
from ase.calculators.emt import EMT

ROOT = Path(__file__).resolve().parents[2]
# NEQUIP_FIXTURES_OUT=DIR: write there instead, and keep the full package too (a check that
# equimd reads packages as nequip-package writes them, sources and `compile` copy included)
OUT_DIR = Path(os.environ.get("NEQUIP_FIXTURES_OUT", ROOT / "tests" / "data"))
BIN = Path(sys.executable).parent
TYPE_NAMES = ["H", "C", "O"]

# nequip's defaults except for sizes (fixtures stay small); data statistics from the data set
BASE_MODEL = {
    "_target_": "nequip.model.NequIPGNNModel",
    "seed": 0,
    "model_dtype": "float64",
    "type_names": TYPE_NAMES,
    "r_max": 4.0,
    "num_layers": 3,
    "l_max": 2,
    "num_features": 8,
    "radial_mlp_depth": 1,
    "radial_mlp_width": 16,
    "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
    "per_type_energy_shifts": "${training_data_stats:per_atom_energy_mean}",
    "per_type_energy_scales": "${training_data_stats:forces_rms}",
}
CONFIGS = {
    # nequip-train's defaults (parity, gate, self-connection, scalar scale/shift, fixed Bessel)
    "default": {},
    # the options the issue names: per-type scales/shifts (trainable), trainable Bessel, resnet,
    # other l_max / depth / Bessel count / cutoff p, deeper radial MLP, type-embedding width,
    # per-type average neighbour counts
    "variant": {
        "l_max": 1,
        "num_layers": 4,
        "num_features": 6,
        "type_embed_num_features": 5,
        "radial_mlp_depth": 2,
        "radial_mlp_width": 12,
        "bessel_trainable": True,
        "num_bessels": 6,
        "polynomial_cutoff_p": 5,
        "convnet_resnet": True,
        "per_type_energy_shifts": {"H": -13.6, "C": -1029.4, "O": -2041.9},
        "per_type_energy_scales": {"H": 0.7, "C": 1.3, "O": 2.1},
        "per_type_energy_scales_trainable": True,
        "per_type_energy_shifts_trainable": True,
        "avg_num_neighbors": "${training_data_stats:per_type_num_neighbors_mean}",
    },
    # the defaults with nequip's usual training precision (float32 weights and arithmetic)
    "float32": {"model_dtype": "float32"},
    # as nequip's foundation-model presets: no parity, one feature count per l; an MLP readout
    "noparity": {
        "parity": False,
        "num_features": [8, 6, 4],
        "readout_mlp_hidden_layers_depth": 1,
        "readout_mlp_hidden_layers_width": 10,
    },
}


def training_frames(seed: int = 0) -> list[ase.Atoms]:
    """Periodic H/C/O boxes with EMT energies, forces and stress."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(12):
        symbols = rng.choice(TYPE_NAMES, size=10)
        grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
        sites = grid[rng.permutation(len(grid))[:10]] * 1.6 + rng.normal(0, 0.15, (10, 3))
        atoms = ase.Atoms(symbols, positions=sites, cell=np.eye(3) * 4.8, pbc=True)
        atoms.calc = EMT()
        energy, forces, stress = (
            atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
        )
        atoms.calc = None
        atoms.info["energy"] = energy
        atoms.arrays["forces"] = forces
        atoms.info["stress"] = stress
        frames.append(atoms)
    return frames


def training_config(model: dict, data_file: Path, run_dir: Path) -> dict:
    dataloader = {"_target_": "torch.utils.data.DataLoader", "batch_size": 4}
    return {
        "run": ["train"],
        "seed": 1,
        "hydra": {"run": {"dir": str(run_dir)}},
        "data": {
            "_target_": "nequip.data.datamodule.NequIPDataModule",
            "seed": 1,
            "split_dataset": {
                "dataset": {
                    "_target_": "nequip.data.dataset.ASEDataset",
                    "file_path": str(data_file),
                    "transforms": [
                        {
                            "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                            "model_type_names": TYPE_NAMES,
                            "chemical_species_to_atom_type_map": {t: t for t in TYPE_NAMES},
                        },
                        {
                            "_target_": "nequip.data.transforms.NeighborListTransform",
                            "r_max": model["r_max"],
                        },
                    ],
                },
                "train": 8,
                "val": 4,
            },
            "train_dataloader": dataloader,
            "val_dataloader": dataloader,
            "stats_manager": {
                "_target_": "nequip.data.CommonDataStatisticsManager",
                "type_names": TYPE_NAMES,
            },
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "max_epochs": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "logger": False,
            "callbacks": [
                {
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "dirpath": str(run_dir),
                    "filename": "last",
                    "save_top_k": 1,
                }
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "loss": {
                "_target_": "nequip.train.EnergyForceStressLoss",
                "per_atom_energy": True,
                "coeffs": {"total_energy": 1.0, "forces": 1.0, "stress": 1.0},
            },
            "val_metrics": {
                "_target_": "nequip.train.EnergyForceStressMetrics",
                "coeffs": {"total_energy_mae": 1.0, "forces_mae": 1.0, "stress_mae": 1.0},
            },
            # a large learning rate so that one epoch moves every weight off its initial value
            "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.05},
            "ema_decay": 0.5,
            "model": model,
        },
    }


def test_structures() -> list[tuple[str, ase.Atoms]]:
    rng = np.random.default_rng(7)
    molecule = ase.build.molecule("CH3CH2OH")
    molecule.positions += rng.normal(0, 0.05, molecule.positions.shape)
    triclinic = ase.Atoms(
        "CCOOHHHHCH",
        scaled_positions=rng.random((10, 3)),
        cell=[[5.2, 0.0, 0.0], [1.1, 4.9, 0.0], [-0.7, 0.9, 5.4]],
        pbc=True,
    )
    small = ase.Atoms(
        "COH",
        scaled_positions=[[0.0, 0.0, 0.0], [0.45, 0.5, 0.4], [0.7, 0.2, 0.8]],
        cell=[[2.6, 0.0, 0.0], [0.4, 2.4, 0.0], [0.3, -0.5, 2.8]],
        pbc=True,
    )  # every side shorter than r_max: many images of each atom are neighbours
    return [("molecule", molecule), ("triclinic", triclinic), ("small_cell", small)]


def reference(package: Path, r_max: float) -> list[dict]:
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator
    from nequip.model.saved_models.package import ModelFromPackage

    model = ModelFromPackage(str(package))["sole_model"].eval()
    calc = NequIPCalculator(
        model,
        device="cpu",
        transforms=[
            ChemicalSpeciesToAtomTypeMapper(
                model_type_names=TYPE_NAMES,
                chemical_species_to_atom_type_map={t: t for t in TYPE_NAMES},
            ),
            NeighborListTransform(r_max=r_max),
        ],
    )
    out = []
    for name, atoms in test_structures():
        atoms = atoms.copy()
        atoms.calc = calc
        record = {
            "name": name,
            "positions": torch.tensor(atoms.positions),
            "numbers": torch.tensor(atoms.numbers),
            "cell": torch.tensor(np.asarray(atoms.cell)),
            "pbc": torch.tensor(atoms.pbc),
            "energy": float(atoms.get_potential_energy()),
            "energies": torch.tensor(atoms.get_potential_energies()),
            "forces": torch.tensor(atoms.get_forces()),
        }
        if atoms.pbc.all():
            record["stress"] = torch.tensor(atoms.get_stress())
        out.append(record)
    return out


class _Anything:
    """Accepts any construction / state: used only to scan our own fresh pickle for storages."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()


class _StorageScan(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.keys = set()

    def find_class(self, module, name):
        return _Anything

    def persistent_load(self, pid):
        self.keys.add(str(pid[2]))
        return None


def shrink_package(source: Path, target: Path) -> None:
    """Copy of a `.nequip.zip` without what equimd never reads, so that the fixture is small:
    the packaged Python sources, the `compile` model and its storages, the example data.
    Entries kept are byte-identical (deflate-compressed)."""
    with zipfile.ZipFile(source) as archive:
        names = archive.namelist()
        root = names[0].split("/", 1)[0]
        eager = archive.read(f"{root}/model/eager_model.pkl")
        scan = _StorageScan(io.BytesIO(eager))
        scan.load()
        keep = []
        for entry in names:
            inner = entry.split("/", 1)[1]
            if inner.endswith(".py") or inner.startswith("model/") and inner not in (
                "model/eager_model.pkl", "model/config.yaml", "model/package_metadata.txt"
            ):
                continue
            if inner.startswith(".data/") and inner.endswith(".storage"):
                if inner[len(".data/"):-len(".storage")] not in scan.keys:
                    continue
            keep.append(entry)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
            for entry in keep:
                info = zipfile.ZipInfo(entry, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                out.writestr(info, archive.read(entry))


def make(name: str, overrides: dict) -> None:
    import nequip

    model = dict(BASE_MODEL, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_file = tmp / "train.extxyz"
        ase.io.write(data_file, training_frames())
        run_dir = tmp / "run"
        config = training_config(model, data_file, run_dir)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        env = dict(os.environ, OMP_NUM_THREADS="2")
        subprocess.run(
            [str(BIN / "nequip-train"), "-cp", str(tmp), "-cn", "config"],
            check=True, env=env, cwd=tmp,
        )
        checkpoint = run_dir / "last.ckpt"
        package = tmp / f"nequip_{name}.nequip.zip"
        subprocess.run(
            [str(BIN / "nequip-package"), "build", str(checkpoint), str(package)],
            check=True, env=env, cwd=tmp,
        )
        structures = reference(package, float(model["r_max"]))
        shrink_package(package, OUT_DIR / package.name)
        if "NEQUIP_FIXTURES_OUT" in os.environ:
            shutil.copy(package, OUT_DIR / f"full_{package.name}")
        with open(checkpoint, "rb") as src, gzip.GzipFile(
            OUT_DIR / f"nequip_{name}.ckpt.gz", "wb", mtime=0
        ) as dst:
            shutil.copyfileobj(src, dst)
    config = {k: v for k, v in model.items() if not str(v).startswith("${")}
    torch.save(
        {
            "format": "nequip-reference",
            "format_version": 1,
            "nequip_version": nequip.__version__,
            "config": config,
            "structures": structures,
        },
        OUT_DIR / f"nequip_{name}_reference.pt",
    )
    for path in sorted(OUT_DIR.glob(f"nequip_{name}*")):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB)")


def main(names: list[str]) -> None:
    torch.set_default_dtype(torch.float64)
    for name in names or list(CONFIGS):
        make(name, CONFIGS[name])


if __name__ == "__main__":
    main(sys.argv[1:])
