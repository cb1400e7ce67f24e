"""A training run's folder: its file names, a fresh or resumed start, the config it ran with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from equimd.files import atomic_write_text
from equimd.potentials.train.config import ConfigError, TrainConfig

BEST, LAST, CSV_NAME, CONFIG_NAME = "best.pt", "last.pt", "metrics.csv", "config.yaml"


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create `run_dir`; a fresh run refuses (or with `overwrite`, clears) a previous run's
    checkpoints, a resumed one needs last.pt."""
    if resume:
        if not (run_dir / LAST).is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir / LAST} does not exist")
        return
    existing = [name for name in (LAST, BEST, CSV_NAME) if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(existing)}): resume it with --resume, "
            "choose another output.run_dir, or set output.overwrite: true"
        )
    for name in existing:
        (run_dir / name).unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def check_resumable(record: dict[str, Any], config: TrainConfig) -> None:
    """The data and model sections must not change when a run is resumed."""
    stored = record.get("config", {})
    current = config.to_dict()
    changed = [
        f"{section}.{key}"
        for section in ("data", "model")
        for key in sorted(set(stored.get(section, {})) | set(current[section]))
        if stored.get(section, {}).get(key) != current[section].get(key)
    ]
    if changed:
        raise ConfigError(
            f"cannot resume: the config changed in {', '.join(changed)} since last.pt was "
            "written (only the training and output sections may change)"
        )


def write_config(config: TrainConfig, path: Path) -> None:
    """The run's config as YAML (written atomically), for the record and for resuming."""
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), "run config")
