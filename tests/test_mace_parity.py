"""equimd's MACE against mace-torch 0.3.16 on the same weights (float64), and the importer.

Fixtures (tests/data/, made by benchmarks/peers/make_mace_fixtures.py in the mace-torch venv;
mace is never imported here): two ScaleShiftMACE models, "scalar" (32x0e, non-residual first
interaction, r_max 5) and "vector" (64x0e+64x1o, residual everywhere, r_max 6), and 60
structures each with mace's energies, node energies, forces and stress: 3BPA frames (pbc F in a
dummy 50 Å box), small molecules, an isolated atom, a pair beyond the cutoff, water and H/C/N/O/Cu
boxes, triclinic Cu cells smaller than r_max and Cu slabs (pbc T T F). Graphs are built with
equimd's own neighbor list.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import AtomicGraph, configuration_to_graph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.models.mace import MACE
from equimd.potentials.models.mace_import import (
    MaceImportError,
    import_mace_file,
    mace_model_from_export,
    read_mace_export,
)
from equimd.potentials.models.serialization import load_model
from equimd.potentials.nn.convolution import apply_convolution_backend

DATA = Path(__file__).parent / "data"
CONFIGS = ["scalar", "vector"]
ENERGY_TOL = 1e-6  # eV
FORCE_TOL = 1e-6  # eV/Å
STRESS_TOL = 1e-8  # eV/Å³
# a few frames of every kind for the slower paths (scripted, exported, e3nn backend)
FEW = ["3bpa_0", "molecule_CH4", "atom_Cu", "water_box_1", "mixed_box_0", "cu_prim_0", "cu_slab_0"]


@functools.cache
def _export(name: str) -> dict:
    return read_mace_export(DATA / f"mace_{name}_model.pt")


@functools.cache
def _reference(name: str) -> list[dict]:
    return torch.load(DATA / f"mace_{name}_reference.pt", weights_only=True)["structures"]


@functools.cache
def _model(name: str, backend: str = "fused") -> MACE:
    return apply_convolution_backend(mace_model_from_export(_export(name)), backend)


_GRAPHS: dict[tuple[str, float, torch.dtype], AtomicGraph] = {}


def _graph(frame: dict, r_max: float, dtype: torch.dtype = torch.float64) -> AtomicGraph:
    """The frame's graph with equimd's neighbor list (cached; graphs are only read)."""
    key = (frame["name"], r_max, dtype)
    if key not in _GRAPHS:
        _GRAPHS[key] = configuration_to_graph(_configuration(frame), r_max, dtype=dtype)
    return _GRAPHS[key]


def _configuration(frame: dict) -> Configuration:
    return Configuration(
        positions=frame["positions"].numpy(),
        numbers=frame["numbers"].numpy(),
        cell=frame["cell"].numpy(),
        pbc=frame["pbc"].numpy(),
    )


def _frames(name: str, names: list[str] | None = None) -> list[dict]:
    frames = _reference(name)
    return frames if names is None else [f for f in frames if f["name"] in names]


def _max_errors(forcefield, name: str, frames: list[dict], r_max: float) -> dict[str, float]:
    """Max |Δ| of energy, node energies, forces and stress over `frames` vs mace."""
    errors = dict(energy=0.0, node_energy=0.0, forces=0.0, stress=0.0)
    for frame in frames:
        periodic = "stress" in frame
        out = forcefield(_graph(frame, r_max), True, periodic, False)
        errors["energy"] = max(
            errors["energy"], abs(out["energy"][0].item() - frame["energy"].item())
        )
        errors["node_energy"] = max(
            errors["node_energy"],
            (out["atomic_energies"] - frame["node_energy"]).abs().max().item(),
        )
        if len(frame["forces"]):
            errors["forces"] = max(
                errors["forces"], (out["forces"] - frame["forces"]).abs().max().item()
            )
        if periodic:
            errors["stress"] = max(
                errors["stress"], (out["stress"][0] - frame["stress"]).abs().max().item()
            )
    return errors


def _assert_close(errors: dict[str, float], scale: float = 1.0) -> None:
    assert errors["energy"] < ENERGY_TOL * scale, errors
    assert errors["node_energy"] < ENERGY_TOL * scale, errors
    assert errors["forces"] < FORCE_TOL * scale, errors
    assert errors["stress"] < STRESS_TOL * scale, errors


def test_fixtures_cover_the_required_structures() -> None:
    frames = _reference("scalar")
    categories = {f["category"] for f in frames}
    assert len(frames) >= 50
    assert {
        "isolated_3bpa",
        "isolated_molecule",
        "periodic_cu_triclinic",
        "slab_pbc_TTF",
    } <= categories
    assert sum("stress" in f for f in frames) >= 20


@pytest.mark.parametrize("name", CONFIGS)
def test_neighbor_list_finds_mace_edges(name: str) -> None:
    r_max = _model(name).r_max
    for frame in _frames(name):
        assert _graph(frame, r_max).edge_index.shape[1] == frame["num_edges"], frame["name"]


@pytest.mark.parametrize("name", CONFIGS)
def test_energy_forces_stress_match_mace(name: str) -> None:
    """All fixture structures: energy, node energies, forces and stress equal mace's."""
    model = _model(name)
    errors = _max_errors(ForceField(model), name, _frames(name), model.r_max)
    _assert_close(errors)


@pytest.mark.parametrize("name", CONFIGS)
def test_node_features_of_every_layer_match_mace(name: str) -> None:
    """The product outputs of every layer (mace's `node_feats`), e3nn layout."""
    model = _model(name)
    features: list[torch.Tensor] = []
    hooks = [p.register_forward_hook(lambda m, i, o: features.append(o)) for p in model.products]
    try:
        for frame in [f for f in _frames(name) if "node_feats" in f]:
            features.clear()
            with torch.no_grad():
                model(_graph(frame, model.r_max))
            ours = torch.cat(features, dim=-1)
            torch.testing.assert_close(ours, frame["node_feats"], rtol=0, atol=1e-10)
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("name", CONFIGS)
def test_e3nn_backend_matches_mace(name: str) -> None:
    model = _model(name, "e3nn")
    _assert_close(_max_errors(ForceField(model), name, _frames(name, FEW), model.r_max))


@pytest.mark.parametrize("name", CONFIGS)
def test_exported_model_matches_mace(name: str, tmp_path: Path) -> None:
    """equimd.deploy.export_model(float64) → equimd.deploy.load: the model scripted as the deploy path does
    (`torch.jit.script(ForceField(e3nn.util.jit.compile(model)))`) with the in-graph neighbor
    list gives mace's numbers (scripted == eager for small models: tests/test_mace_model.py)."""
    from equimd.deploy.export import export_model
    from equimd.deploy.load import load

    path = export_model(_model(name), tmp_path / "mace.pt", dtype="float64")
    deployed = load(path)
    assert deployed.metadata["model"]["type"] == "mace"
    for frame in _frames(name, FEW):
        out = deployed(frame["positions"], frame["numbers"], frame["cell"], frame["pbc"])
        assert abs(out["energy"].item() - frame["energy"].item()) < ENERGY_TOL, frame["name"]
        if len(frame["forces"]):
            assert (out["forces"] - frame["forces"]).abs().max() < FORCE_TOL, frame["name"]
        if "stress" in frame:
            assert (out["stress"] - frame["stress"]).abs().max() < STRESS_TOL, frame["name"]


@pytest.mark.parametrize("name", CONFIGS)
def test_float32_model_is_close_to_mace(name: str) -> None:
    model = mace_model_from_export(_export(name), dtype=torch.float32)
    forcefield = ForceField(model)
    for frame in _frames(name, FEW):
        out = forcefield(_graph(frame, model.r_max, torch.float32))
        assert out["energy"].dtype == torch.float32
        n = len(frame["numbers"])
        assert abs(out["energy"][0].item() - frame["energy"].item()) < 1e-4 * max(
            n, 1
        ) + 1e-6 * abs(frame["energy"].item()), frame["name"]
        if n:
            np.testing.assert_allclose(out["forces"].detach().numpy(), frame["forces"], atol=2e-3)


def test_imported_checkpoint_reloads_equal(tmp_path: Path) -> None:
    checkpoint = import_mace_file(DATA / "mace_vector_model.pt", tmp_path / "mace.ckpt")
    reloaded = load_model(checkpoint)
    assert reloaded.model_type == "mace"
    rebuilt = build_model("mace", **reloaded.hyperparameters())  # hyperparameters round-trip
    assert isinstance(rebuilt, MACE)
    errors = _max_errors(ForceField(reloaded), "vector", _frames("vector", FEW), reloaded.r_max)
    _assert_close(errors)


def test_cli_imports_mace(tmp_path: Path, capsys) -> None:
    from equimd.cli import main

    output = tmp_path / "cli.ckpt"
    assert main(["import", "mace", str(DATA / "mace_scalar_model.pt"), "-o", str(output)]) == 0
    assert output.is_file()
    assert str(output) in capsys.readouterr().out


def _modified(name: str, **changes) -> dict:
    record = copy.deepcopy(_export(name))
    record["hyperparameters"].update(changes)
    return record


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"interaction_cls": "RealAgnosticAttResidualInteractionBlock"}, "interaction_cls"),
        ({"heads": ["pt_head", "Default"]}, "heads"),
        ({"radial_type": "fourier"}, "radial_type='fourier' .*supported.*chebyshev"),
        ({"distance_transform": "Sigmoid"}, "distance_transform='Sigmoid'"),
        ({"use_agnostic_product": True}, "use_agnostic_product"),
        ({"readout_cls": "NonLinearBiasReadoutBlock"}, "readout_cls"),
        ({"avg_num_neighbors_per_interaction": [10.0, 12.0]}, "avg_num_neighbors_per_interaction"),
    ],
)
def test_unsupported_mace_options_are_named(changes: dict, named: str) -> None:
    with pytest.raises(MaceImportError, match=named):
        mace_model_from_export(_modified("scalar", **changes))


def test_unsupported_model_class_is_named() -> None:
    record = copy.deepcopy(_export("scalar"))
    record["model_class"] = "AtomicDipolesMACE"
    with pytest.raises(MaceImportError, match="AtomicDipolesMACE"):
        mace_model_from_export(record)


def test_unknown_state_dict_entries_are_refused() -> None:
    record = copy.deepcopy(_export("scalar"))
    record["state_dict"]["interactions.0.density_fn.linear.weight"] = torch.zeros(3)
    with pytest.raises(MaceImportError, match="density_fn"):
        mace_model_from_export(record)


def test_layer_irreps_mismatch_is_refused() -> None:
    record = copy.deepcopy(_export("vector"))
    record["hyperparameters"]["layers"][1]["product_irreps_out"] = "64x0e+64x1o"
    with pytest.raises(MaceImportError, match="layer 1: product_irreps_out"):
        mace_model_from_export(record)


def test_refuses_files_that_are_not_mace_exports(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"format": "equimd-checkpoint"}, path)
    with pytest.raises(MaceImportError, match="mace-torch-state-dict"):
        read_mace_export(path)
    pickled = tmp_path / "pickled.model"
    pickled.write_bytes(b"not a torch file")
    with pytest.raises(MaceImportError, match="not a readable torch/mace-torch file"):
        read_mace_export(pickled)


def test_import_without_layer_details_follows_mace_instruction_order() -> None:
    """mace-torch orders the convolution weights by output irrep; without the exporter's
    per-layer record the importer applies that rule itself."""
    record = copy.deepcopy(_export("vector"))
    del record["hyperparameters"]["layers"]
    model = mace_model_from_export(record)
    _assert_close(_max_errors(ForceField(model), "vector", _frames("vector", FEW[:3]), model.r_max))


def test_convolution_instruction_mismatch_is_refused() -> None:
    record = copy.deepcopy(_export("vector"))
    record["hyperparameters"]["layers"][1]["conv_tp_instructions"].pop()
    with pytest.raises(MaceImportError, match="layer 1: conv_tp_instructions"):
        mace_model_from_export(record)
