"""Pickled mace-torch `.model` fixtures (tests/data/mace_pickle_*), one per architecture option.

Runs in the mace-torch peer venv (mace-torch 0.3.16, e3nn 0.4.4); the tests never import mace:

    nice -n 10 .peers/mace/bin/python benchmarks/peers/make_mace_pickle_fixtures.py [NAME ...]

For every configuration in `CONFIGS` (small: 8 channels, elements H C O Cu, float64) it builds
the mace-torch model with seeded, perturbed weights (every parameter ±50 % of its RMS, as in
make_mace_fixtures.py), writes

    tests/data/mace_pickle_<name>.model.gz    `torch.save(model)` — the `.model` file a user
                                              has — gzip-compressed (its coupling bases are
                                              mostly zeros)
    tests/data/mace_pickle_checkpoint.pt.gz   a mace training checkpoint ({"model": state_dict,
                                              "optimizer", "lr_scheduler"}) of the mp_medium
                                              architecture with other weights
    tests/data/mace_pickle_<name>_reference.pt  mace's energy, node energies, forces and stress
                                              on a molecule, a triclinic periodic cell and a
                                              cell smaller than the cutoff (one list per head);
                                              for "chebyshev" also mace's energies at positions
                                              displaced by ± fd_step · fd_direction

Reference layout (torch.load(path, weights_only=True)):
    {"format": "mace-torch-reference", "format_version": 1, "mace_version", "config": {...},
     "z_table": [...], "r_max": float, "heads": [...],
     "structures": {head: [{"name", "positions", "numbers", "cell", "pbc", "energy",
                            "node_energy", "forces", "stress"? (periodic only), "num_edges"}]}}
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path
from typing import Any

import mace  # noqa: F401  isort: skip
import ase
import ase.build
import numpy as np
import torch
from mace import data as mace_data
from mace import modules
from mace.__version__ import __version__ as mace_version
from mace.tools import torch_geometric
from mace.tools.checkpoint import CheckpointBuilder, CheckpointState
from mace.tools.utils import AtomicNumberTable
from mace_build import mace_kwargs

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "data"
Z_TABLE = [1, 6, 8, 29]
ATOMIC_ENERGIES = [-13.587, -1029.41, -2041.96, -1306.45]

BASE = dict(
    r_max=4.5,
    num_bessel=6,
    num_polynomial_cutoff=5,
    max_ell=2,
    correlation=2,
    num_interactions=2,
    hidden_irreps="8x0e+8x1o",
    MLP_irreps="4x0e",
    radial_MLP=[12, 12],
    interaction="RealAgnosticResidualInteractionBlock",
    interaction_first="RealAgnosticResidualInteractionBlock",
    avg_num_neighbors=7.3,
    atomic_inter_scale=0.871,
    atomic_inter_shift=-0.137,
    model_class="ScaleShiftMACE",
    seed=11,
)
CONFIGS: dict[str, dict[str, Any]] = {
    # MACE-MP-0 small / medium / large hidden irreps (scaled down to 8 channels)
    "mp_small": dict(BASE, hidden_irreps="8x0e", max_ell=3, correlation=3, seed=1),
    "mp_medium": dict(BASE, seed=2),
    "mp_large": dict(BASE, hidden_irreps="8x0e+8x1o+8x2e", seed=3),
    # mace's default first layer (non-residual), plain MACE (no scale/shift)
    "plain": dict(
        BASE, model_class="MACE", interaction_first="RealAgnosticInteractionBlock", seed=4
    ),
    "gaussian": dict(BASE, radial_type="gaussian", seed=5),
    # mace's Chebyshev basis T_n(r) of the length in Å (not scaled by r_max) grows like (2r)^n:
    # the radial MLP's first layer is divided by T_n(3 Å) per basis function so that energies
    # stay O(10^3) eV; mace's energies at displaced positions show its forces are not -dE/dr
    "chebyshev": dict(
        BASE, radial_type="chebyshev", seed=6, rescale_chebyshev=3.0, finite_differences=True
    ),
    "agnesi": dict(BASE, distance_transform="Agnesi", seed=7),
    "soft": dict(BASE, distance_transform="Soft", seed=8),
    "zbl": dict(BASE, pair_repulsion=True, seed=9),
    "multihead": dict(BASE, heads=["pt_head", "water"], seed=10),
    "density": dict(BASE, interaction="RealAgnosticDensityResidualInteractionBlock", seed=12),
    # MACE-MPA-0 / MACE-OMAT-0's combination: density-normalised interactions (non-residual
    # first), ZBL pair repulsion, Agnesi distance transform
    "mpa": dict(
        BASE,
        interaction_first="RealAgnosticDensityInteractionBlock",
        interaction="RealAgnosticDensityResidualInteractionBlock",
        pair_repulsion=True,
        distance_transform="Agnesi",
        seed=14,
    ),
    # MACE-OMAT-0 medium (and the MATPES models fine-tuned from it), built the way mace-torch's
    # own training command builds it: mace's argument parser, `check_args` and
    # `tools.model_script_utils.configure_model` given the architecture flags of the published
    # training script (ACEsuit/mace-foundations mace_omat/mace-omat-medium.sh: --model MACE,
    # density interactions, ZBL, Agnesi, 128x0e+128x1o, 2 interactions, r_max 6, mean 0, std 1;
    # every other architecture flag at mace-torch's default: max_ell 3, correlation 3, 8 Bessel
    # functions, radial MLP [64, 64, 64], MLP_irreps 16x0e). Only the width is scaled down (8
    # channels) and the elements are the fixtures' four. MACE-MPA-0 medium has the same blocks
    # (trained with --model ScaleShiftMACE: the "mpa" configuration above).
    "omat": dict(
        BASE,
        seed=18,
        r_max=6.0,
        cli=[
            "--model=MACE",
            "--interaction_first=RealAgnosticDensityInteractionBlock",
            "--interaction=RealAgnosticDensityResidualInteractionBlock",
            "--hidden_irreps=8x0e + 8x1o",
            "--mean=0.0",
            "--std=1.0",
            "--num_interactions=2",
            "--r_max=6.0",
            "--pair_repulsion",
            "--distance_transform=Agnesi",
            "--default_dtype=float64",
        ],
    ),
    # MACE-OFF's layout: non-residual first layer, max_ell 3, correlation 3, r_max 5 (small)
    "off": dict(
        BASE,
        hidden_irreps="8x0e+8x1o",
        max_ell=3,
        correlation=3,
        r_max=5.0,
        interaction_first="RealAgnosticInteractionBlock",
        radial_MLP=[8, 8, 8],
        seed=15,
    ),
    # a float32 model file (mace-torch's default_dtype float32)
    "float32": dict(BASE, seed=17, dtype="float32"),
    # a training checkpoint (weights only) of the mp_medium architecture, other weights
    "checkpoint": dict(BASE, seed=13, checkpoint=True),
}


def build_model_with_mace_cli(cfg: dict[str, Any]) -> torch.nn.Module:
    """The model `mace_run_train` builds from the flags `cfg["cli"]` (before training)."""
    from mace.tools import build_default_arg_parser, check_args
    from mace.tools.model_script_utils import configure_model

    args = build_default_arg_parser().parse_args(
        ["--name=fixture", "--train_file=none.xyz", *cfg["cli"]]
    )
    args, _ = check_args(args)
    args.avg_num_neighbors = cfg["avg_num_neighbors"]  # run_train: from the training set
    # what run_train sets for an energy model before configure_model
    args.compute_energy, args.compute_dipole, args.compute_polarizability = True, False, False
    model, _ = configure_model(
        args,
        None,
        np.array([ATOMIC_ENERGIES]),  # run_train: dict_to_array, [heads, elements]
        heads=["Default"],
        z_table=AtomicNumberTable(Z_TABLE),
    )
    return model


def build_model(cfg: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(cfg["seed"])
    if cfg.get("cli"):
        model = build_model_with_mace_cli(cfg)
        return _perturb(model, cfg["seed"])
    heads = cfg.get("heads")
    energies = np.array(ATOMIC_ENERGIES)
    if heads:
        energies = np.stack([energies + 0.37 * k for k in range(len(heads))])
    kwargs = dict(
        mace_kwargs(
            cfg, Z_TABLE, energies, cfg["avg_num_neighbors"], gate=torch.nn.functional.silu
        ),
        radial_type=cfg.get("radial_type", "bessel"),
        distance_transform=cfg.get("distance_transform", "None"),
        pair_repulsion=cfg.get("pair_repulsion", False),
        heads=heads,
    )
    if cfg["model_class"] == "ScaleShiftMACE":
        n = len(heads) if heads else 1
        scale = [cfg["atomic_inter_scale"] * (1 + 0.2 * k) for k in range(n)]
        shift = [cfg["atomic_inter_shift"] + 0.05 * k for k in range(n)]
        model = modules.ScaleShiftMACE(
            atomic_inter_scale=scale if heads else scale[0],
            atomic_inter_shift=shift if heads else shift[0],
            **kwargs,
        )
    else:
        model = modules.MACE(**kwargs)
    model = _perturb(model, cfg["seed"])
    if cfg.get("rescale_chebyshev"):
        x = torch.tensor(float(cfg["rescale_chebyshev"]), dtype=torch.float64)
        n = torch.arange(1, cfg["num_bessel"] + 1, dtype=torch.float64)
        size = torch.cosh(n * torch.acosh(x))  # T_n(x) for x > 1
        with torch.no_grad():
            for interaction in model.interactions:
                for mlp in (interaction.conv_tp_weights, getattr(interaction, "density_fn", None)):
                    if mlp is not None:
                        layer = mlp.layer0
                        layer.weight.div_(size.to(layer.weight.dtype).unsqueeze(-1))
    return model


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter ±50 % of its RMS (no weight keeps an initialisation pattern)."""
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for param in model.parameters():
            rms = param.pow(2).mean().sqrt().item() if param.numel() else 0.0
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.add_(noise * (0.5 * rms if rms > 0 else 0.3))
    return model.eval()


def structures() -> list[tuple[str, ase.Atoms]]:
    """A molecule, a triclinic periodic cell, a cell smaller than the cutoff, a slab."""
    rng = np.random.default_rng(1601)
    molecule = ase.build.molecule("CH3OH")
    molecule.rattle(0.05, seed=1)
    cell = np.array([[5.1, 0.0, 0.0], [0.9, 4.8, 0.0], [-0.6, 0.7, 5.3]])
    numbers = [1, 1, 1, 6, 6, 8, 8, 29, 1, 8]
    fractions = rng.uniform(0, 1, size=(len(numbers), 3))
    box = ase.Atoms(numbers, scaled_positions=fractions, cell=cell, pbc=True)
    # push apart atoms closer than 0.9 Å (minimum image): a few relaxation-free retries
    for _ in range(200):
        d = box.get_all_distances(mic=True) + np.eye(len(box)) * 9
        if d.min() > 0.9:
            break
        i = int(np.argmin(d.min(axis=1)))
        box.positions[i] = rng.uniform(0, 1, size=3) @ cell
    small = ase.build.bulk("Cu", "fcc", a=3.61)
    small.set_cell(small.cell @ (np.eye(3) + 0.05 * rng.normal(size=(3, 3))), scale_atoms=True)
    small = small * (2, 1, 1)
    small.numbers[1] = 8
    small.rattle(0.05, seed=3)
    slab = ase.build.fcc111("Cu", size=(2, 2, 2), a=3.61, vacuum=4.0)
    ase.build.add_adsorbate(slab, "O", 1.5, "fcc")
    slab.rattle(0.05, seed=4)
    slab.pbc = (True, True, False)
    return [
        ("molecule_CH3OH", molecule),
        ("triclinic_box", box),
        ("cell_below_cutoff", small),
        ("slab_TTF", slab),
    ]


def evaluate(model: torch.nn.Module, atoms: ase.Atoms, r_max: float, heads, head) -> dict:
    z_table = AtomicNumberTable(Z_TABLE)
    config = mace_data.config_from_atoms(atoms, head_name=head)
    graph = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max, heads=heads)
    batch = torch_geometric.Batch.from_data_list([graph])
    periodic = bool(np.all(atoms.pbc))
    out = model(batch.to_dict(), training=False, compute_force=True, compute_stress=periodic)
    result = {
        "positions": torch.tensor(atoms.positions),
        "numbers": torch.tensor(atoms.numbers, dtype=torch.int64),
        "cell": torch.tensor(np.array(atoms.cell)),
        "pbc": torch.tensor(atoms.pbc),
        "energy": out["energy"].detach()[0].clone(),
        "node_energy": out["node_energy"].detach().clone(),
        "forces": out["forces"].detach().clone(),
        "num_edges": int(graph["edge_index"].shape[1]),
    }
    if periodic:
        result["stress"] = out["stress"].detach()[0].clone()
    return result


def finite_differences(
    model: torch.nn.Module, atoms: ase.Atoms, r_max: float, heads, head, step: float = 1e-4
) -> dict:
    """mace's energies at positions ± step · d for one random unit direction d [n, 3]: the
    central difference (E+ - E-) / (2 step) is -Σ F·d for conservative forces F."""
    generator = np.random.default_rng(len(atoms))
    direction = generator.normal(size=(len(atoms), 3))
    direction /= np.linalg.norm(direction)
    energies = []
    for sign in (1.0, -1.0):
        displaced = atoms.copy()
        displaced.positions = atoms.positions + sign * step * direction
        energies.append(evaluate(model, displaced, r_max, heads, head)["energy"])
    return {
        "fd_direction": torch.tensor(direction),
        "fd_step": step,
        "fd_energies": torch.stack(energies),
    }


def main(names: list[str]) -> int:
    for name in names or list(CONFIGS):
        cfg = CONFIGS[name]
        torch.set_default_dtype(getattr(torch, cfg.get("dtype", "float64")))
        model = build_model(cfg)
        heads = cfg.get("heads") or ["Default"]
        buffer = io.BytesIO()
        if cfg.get("checkpoint"):  # what mace's training loop writes (tools/checkpoint.py)
            optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.99)
            state = CheckpointState(model, optimizer, scheduler)
            torch.save(CheckpointBuilder.create_checkpoint(state), buffer)
            model_path = OUT_DIR / f"mace_pickle_{name}.pt.gz"
        else:
            torch.save(model, buffer)
            model_path = OUT_DIR / f"mace_pickle_{name}.model.gz"
        model_path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
        frames = {}
        for head in heads:
            frames[head] = []
            for label, atoms in structures():
                frame = evaluate(model, atoms, cfg["r_max"], heads, head)
                frame["name"] = label
                if cfg.get("finite_differences"):
                    frame.update(finite_differences(model, atoms, cfg["r_max"], heads, head))
                frames[head].append(frame)
        reference = {
            "format": "mace-torch-reference",
            "format_version": 1,
            "mace_version": mace_version,
            "config": {k: v for k, v in cfg.items()},
            "z_table": Z_TABLE,
            "r_max": cfg["r_max"],
            "heads": heads,
            "structures": frames,
        }
        ref_path = OUT_DIR / f"mace_pickle_{name}_reference.pt"
        torch.save(reference, ref_path)
        torch.load(ref_path, weights_only=True)
        print(
            f"{name}: {model_path.name} {model_path.stat().st_size / 1e3:.0f} kB "
            f"(raw {len(buffer.getvalue()) / 1e3:.0f} kB), {ref_path.name} "
            f"{ref_path.stat().st_size / 1e3:.0f} kB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
