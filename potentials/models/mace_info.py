"""`equimd info` for mace-torch model files: class, heads (default marked), architecture, and
whether equimd imports the model or which option it refuses."""

from __future__ import annotations

import os
import warnings

from equimd.potentials.models.mace_import import mace_hyperparameters
from equimd.potentials.models.mace_pickle import MaceImportError
from equimd.potentials.models.mace_records import is_mace_file, read_mace_file

__all__ = ["describe_mace_file", "is_mace_file"]


def describe_mace_file(path: str | os.PathLike) -> str:
    """`equimd info` of a mace-torch `.model` file: class, heads, architecture, support."""
    record = read_mace_file(path)
    hp = record["hyperparameters"]
    default = hp["heads"][0]
    heads = ", ".join(f"{h} (default)" if h == default else h for h in hp["all_heads"])
    keys = (
        "r_max",
        "hidden_irreps",
        "max_ell",
        "correlation",
        "num_interactions",
        "interaction_cls_first",
        "interaction_cls",
        "radial_type",
        "distance_transform",
        "pair_repulsion",
        "num_elements",
        "avg_num_neighbors",
    )
    lines = [
        f"{path}: mace-torch model ({record['model_class']}, {record['dtype']})",
        f"  {'heads:':<22} {heads}",
        *(f"  {k + ':':<22} {hp.get(k)}" for k in keys),
    ]
    try:
        with warnings.catch_warnings(record=True) as caught:  # caveats of an importable model
            warnings.simplefilter("always")
            mace_hyperparameters(record)
        lines.append(f"  {'equimd:':<22} importable: equimd import mace {path} -o model.pt")
        lines.extend(f"  {'note:':<22} {warning.message}" for warning in caught)
    except MaceImportError as error:
        lines.append(f"  {'equimd:':<22} not importable: {error}")
    return "\n".join(lines)
