"""`equimd info PATH`: describe a training checkpoint or a deployed model file."""

from __future__ import annotations

import json
from pathlib import Path


def describe(path: str | Path) -> str:
    """Human-readable summary of a checkpoint (.pt from training) or deployed model file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            metadata_names = [n for n in names if n.endswith("extra/metadata.json")]
            if metadata_names:
                metadata = json.loads(archive.read(metadata_names[0]))
                return f"{path}: deployed equimd model\n" + json.dumps(metadata, indent=2)
    from equimd.potentials.models.mace_records import describe_mace_file, is_mace_file

    if is_mace_file(path):
        return describe_mace_file(path)
    from equimd.potentials.models.serialization import read_checkpoint

    record = read_checkpoint(path)
    lines = [
        f"{path}: equimd training checkpoint",
        f"  model type:      {record['model_type']}",
        f"  dtype:           {record.get('dtype')}",
        f"  hyperparameters: {json.dumps(record['hyperparameters'])}",
        f"  versions:        {json.dumps(record.get('versions', {}))}",
    ]
    for key in ("epoch", "best_metric"):
        if key in record:
            lines.append(f"  {key + ':':<16} {record[key]}")
    return "\n".join(lines)
