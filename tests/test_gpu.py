"""Every registered model on a CUDA device gives the CPU's numbers (skipped without CUDA).

The code is written device-agnostic (docs/models.md rule 7); this is where that is checked:
the eager model through `ForceField` (energy, forces, stress; float64 and float32), and the
exported TorchScript file loaded onto the GPU, whose neighbor list then runs on the GPU too.
Run on a machine with a GPU: `pytest tests/test_gpu.py` (the cell-list and loader CUDA checks
are `tests/test_cell_list.py::test_cuda_matches_cpu` and
`tests/test_reliability_inputs.py::test_model_on_cuda_matches_cpu`).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from equimd.deploy.export import export_model
from equimd.deploy.load import load
from equimd.potentials.data.graph import graph_to
from equimd.potentials.forcefield import ForceField
from tests.model_zoo import CONTRACT_MODELS, MODEL_FACTORIES, STRUCTURES, graph_of, triclinic_cu

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOLERANCE = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=2e-4, atol=2e-4)}


def evaluate(model: torch.nn.Module, atoms, dtype: torch.dtype, device: str) -> dict[str, np.ndarray]:
    forcefield = ForceField(copy.deepcopy(model).to(device=device, dtype=dtype))
    graph = graph_to(graph_of(atoms, dtype=dtype), device, dtype)
    out = forcefield(graph, compute_forces=True, compute_stress=bool(atoms.pbc.any()))
    assert all(value.device.type == torch.device(device).type for value in out.values())
    return {key: value.detach().cpu().double().numpy() for key, value in out.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_eager_model_on_cuda_matches_cpu(name, dtype):
    model = MODEL_FACTORIES[name]()
    for structure in ("molecule", "triclinic_cu", "small_cell"):
        atoms = STRUCTURES[structure]()
        cpu = evaluate(model, atoms, dtype, "cpu")
        gpu = evaluate(model, atoms, dtype, "cuda")
        for key in cpu:
            np.testing.assert_allclose(gpu[key], cpu[key], err_msg=f"{name} {structure} {key}",
                                       **TOLERANCE[dtype])


@pytest.mark.parametrize("name", CONTRACT_MODELS)
def test_exported_model_on_cuda_matches_cpu(name, tmp_path):
    path = export_model(MODEL_FACTORIES[name](), tmp_path / f"{name}.pt", dtype="float64")
    atoms = triclinic_cu()
    args = (atoms.positions, atoms.numbers, atoms.get_cell().array, atoms.pbc)
    cpu = load(path)(*args)
    gpu = load(path, device="cuda")(*args)
    assert gpu["forces"].device.type == "cuda"
    for key, value in cpu.items():
        np.testing.assert_allclose(gpu[key].cpu().numpy(), value.numpy(), rtol=1e-9, atol=1e-9,
                                   err_msg=f"{name} {key}")
