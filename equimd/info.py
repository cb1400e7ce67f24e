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
                return f"{path}: deployed equimd model\n" + json.dumps(
                    metadata, indent=2, ensure_ascii=False
                )
    from equimd.potentials.models.nequip_import import describe_nequip_file, is_nequip_file

    if is_nequip_file(path):
        return describe_nequip_file(path)
    from equimd.potentials.models.mace_info import describe_mace_file, is_mace_file

    if is_mace_file(path):
        return describe_mace_file(path)
    from equimd.potentials.models.serialization import read_checkpoint

    record = read_checkpoint(path)
    lines = [
        f"{path}: equimd training checkpoint",
        f"  model type:      {record['model_type']}",
        f"  dtype:           {record.get('dtype')}",
        f"  hyperparameters: {json.dumps(record['hyperparameters'], ensure_ascii=False)}",
        f"  versions:        {json.dumps(record.get('versions', {}), ensure_ascii=False)}",
    ]
    return "\n".join(lines + _training_lines(record))


def _training_lines(record: dict) -> list[str]:
    """Epoch, training time and the best epoch's validation metrics of a trainer checkpoint
    (nothing for a bare model record, e.g. an imported model)."""
    progress = record.get("progress")
    if not isinstance(progress, dict):
        return []
    lines = [
        f"  epoch:           {progress.get('epoch', 0)} completed "
        f"({progress.get('elapsed', 0.0):.0f} s of training)",
        f"  best epoch:      {progress.get('best_epoch', 0)} "
        f"(validation loss {progress.get('best_loss', float('nan')):.4g})",
    ]
    metrics = record.get("best_metrics") or {}
    if metrics:
        from equimd.potentials.train.metrics import format_metrics_table

        table = format_metrics_table(metrics, "validation metrics of the best epoch:")
        lines += ["  " + line for line in table.splitlines()]
    return lines
