"""The optional cuEquivariance backend ("cueq").

Its agreement with the e3nn reference (outputs, forces, stress, training gradients, TorchScript,
NVE) runs in tests/test_tensor_product_backends.py, which includes "cueq" whenever
cuequivariance-torch is installed. Here: that it is installed in the dev environment (so those
tests cannot silently drop out), MACE-shaped models (l = 3, symmetric contraction) against
e3nn, the clear error without the package, exports, and the CUDA kernels when a GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

import equimd.potentials.nn.convolution.cueq as cueq_module
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.nn.convolution import (
    EdgeConvolution,
    apply_convolution_backend,
    available_backends,
    convolution_backend,
)
from tests.model_zoo import STRUCTURES, graph_of
from tests.test_tensor_product_backends import convolution_pair, default_dtype, random_inputs

MACE_SETTINGS = dict(
    species=[1, 6, 8, 29], r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=3,
    hidden_irreps="8x0e+8x1o", correlation=3, num_interactions=2, MLP_irreps="4x0e",
    radial_MLP=[8, 8], avg_num_neighbors=8.0,
)  # fmt: skip


def test_cueq_is_available_in_the_dev_environment():
    assert "cueq" in available_backends(), (
        "cuequivariance-torch is part of the dev extras (pip install -e '.[dev]'); without it "
        "the cueq backend's comparisons in test_tensor_product_backends.py do not run"
    )


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(cueq_module, "HAS_CUEQ", False)
    with pytest.raises(ImportError, match="pip install cuequivariance-torch"):
        convolution_pair("nequip_hidden", "cueq")


def test_cpu_without_kernels_uses_plain_pytorch():
    _, convolution = convolution_pair("mace_vector", "cueq")
    if not (cueq_module.HAS_CUEQ_KERNELS and torch.cuda.is_available()):
        assert convolution.tp.method == "naive"
    # mixed multiplicities never go to the uniform kernel
    assert cueq_module.cueq_method(o3.Irreps("4x0e+2x1o"), convolution.irreps_out) == "naive"


def mace_pair(backend: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        reference = apply_convolution_backend(build_model("mace", **MACE_SETTINGS), "e3nn")
        fast = apply_convolution_backend(build_model("mace", **MACE_SETTINGS), backend)
    fast.load_state_dict(reference.state_dict(), strict=True)
    return reference, fast


def test_mace_forces_and_stress_equal_reference():
    reference, fast = mace_pair("cueq")
    for structure in ("molecule", "triclinic_cu"):
        graph = graph_of(STRUCTURES[structure]())
        expected = ForceField(reference)(graph, compute_stress=True)
        actual = ForceField(fast)(graph, compute_stress=True)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-10, atol=1e-10)


def test_export_defaults_to_a_portable_backend(tmp_path):
    """A cueq model is exported with the fused backend unless asked (same numbers)."""
    from equimd.deploy.export import export_model
    from equimd.deploy.load import load

    reference, fast = mace_pair("cueq")
    atoms = STRUCTURES["triclinic_cu"]()
    expected = ForceField(reference)(graph_of(atoms), compute_stress=True)
    for requested, stored in ((None, "fused"), ("cueq", "cueq")):
        path = export_model(fast, tmp_path / f"{stored}.pt", dtype="float64", tp_backend=requested)
        deployed = load(path)
        assert deployed.metadata["model"]["convolution_backend"] == stored
        out = deployed(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
        torch.testing.assert_close(out["energy"], expected["energy"].reshape(()), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out["forces"], expected["forces"], rtol=1e-9, atol=1e-10)
    assert convolution_backend(fast) == "cueq"  # the caller's model is untouched


@pytest.mark.skipif(
    not (cueq_module.HAS_CUEQ_KERNELS and torch.cuda.is_available()),
    reason="needs an NVIDIA GPU and cuequivariance-ops-torch-cu12",
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_kernels_equal_reference(dtype):
    reference, fast = convolution_pair("mace_vector", "cueq")
    with default_dtype(torch.float64):
        kernel = EdgeConvolution(reference.irreps_node, reference.irreps_sh,
                                 reference.irreps_out, backend="cueq")  # fmt: skip
    assert kernel.tp.method == "uniform_1d"
    inputs = random_inputs(reference, 500, 40, dtype)
    expected = reference.to(dtype).aggregate(*inputs, 40)
    actual = kernel.to("cuda", dtype).aggregate(*(x.cuda() for x in inputs), 40).cpu()
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)
