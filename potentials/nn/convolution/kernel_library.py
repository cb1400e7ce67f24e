"""Build and load equimd's compiled tensor-product kernel (`csrc/receiver_sums.cpp`).

The library registers the TorchScript operators ``torch.ops.equimd.receiver_sums`` (with its
autograd kernel) and ``torch.ops.equimd.receiver_sums_backward``, used by the ``"compiled"``
convolution backend (`compiled.CompiledUVUConvolution`). It is built once per machine, torch
version and source, by the host's C++ compiler (``$CXX``, else ``c++``; g++ ≥ 9 or clang with
OpenMP) against the installed torch, with ``-O3 -march=native``:

    equimd kernels build        # `make venv` runs it; a failure leaves equimd on "fused"
    equimd kernels status

Nothing compiles implicitly: `load()` only loads a library that `build()` wrote. The file lives
in ``$EQUIMD_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/equimd/kernels`` or
``~/.cache/equimd/kernels``), named by a hash of the source, the torch version, the flags and the
CPU's model and instruction-set flags, so a cache shared between different CPUs (a cluster's
home directory) never hands one host another's ``-march=native`` code. Written atomically
(temporary file + rename): a build interrupted halfway leaves no half library.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from equimd.errors import EquimdError, SettingsError

SOURCE = Path(__file__).resolve().parent / "csrc" / "receiver_sums.cpp"
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-fPIC", "-shared")
BUILD_COMMAND = "equimd kernels build"

_loaded: Path | None = None


class KernelBuildError(EquimdError):
    """The C++ compiler failed or is missing; the message holds the end of its output."""


def cache_directory() -> Path:
    """Where built libraries live (module docstring)."""
    if "EQUIMD_KERNEL_CACHE" in os.environ:
        return Path(os.environ["EQUIMD_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "equimd" / "kernels"


def _cpu_signature() -> str:
    """The CPU's model name and instruction-set flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def library_path() -> Path:
    """The library file for this source, torch version, flag set and CPU (may not exist)."""
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), " ".join(COMPILE_FLAGS).encode(),
                 _cpu_signature().encode()):
        digest.update(part)
        digest.update(b"\0")
    return cache_directory() / f"equimd_kernels-{digest.hexdigest()[:16]}.so"


def compiler() -> str | None:
    """The C++ compiler `build` uses ($CXX, else c++, g++ or clang++), or None."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next(filter(None, map(shutil.which, candidates)), None)


def compile_command(output: Path) -> list[str]:
    """The compiler command line that builds the library into `output`."""
    cxx = compiler()
    if cxx is None:
        raise KernelBuildError(
            "no C++ compiler found (set CXX, or install g++): the 'compiled' tensor-product "
            "backend is unavailable; equimd keeps using 'fused'"
        )
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [cxx, *COMPILE_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    root = Path(torch.__file__).resolve().parent  # torch's headers and libraries
    command += [f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}"]
    command += [str(SOURCE), "-o", str(output), f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}"]
    return command + ["-lc10", "-ltorch_cpu", "-ltorch"]


def build(verbose: bool = False) -> Path:
    """Compile the library unless it exists; returns its path. Raises `KernelBuildError`."""
    target = library_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".building-", suffix=".so")
    os.close(handle)
    command = compile_command(Path(temporary))
    if verbose:
        print(" ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).splitlines()[-30:])
            raise KernelBuildError(
                f"building the compiled tensor-product kernel failed ({command[0]}, exit "
                f"{result.returncode}); equimd keeps using backend 'fused'. Compiler output:\n{tail}"
            )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def load() -> bool:
    """Load the built library into this process (once); False if it has not been built."""
    global _loaded
    if _loaded is not None:
        return True
    path = library_path()
    if not path.exists():
        return False
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as error:  # damaged file, or libraries moved since the build
        raise SettingsError(
            f"{path}: the compiled tensor-product kernel cannot be loaded ({error}); delete the "
            f"file and run `{BUILD_COMMAND}` again, or use backend 'fused'"
        ) from error
    _loaded = path
    return True


def available() -> bool:
    """Whether the compiled kernel's operators can be used here (built for this host and
    loadable; loads them)."""
    try:
        return load()
    except SettingsError:
        return False


def require() -> None:
    """Load the library or raise `SettingsError` naming the command that builds it."""
    if not load():
        raise SettingsError(
            "tensor-product backend 'compiled' needs equimd's compiled kernel, not built for this "
            f"host and torch {torch.__version__}: run `{BUILD_COMMAND}` (needs a C++ compiler), "
            "or use backend 'fused' (same numbers)"
        )


def status() -> str:
    """One paragraph: the library's path and whether it is built and loadable here."""
    path = library_path()
    built = "built" if path.exists() else f"not built (run `{BUILD_COMMAND}`)"
    return f"compiled tensor-product kernel: {built}\n  library: {path}\n  compiler: {compiler()}"


def run_command(action: str, verbose: bool = False) -> int:
    """`equimd kernels build|status|path`: build (and load) the library, describe it, or print
    its path alone (for EQUIMD_KERNEL_LIBRARY, docs/lammps.md); the exit status (status and
    path: 1 when not built)."""
    if action == "build":
        path = build(verbose=verbose)
        require()  # it loads: the operators are registered
        print(f"compiled tensor-product kernel: {path}")
        print("MD and evaluation use it through `equimd deploy --tp-backend compiled` (training "
              "keeps the eager path); docs/performance.md")
        return 0
    print(library_path() if action == "path" else status())
    return 0 if library_path().exists() else 1
