"""The compiled tensor-product kernel (`equimd kernels build`) and the "compiled" backend.

tests/test_tensor_product_backends.py includes "compiled" in its backend comparisons whenever
the kernel is built (as `make venv` does); most of those run modules in train mode, where the
backend takes the eager path. Here the kernel itself, in eval mode (`uses_kernel`): outputs
and first derivatives against the fused backend for every convolution shape of that file,
weights per edge and per pair of edges, both dtypes; whole models (energy, forces, stress);
training's fallback; the clear errors (second derivative, bad indices, library missing);
exports (TorchScript with the operator, OpenMM's TorchForce) and the build itself.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from equimd.errors import EquimdError
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.nn.convolution import (
    EdgeConvolution,
    apply_convolution_backend,
    available_backends,
    convolution_backend,
    kernel_library,
)
from equimd.potentials.nn.dtype import default_dtype
from tests.model_zoo import STRUCTURES, graph_of
from tests.test_tensor_product_backends import CONVOLUTIONS, TOLERANCES, random_inputs

BUILT = kernel_library.available()
needs_kernel = pytest.mark.skipif(
    not BUILT, reason="compiled kernel not built here (`equimd kernels build`; no compiler?)"
)

MACE_SETTINGS = dict(
    species=[1, 6, 8, 29], r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=3,
    hidden_irreps="8x0e+8x1o", correlation=3, num_interactions=2, MLP_irreps="4x0e",
    radial_MLP=[8, 8], avg_num_neighbors=8.0,
)  # fmt: skip
NEQUIP_SETTINGS = dict(species=[1, 6, 8, 29], r_max=4.0, l_max=2, num_features=8, num_layers=3,
                       avg_num_neighbors=8.0)


def test_kernel_is_built_where_a_compiler_exists():
    """`make venv` builds it; without it the comparisons here and in
    test_tensor_product_backends.py would silently not run."""
    if kernel_library.compiler() is None:
        pytest.skip("no C++ compiler on this machine: the 'compiled' backend is unavailable")
    assert BUILT, f"run `{kernel_library.BUILD_COMMAND}`: {kernel_library.status()}"
    assert "compiled" in available_backends()


def pair(name: str) -> tuple[EdgeConvolution, EdgeConvolution]:
    """(fused, compiled) convolutions of shape `name`, float64, eval mode."""
    from e3nn import o3

    node, l_max, parity, target = CONVOLUTIONS[name]
    irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=-1 if parity else 1)
    with default_dtype(torch.float64):
        made = [EdgeConvolution(o3.Irreps(node), irreps_sh, o3.Irreps(target), backend=b).eval()
                for b in ("fused", "compiled")]
    return made[0], made[1]


def gradients(output: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    cotangent = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    return list(torch.autograd.grad(output, inputs, cotangent.to(output.dtype)))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_kernel_equals_fused_with_gradients(name, dtype):
    fused, compiled = pair(name)
    fused, compiled = fused.to(dtype), compiled.to(dtype)
    num_nodes = 9  # the last node receives no edge, node 0 sends many
    features, edge_sh, weights, sender, receiver = random_inputs(fused, 60, num_nodes, dtype)
    receiver = receiver.clamp(max=num_nodes - 2)
    leaves = [t.clone().requires_grad_(True) for t in (features, edge_sh, weights)]
    assert compiled.tp.uses_kernel(edge_sh)
    expected = fused.aggregate(*leaves, sender, receiver, num_nodes)
    actual = compiled.aggregate(*leaves, sender, receiver, num_nodes)
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype])
    assert actual[num_nodes - 1].abs().max() == 0
    for got, want in zip(gradients(actual, leaves), gradients(expected, leaves), strict=True):
        torch.testing.assert_close(got, want, **TOLERANCES[dtype])


@needs_kernel
@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize("name", ["nequip_hidden", "mace_vector", "parity_partners_mixed_multiplicities"])
def test_radial_last_layer_per_edge_and_per_pair(name, paired):
    """`aggregate_radial` (the models' call): weights = hidden @ last_weight, hidden with a row
    per edge or per pair of edges in pair order; gradients reach hidden and last_weight."""
    fused, compiled = pair(name)
    features, edge_sh, _, sender, receiver = random_inputs(fused, 40, 7, torch.float64, seed=3)
    generator = torch.Generator().manual_seed(4)
    rows = 20 if paired else 40
    hidden = torch.randn(rows, 5, generator=generator, dtype=torch.float64)
    last_weight = torch.randn(5, fused.weight_numel, generator=generator, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (features, edge_sh, hidden, last_weight)]
    args = (sender, receiver, 7, paired)
    expected = fused.aggregate_radial(*leaves, *args)
    actual = compiled.aggregate_radial(*leaves, *args)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(gradients(actual, leaves), gradients(expected, leaves), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@needs_kernel
def test_no_edges_and_wrong_indices():
    fused, compiled = pair("mace_vector")
    features, edge_sh, weights, sender, receiver = random_inputs(fused, 0, 4, torch.float64)
    out = compiled.aggregate(features, edge_sh, weights, sender, receiver, 4)
    assert out.shape == (4, fused.irreps_out.dim) and out.abs().max() == 0
    features, edge_sh, weights, sender, receiver = random_inputs(fused, 10, 4, torch.float64)
    receiver[3] = 4
    with pytest.raises(RuntimeError, match="edge 3 names node 4"):
        compiled.aggregate(features, edge_sh, weights, sender, receiver, 4)
    with pytest.raises(RuntimeError, match="a row per edge"):
        compiled.aggregate(features, edge_sh, weights[:3], sender, receiver.clamp(max=3), 4)


def model_pair(model_type: str, settings: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        fused = build_model(model_type, **settings)
        compiled = apply_convolution_backend(build_model(model_type, **settings), "compiled")
    compiled.load_state_dict(fused.state_dict(), strict=True)
    return fused.eval(), compiled.eval()


@needs_kernel
@pytest.mark.parametrize("model_type, settings", [("mace", MACE_SETTINGS), ("nequip", NEQUIP_SETTINGS)])
def test_models_energy_forces_stress_equal_fused(model_type, settings):
    fused, compiled = model_pair(model_type, settings)
    calls = []
    for module in compiled.modules():  # count the kernel's calls
        if getattr(module, "backend", None) == "compiled" and hasattr(module, "_kernel_sums"):
            original = module._kernel_sums
            module._kernel_sums = lambda *a, _f=original: calls.append(1) or _f(*a)
    for structure in ("molecule", "triclinic_cu"):
        graph = graph_of(STRUCTURES[structure]())
        expected = ForceField(fused)(graph, compute_stress=True)
        actual = ForceField(compiled)(graph, compute_stress=True)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-10, atol=1e-10)
    assert calls, "the kernel was not used"


@needs_kernel
def test_forces_are_minus_the_energy_gradient():
    """Finite differences of the energy against the kernel's forces (eval mode)."""
    _, compiled = model_pair("mace", MACE_SETTINGS)
    atoms = STRUCTURES["molecule"]()
    forces = ForceField(compiled)(graph_of(atoms))["forces"]
    step = 1e-5
    for atom, axis in ((0, 0), (2, 1), (len(atoms) - 1, 2)):
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * step
            with torch.no_grad():
                energy = ForceField(compiled)(graph_of(moved), compute_forces=False)["energy"]
            energies.append(float(energy.sum()))
        numerical = -(energies[0] - energies[1]) / (2 * step)
        assert abs(float(forces[atom, axis]) - numerical) < 1e-6 * max(1.0, abs(numerical))


@needs_kernel
def test_training_takes_the_eager_path_and_gets_the_same_gradients():
    """Train mode with gradients: forces in the loss need a second derivative, which the kernel
    has not; the backend falls back to the fused path (same parameter gradients)."""
    fused, compiled = model_pair("mace", MACE_SETTINGS)
    graph = graph_of(STRUCTURES["triclinic_cu"]())
    grads = []
    for model in (fused.train(), compiled.train()):
        forces = ForceField(model)(graph, training=True)["forces"]
        loss = (forces**2).sum()
        grads.append(torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad]))
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    edge_sh = torch.zeros(3, 16, dtype=torch.float64)
    convolution = next(m for m in compiled.modules() if isinstance(m, EdgeConvolution))
    assert not convolution.tp.uses_kernel(edge_sh)
    with torch.no_grad():
        assert convolution.tp.uses_kernel(edge_sh)


@needs_kernel
def test_second_derivative_in_eval_mode_names_the_fix():
    _, compiled = pair("mace_vector")
    features, edge_sh, weights, sender, receiver = random_inputs(compiled, 20, 5, torch.float64)
    features.requires_grad_(True)
    out = compiled.aggregate(features, edge_sh, weights, sender, receiver, 5)
    with pytest.raises(RuntimeError, match="no second derivative.*'fused'"):
        torch.autograd.grad(out.pow(2).sum(), features, create_graph=True)


def calls_the_operator(path) -> bool:
    """Whether the TorchScript archive's code calls ops.equimd.receiver_sums."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        code = [archive.read(n).decode() for n in archive.namelist() if "/code/" in n and n.endswith(".py")]
    return any("ops.equimd.receiver_sums" in text for text in code)


@needs_kernel
def test_torchscript_export_keeps_the_kernel_only_when_asked(tmp_path):
    from equimd.deploy.export import export_model
    from equimd.deploy.load import load

    fused, compiled = model_pair("nequip", NEQUIP_SETTINGS)
    atoms = STRUCTURES["triclinic_cu"]()
    expected = ForceField(fused)(graph_of(atoms), compute_stress=True)
    for requested, stored in ((None, "fused"), ("compiled", "compiled")):
        path = export_model(compiled, tmp_path / f"{stored}.pt", dtype="float64", tp_backend=requested)
        deployed = load(path)
        assert deployed.metadata["model"]["convolution_backend"] == stored
        assert calls_the_operator(path) == (stored == "compiled")
        out = deployed(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc, compute_stress=True)
        torch.testing.assert_close(out["energy"], expected["energy"].reshape(()), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out["forces"], expected["forces"], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(out["stress"], expected["stress"].reshape(3, 3), rtol=1e-9, atol=1e-10)
    assert convolution_backend(compiled) == "compiled"  # the caller's model is untouched


@needs_kernel
def test_loading_a_compiled_file_without_the_library_names_the_fix(tmp_path, monkeypatch):
    from equimd.deploy.errors import ModelFileError
    from equimd.deploy.export import export_model
    from equimd.deploy.load import load

    _, compiled = model_pair("mace", MACE_SETTINGS)
    path = export_model(compiled, tmp_path / "compiled.pt", dtype="float32", tp_backend="compiled")
    monkeypatch.setattr(kernel_library, "load", lambda: False)
    with pytest.raises(ModelFileError, match="equimd kernels build.*--tp-backend fused"):
        load(path)


@needs_kernel
def test_openmm_torch_force_runs_a_compiled_file(tmp_path):
    pytest.importorskip("openmmtorch")
    from equimd.deploy.export import export_model
    from equimd.deploy.load import load
    from equimd.md_drivers.openmm import EV_TO_KJ_PER_MOL, create_torch_force
    from tests.test_openmm import openmm_energy_forces

    _, compiled = model_pair("mace", MACE_SETTINGS)
    path = export_model(compiled, tmp_path / "compiled.pt", dtype="float64", tp_backend="compiled")
    atoms = STRUCTURES["molecule"]()
    out = load(path)(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    energy, forces = openmm_energy_forces(create_torch_force(path, atoms.numbers), atoms, "Reference")
    assert abs(energy - float(out["energy"]) * EV_TO_KJ_PER_MOL) < 1e-8 * max(1.0, abs(energy))
    np.testing.assert_allclose(forces, out["forces"].numpy() * EV_TO_KJ_PER_MOL * 10, rtol=1e-8,
                               atol=1e-8)


def test_library_name_depends_on_the_cpu(monkeypatch):
    """A cache shared between hosts never hands one CPU another's -march=native build."""
    first = kernel_library.library_path()
    monkeypatch.setattr(kernel_library, "_cpu_signature", lambda: "flags : sse2")
    assert kernel_library.library_path() != first
    assert kernel_library.library_path().parent == first.parent


def test_failed_build_names_the_compiler_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUIMD_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(kernel_library.KernelBuildError, match="failed.*'fused'") as error:
        kernel_library.build()
    assert isinstance(error.value, EquimdError)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(kernel_library, "compiler", lambda: None)
    with pytest.raises(kernel_library.KernelBuildError, match="no C\\+\\+ compiler"):
        kernel_library.build()


def test_status_command_reports_the_library():
    result = subprocess.run([sys.executable, "-m", "equimd.cli", "kernels", "status"],
                            capture_output=True, text=True, timeout=120)
    assert str(kernel_library.library_path()) in result.stdout
    assert result.returncode == (0 if kernel_library.library_path().exists() else 1)


def test_damaged_library_is_reported_not_loaded(tmp_path, monkeypatch):
    damaged = tmp_path / "equimd_kernels-damaged.so"
    damaged.write_bytes(b"not a shared library")
    monkeypatch.setattr(kernel_library, "_loaded", None)
    monkeypatch.setattr(kernel_library, "library_path", lambda: damaged)
    with pytest.raises(EquimdError, match="cannot be loaded.*equimd kernels build"):
        kernel_library.load()
    assert not kernel_library.available()


@pytest.mark.slow
@needs_kernel
def test_aotinductor_package_of_a_compiled_model_needs_no_library(tmp_path, monkeypatch):
    """AOTInductor traces with symbolic shapes, where the backend takes the fused path: the
    package holds no call to the kernel and loads where the library is missing."""
    from equimd.deploy.export import export_model
    from equimd.deploy.load import load

    fused, compiled = model_pair("nequip", NEQUIP_SETTINGS)
    atoms = STRUCTURES["triclinic_cu"]()
    expected = ForceField(fused)(graph_of(atoms))
    path = export_model(compiled, tmp_path / "compiled.pt2", dtype="float64", format="aoti",
                        tp_backend="compiled")
    monkeypatch.setattr(kernel_library, "load", lambda: False)
    deployed = load(path)
    assert deployed.metadata["model"]["convolution_backend"] == "compiled"
    out = deployed(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    torch.testing.assert_close(out["energy"].detach(), expected["energy"].reshape(()).detach(),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["forces"], expected["forces"], rtol=1e-9, atol=1e-10)
