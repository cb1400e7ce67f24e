"""The metadata stored in every deployed model file (``extra/metadata.json``) and its checks.

This module imports nothing from `potentials` (nor torch): a deployed model is read without
the training stack. The schema is documented in docs/deploy.md; in short::

    {"format": "equimd-model", "format_version": 1, "kind": "torchscript" | "aoti",
     "species": {"numbers": [1, 8], "symbols": ["H", "O"]}, "r_max": 5.0,
     "dtype": "float32", "device": "cpu", "units": {...},
     "model": {"type": "nequip", "hyperparameters": {...}, "convolution_backend": "fused"},
     "versions": {"equimd": ..., "torch": ..., "e3nn": ...},
     "created": "2026-11-23T10:00:00+00:00", "source": "run/best.ckpt"}
"""

from __future__ import annotations

import json
from typing import Any

from equimd.deploy.errors import ModelFileError

MODEL_FORMAT = "equimd-model"
# Version 1: forward(positions, numbers, cell, pbc) -> {energy, atomic_energies, forces,
# stress, virial}. Bump when a file written by a newer equimd cannot be read by this one.
MODEL_FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
KINDS = ("torchscript", "aoti")

UNITS = {
    "positions": "Å",
    "cell": "Å",
    "energy": "eV",
    "atomic_energies": "eV",
    "forces": "eV/Å",
    "stress": "eV/Å³ (ASE sign: stress = (1/V) dE/dε, positive = tensile)",
    "virial": "eV (virial = -dE/dε = -V · stress)",
}


def dump_metadata(metadata: dict[str, Any]) -> str:
    """Metadata dict → the JSON text stored in the model file."""
    return json.dumps(metadata, indent=2, sort_keys=True)


def parse_metadata(text: str | bytes, path: str) -> dict[str, Any]:
    """Parse and validate the metadata JSON of the model file at `path`.

    Raises `ModelFileError` for unreadable JSON, a foreign format, an incompatible format
    version, or missing fields.
    """
    try:
        metadata = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: the model metadata is not valid JSON ({error}); "
                             "the file is corrupt — export it again with `equimd deploy`") from error
    if not isinstance(metadata, dict) or metadata.get("format") != MODEL_FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise ModelFileError(
            f"{path}: not an equimd model file (metadata format {found!r}, "
            f"expected {MODEL_FORMAT!r})"
        )
    version = metadata.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: invalid model format version {version!r}")
    if version > MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version} was written by a newer equimd "
            f"({metadata.get('versions', {}).get('equimd', '?')}); this equimd reads format "
            f"version {MODEL_FORMAT_VERSION} — upgrade equimd, or export the checkpoint again "
            "with this version's `equimd deploy`"
        )
    missing = [key for key in ("kind", "species", "r_max", "dtype") if key not in metadata]
    if missing:
        raise ModelFileError(f"{path}: model metadata lacks {missing}; the file is corrupt")
    if metadata["kind"] not in KINDS:
        raise ModelFileError(
            f"{path}: unknown model kind {metadata['kind']!r} (known: {', '.join(KINDS)})"
        )
    return metadata


# Message-passing depth of each registered model: the hyperparameter holding the number of
# interaction layers, and how many neighbour hops (each at most r_max) one layer adds. The
# energy of an atom depends only on atoms within `receptive_field` = hops × r_max of it, which
# is what a domain-decomposed host (the LAMMPS pair style `equimd`) needs as its ghost-atom
# cutoff. DimeNet++/GemNet messages live on edges and an output block reads the edge state, so
# T interaction blocks reach T + 1 hops. TokenGT alternates atom and edge tokens (two layers per
# hop); counting one hop per layer is an upper bound. Checked in tests/test_deploy_local_energy.py.
RECEPTIVE_FIELD_LAYERS: dict[str, tuple[tuple[str, ...], int]] = {
    "toy_pair": ((), 0),
    "nequip": (("num_layers",), 0),
    "mace": (("num_interactions",), 0),
    "segnn": (("num_layers",), 0),
    "equiformer": (("num_layers",), 0),
    "escn": (("num_layers",), 0),
    "implicit_kernels": (("num_layers",), 0),
    "comenet": (("num_layers",), 0),
    "clofnet": (("n_layers",), 0),
    "gnnlf": (("num_mplayer",), 0),
    "matformer": (("conv_layers",), 0),
    "geot": (("transformer_num_layers",), 0),
    "tokengt": (("encoder_layers",), 0),
    "graphormer3d": (("layers", "blocks"), 0),
    "dimenetpp": (("num_blocks",), 1),
    "gemnet": (("num_blocks",), 1),
}


def receptive_field(model_type: str, hyperparameters: dict[str, Any]) -> float | None:
    """The distance in Å beyond which no atom changes another atom's energy: hops × r_max.

    hops = product of the layer-count hyperparameters (`RECEPTIVE_FIELD_LAYERS`) plus the extra
    hops of the architecture; None for a model type not in the table (its receptive field is
    unknown, so a domain-decomposed host cannot choose its ghost cutoff).
    """
    if model_type not in RECEPTIVE_FIELD_LAYERS or "r_max" not in hyperparameters:
        return None
    keys, extra = RECEPTIVE_FIELD_LAYERS[model_type]
    hops = 1
    for key in keys:
        if key not in hyperparameters:
            return None
        hops *= int(hyperparameters[key])
    return float(hops + extra) * float(hyperparameters["r_max"])
