"""Plots a user looks at instead of reading CSV files: learning curves of a training run
(`metrics.csv` → `learning_curves.png`) and the thermodynamics of an MD run (`thermo.csv` →
`thermo.png`). Written during training (every epoch), at the end of `equimd md`, and by
`equimd plot RUN_DIR`.

Headless: a bare `matplotlib.figure.Figure` renders with the Agg canvas (no display, no
pyplot, the global backend left alone); the PNG is written atomically, so a crash mid-write
leaves the previous plot. Depends on no equimd layer (a shared module).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from equimd.errors import EquimdError
from equimd.files import atomic_output

LEARNING_CURVES = "learning_curves.png"
THERMO_PLOT = "thermo.png"

# (panel title, y label, [(legend, column)], logarithmic y)
_TRAINING_PANELS = [
    ("loss", "loss", [("train", "train_loss"), ("validation", "valid_loss")], True),
    ("energy MAE", "meV/atom", [("train", "train_energy_mae"), ("validation", "valid_energy_mae")], True),
    ("force MAE", "meV/Å", [("train", "train_forces_mae"), ("validation", "valid_forces_mae")], True),
    ("stress MAE", "meV/Å³", [("train", "train_stress_mae"), ("validation", "valid_stress_mae")], True),
]
_THERMO_PANELS = [
    ("energy", "eV", [("total", "Etot_eV"), ("potential", "Epot_eV"), ("kinetic", "Ekin_eV")], False),
    ("temperature", "K", [("T", "T_K")], False),
    ("volume", "Å³", [("V", "volume_A3")], False),
]


def read_columns(path: str | Path) -> dict[str, list[float]]:
    """A CSV file's numeric columns (an empty cell or a non-number is NaN)."""

    def number(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return math.nan

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = rows[0].keys() if rows else []
    return {key: [number(row.get(key) or "") for row in rows] for key in keys}


def _has_data(values: list[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def plot_panels(columns: dict[str, list[float]], x_key: str, x_label: str, panels: list,
                path: str | Path, title: str) -> Path | None:
    """One panel per entry of `panels` that has data in `columns`; None when none has."""
    from matplotlib.figure import Figure

    shown = [(name, unit, [(label, key) for label, key in series
                           if _has_data(columns.get(key, []))], log)
             for name, unit, series, log in panels]
    shown = [panel for panel in shown if panel[2]]
    x = columns.get(x_key, [])
    if not shown or not x:
        return None
    figure = Figure(figsize=(4.2 * len(shown), 3.6), layout="constrained")
    axes = figure.subplots(1, len(shown), squeeze=False)[0]
    for ax, (name, unit, series, log) in zip(axes, shown, strict=True):
        for label, key in series:
            ax.plot(x, columns[key], marker="." if len(x) < 50 else None, label=label)
        positive = all(v > 0 for _, key in series for v in columns[key] if math.isfinite(v))
        if log and positive:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel(x_label)
        ax.set_ylabel(unit)
        if len(series) > 1:
            ax.legend()
    figure.suptitle(title)
    path = Path(path)
    with atomic_output(path, "plot") as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    return path


def plot_learning_curves(metrics_csv: str | Path, path: str | Path | None = None) -> Path | None:
    """Train/validation loss, energy, force (and stress) MAE per epoch from a training run's
    metrics.csv; written beside it as learning_curves.png unless `path` is given."""
    metrics_csv = Path(metrics_csv)
    columns = read_columns(metrics_csv)
    times = [t for t in columns.get("time_s", []) if math.isfinite(t)]
    spent = f", {times[-1] / 60:.1f} min" if times else ""
    title = f"{metrics_csv.parent.name}: {len(columns.get('epoch', []))} epochs{spent}"
    return plot_panels(columns, "epoch", "epoch", _TRAINING_PANELS,
                       path or metrics_csv.with_name(LEARNING_CURVES), title)


def plot_thermo(thermo_csv: str | Path, path: str | Path | None = None) -> Path | None:
    """Total, potential and kinetic energy, temperature (and volume) against time from an MD
    run's thermo.csv; written beside it as thermo.png unless `path` is given."""
    thermo_csv = Path(thermo_csv)
    columns = read_columns(thermo_csv)
    title = f"{thermo_csv.parent.name}: {len(columns.get('step', []))} rows"
    return plot_panels(columns, "time_ps", "time (ps)", _THERMO_PANELS,
                       path or thermo_csv.with_name(THERMO_PLOT), title)


def plot_run(run_dir: str | Path) -> list[Path]:
    """The plots of a training run (metrics.csv) or an MD run (thermo.csv) in `run_dir`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    found = [(run_dir / "metrics.csv", plot_learning_curves), (run_dir / "thermo.csv", plot_thermo)]
    found = [(csv_path, plot) for csv_path, plot in found if csv_path.is_file()]
    if not found:
        raise EquimdError(f"{run_dir}: neither metrics.csv (equimd train) nor thermo.csv "
                          "(equimd md) is there; give a training or MD output directory")
    written = [plot(csv_path) for csv_path, plot in found]
    if not any(written):
        raise EquimdError(f"{run_dir}: no row to plot yet in "
                          f"{' or '.join(str(p.name) for p, _ in found)}")
    return [path for path in written if path is not None]


def plot_quietly(plot, csv_path: Path, what: str) -> Path | None:
    """`plot(csv_path)` for a run in progress: a failure (a half-written row, a full disk)
    prints one warning line instead of stopping the training or the MD run."""
    try:
        return plot(csv_path)
    except Exception as error:  # noqa: BLE001 - a plot never stops a run
        print(f"equimd: warning: could not plot {what} from {csv_path}: "
              f"{type(error).__name__}: {error}", flush=True)
        return None
