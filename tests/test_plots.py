"""Learning curves and MD thermo plots (equimd/plots.py, `equimd plot`)."""

from __future__ import annotations

import csv

import pytest

from equimd.cli import main
from equimd.errors import EquimdError
from equimd.plots import plot_learning_curves, plot_run, plot_thermo, read_columns

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def metrics_rows(epochs: int = 4):
    return [{"epoch": e, "time_s": 10.0 * e, "lr": 0.01, "train_loss": 1.0 / e,
             "train_energy_mae": 5.0 / e, "train_forces_mae": 50.0 / e, "train_stress_mae": "",
             "valid_loss": 1.2 / e, "valid_energy_mae": 6.0 / e, "valid_forces_mae": 60.0 / e,
             "valid_stress_mae": ""} for e in range(1, epochs + 1)]


def thermo_rows():
    return [{"step": s, "time_ps": s / 1000, "T_K": 300 + s / 10, "Epot_eV": -1.0, "Ekin_eV": 0.5,
             "Etot_eV": -0.5, "volume_A3": "", "ns_per_day": ""} for s in range(0, 101, 10)]


def test_learning_curves_png_from_metrics_csv(tmp_path):
    path = plot_learning_curves(write_csv(tmp_path / "metrics.csv", metrics_rows()))
    assert path == tmp_path / "learning_curves.png"
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    columns = read_columns(tmp_path / "metrics.csv")
    assert columns["valid_forces_mae"][-1] == 15.0 and columns["train_stress_mae"][0] != 0.0


def test_thermo_png_and_no_plot_without_rows(tmp_path):
    assert plot_thermo(write_csv(tmp_path / "thermo.csv", thermo_rows())).read_bytes().startswith(
        PNG_SIGNATURE)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "thermo.csv").write_text("step,time_ps,T_K,Epot_eV,Ekin_eV,Etot_eV,volume_A3\n")
    assert plot_thermo(empty / "thermo.csv") is None
    with pytest.raises(EquimdError, match=r"empty: no row to plot yet in thermo\.csv"):
        plot_run(empty)


def test_equimd_plot_command(tmp_path, capsys):
    write_csv(tmp_path / "metrics.csv", metrics_rows())
    assert main(["plot", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / 'learning_curves.png'}" in capsys.readouterr().out
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    assert main(["plot", str(nothing)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"equimd: error: {nothing}: neither metrics.csv (equimd train) nor thermo.csv "
        "(equimd md) is there; give a training or MD output directory")
    assert main(["plot", str(tmp_path / "absent")]) == 2
    assert "absent: no such run directory" in capsys.readouterr().err
