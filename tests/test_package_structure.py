"""The package's structure rules (docs/models.md, DESIGN.md), checked on the source tree:
one top-level import name, imports flow one way without circles, small modules, one error base.

The import graph is read from the source (every `import` / `from ... import`, including the
lazy ones inside functions), so a circle or an upward import hidden in a function is found too.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder → import name (setup.py maps the layer folders under `equimd`)
PACKAGES = {
    "equimd": "equimd",
    "potentials": "equimd.potentials",
    "deploy": "equimd.deploy",
    "md_drivers": "equimd.md_drivers",
}
MAX_LINES = 500
# Dependency-free modules every layer may import (standard library, NumPy, torch, ASE only).
SHARED = {"equimd.errors", "equimd.checks", "equimd.units", "equimd.files", "equimd.devices",
          "equimd.plots", "equimd.allocator"}


def _modules() -> dict[str, Path]:
    """Import name → source file of every module of the package."""
    modules = {}
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([name, *parts])] = path
    return modules


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The equimd modules `module` imports anywhere in its source (resolved to modules)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            if any(name not in MODULES for name in names):  # names defined in `base` itself
                names.append(base)
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return components


def _is_ancestor_package(importer: str, imported: str) -> bool:
    """A package's __init__ re-exporting its own submodules is not a circle."""
    return importer.startswith(imported + ".") or imported.startswith(importer + ".")


def test_import_graph_has_no_circles():
    graph = {
        module: {target for target in targets if not _is_ancestor_package(module, target)}
        for module, targets in GRAPH.items()
    }
    assert _cycles(graph) == [], "modules that import each other (directly or in a ring)"


def _layer(module: str) -> str:
    parts = module.split(".")
    if module in SHARED:
        return "shared"
    if len(parts) > 1 and parts[1] in ("potentials", "deploy", "md_drivers"):
        return parts[1]
    return "equimd"  # the command line and public API: above every layer


# what each layer may import (besides itself and the shared modules)
ALLOWED = {
    "shared": set(),
    "potentials": set(),
    "deploy": {"potentials"},
    "md_drivers": {"deploy", "potentials"},
    "equimd": {"md_drivers", "deploy", "potentials", "equimd"},
}


def test_imports_flow_down_md_drivers_deploy_potentials():
    upward = []
    for module, targets in GRAPH.items():
        layer = _layer(module)
        for target in targets:
            other = _layer(target)
            if other not in ("shared", layer) and other not in ALLOWED[layer]:
                upward.append(f"{module} imports {target}")
            if layer == "shared" and target not in SHARED:
                upward.append(f"{module} (dependency-free) imports {target}")
    assert upward == []


def test_md_drivers_and_deploy_import_no_training_code():
    training = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _layer(module) in ("md_drivers", "deploy")
        for target in targets
        if target == "equimd.potentials.train" or target.startswith("equimd.potentials.train.")
    ]
    assert training == []


def test_no_module_is_longer_than_the_limit():
    long = {
        str(path.relative_to(ROOT)): n
        for path in [*MODULES.values(), *sorted((ROOT / "benchmarks").rglob("*.py")),
                     *sorted((ROOT / "examples").rglob("*.py")), ROOT / "setup.py"]
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these files by job (limit {MAX_LINES} lines)"


def test_every_error_class_derives_from_the_equimd_base():
    from equimd.errors import EquimdError

    strays = []
    for module in MODULES:
        try:
            loaded = importlib.import_module(module)
        except ImportError as error:  # optional dependency (e.g. cuequivariance) missing
            pytest.skip(f"{module}: {error}")
        for name, value in vars(loaded).items():
            if (inspect.isclass(value) and issubclass(value, Exception)
                    and value.__module__ == module and not issubclass(value, EquimdError)
                    and not issubclass(value, KeyboardInterrupt)):
                strays.append(f"{module}.{name}")
    assert strays == []


def test_shared_rules_are_written_once():
    """The cell-validity and species rules, and each shared error class, have one definition."""
    definitions: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top_level_functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
        classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
        for node in [*top_level_functions, *classes]:
            definitions.setdefault(node.name, []).append(module)
    for name in ("check_cell", "check_species", "CellError", "StructureError",
                 "UnknownElementError", "EquimdError", "OutputWriteError", "atomic_output"):
        assert len(definitions.get(name, [])) == 1, (name, definitions.get(name))


def test_wheel_installs_only_the_equimd_import_name(tmp_path):
    """`pip install .` puts one top-level name into site-packages: `equimd` (PyPI has
    unrelated `potentials` and `deploy` distributions)."""
    # build from a copy of the sources: setuptools' build/ folder in the repository may hold
    # stale copies of moved modules, which a wheel built in place would include
    source = tmp_path / "source"
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("equimd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"equimd"}
    for layer in ("potentials", "deploy", "md_drivers"):
        assert f"equimd/{layer}/__init__.py" in names
    every_package = {f"{name.replace('.', '/')}/__init__.py" for name, path in MODULES.items()
                     if path.name == "__init__.py"}
    assert every_package <= set(names), "a subpackage is missing from the wheel"
    # installed alone (no repository on sys.path), the old top-level names do not import
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys; sys.path[:] = [sys.argv[1]] + [p for p in sys.path if 'site-packages' "
         "not in p and p not in ('', '.')]\n"
         "import importlib.util as u\n"
         "print([n for n in ('potentials', 'deploy', 'md_drivers') if u.find_spec(n)])\n"
         "print(u.find_spec('equimd.potentials.models').origin)",
         str(site)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    found, origin = probe.stdout.splitlines()
    assert found == "[]"
    assert origin.startswith(str(site))


def test_console_script_and_openmm_ml_entry_point_use_the_namespace():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'equimd = "equimd.cli:main"' in text
    assert 'equimd = "equimd.md_drivers.openmm_ml:EquimdPotentialImplFactory"' in text


def test_every_module_is_importable_under_the_namespace():
    missing = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except ImportError as error:
            if "cuequivariance" not in str(error):
                missing.append(f"{module}: {error}")
    assert missing == []
    assert {m.name for m in pkgutil.iter_modules(importlib.import_module("equimd").__path__)} >= {
        "errors", "checks", "units", "cli"}


def test_public_api_resolves_every_name_and_import_is_light():
    """`from equimd import X` works for every public name; `import equimd` alone loads no layer
    (the CLI starts fast and a script pays only for what it uses)."""
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, equimd\n"
         "print(sorted(m for m in sys.modules if m.startswith('equimd.') or m == 'torch'))\n"
         "missing = [n for n in equimd.__all__ if getattr(equimd, n, None) is None]\n"
         "print(missing)\n"
         "print(issubclass(equimd.CellError, equimd.EquimdError), equimd.load_model.__module__)"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert probe.returncode == 0, probe.stderr
    loaded, missing, checks = probe.stdout.splitlines()
    assert loaded == "[]"
    assert missing == "[]"
    assert checks == "True equimd.deploy.load"
