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


# Message-passing depth of each registered model: the hyperparameters whose product is the
# number of interaction layers L, and hops = per_layer × L + extra, each hop at most r_max. The
# energy of an atom depends only on atoms within `receptive_field` = hops × r_max of it: the
# ghost-atom cutoff of a domain-decomposed host (the LAMMPS pair style `equimd`). The extra hops
# come from what reads the neighbours outside the interaction layers: local frames or
# equivariant node attributes built from the neighbours (ClofNet, ComENet, GNN-LF, SEGNN),
# edge states read by the output (DimeNet++, GemNet), the edge-degree embedding
# (Equiformer), a centrality/bias stage (Graphormer-3D); Implicit Kernels builds its kernel
# inputs from the neighbours in every layer (2 hops per layer). Measured on a dense rod of
# atoms for 1-3 layers (energy of atom 0 with everything beyond k × r_max removed) and kept
# as upper bounds; tests/test_deploy_local_energy.py checks every registered model.
RECEPTIVE_FIELD_LAYERS: dict[str, tuple[tuple[str, ...], int, int]] = {
    "toy_pair": ((), 0, 1),
    "nequip": (("num_layers",), 1, 0),
    "mace": (("num_interactions",), 1, 0),
    "matformer": (("conv_layers",), 1, 0),
    "escn": (("num_layers",), 1, 0),
    "scn": (("num_interactions",), 1, 0),
    "geot": (("transformer_num_layers",), 1, 0),
    "tokengt": (("encoder_layers",), 1, 0),
    "segnn": (("num_layers",), 1, 1),
    "equiformer": (("num_layers",), 1, 1),
    "comenet": (("num_layers",), 1, 1),
    "clofnet": (("n_layers",), 1, 1),
    "graphormer3d": (("layers", "blocks"), 1, 1),
    "dimenetpp": (("num_blocks",), 1, 1),
    "gemnet": (("num_blocks",), 1, 2),
    "gnnlf": (("num_mplayer",), 1, 2),
    "implicit_kernels": (("num_layers",), 2, 1),
}


def receptive_field(model_type: str, hyperparameters: dict[str, Any]) -> float | None:
    """The distance in Å beyond which no atom changes another atom's energy: hops × r_max.

    hops = per_layer × (product of the layer-count hyperparameters) + extra
    (`RECEPTIVE_FIELD_LAYERS`); None for a model type not in the table or hyperparameters
    lacking a key (the receptive field is unknown: a domain-decomposed host cannot choose its
    ghost cutoff).
    """
    if model_type not in RECEPTIVE_FIELD_LAYERS or "r_max" not in hyperparameters:
        return None
    keys, per_layer, extra = RECEPTIVE_FIELD_LAYERS[model_type]
    layers = 1
    for key in keys:
        if key not in hyperparameters:
            return None
        layers *= int(hyperparameters[key])
    hops = per_layer * layers + extra
    return float(hops) * float(hyperparameters["r_max"])
