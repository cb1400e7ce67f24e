"""Deployed model files: exported == eager, reload in a fresh process, metadata, refusals.

Exported == eager (TorchScript in float64 and float32; AOTInductor, slow) runs for every
registered model in its test configuration (`tests.model_zoo.CONTRACT_MODELS`, docs/models.md);
the file-format tests (metadata, reload, refusals, CLI) use NequIP's.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

from equimd.deploy import (
    MODEL_FORMAT_VERSION,
    ModelFileError,
    UnknownElementError,
    load,
    read_metadata,
)
from equimd.deploy.cli import add_deploy_arguments, run_deploy
from equimd.deploy.export import export_model
from equimd.deploy.verify import sample_frames, verify
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.models.serialization import save_model
from tests.model_zoo import (
    CONTRACT_MODELS,
    MODEL_FACTORIES,
    SPECIES,
    STRUCTURES,
    nequip_small,
    slow_unless_test_only,
)

REPO = Path(__file__).resolve().parents[1]


def deployment_frames() -> list:
    """24 frames: each zoo structure (periodic triclinic, mixed species, cell < r_max, slab,
    molecule) in 4 rattled/rotated variants, plus `equimd.deploy.verify.sample_frames`."""
    frames = []
    for seed in range(4):
        for name in sorted(STRUCTURES):
            atoms = STRUCTURES[name]()
            atoms.rattle(0.03, seed=seed)
            rotation = Rotation.random(random_state=seed).as_matrix()
            atoms.set_positions(atoms.get_positions() @ rotation.T)
            atoms.set_cell(atoms.get_cell().array @ rotation.T)
            frames.append(atoms)
    return frames + sample_frames(SPECIES, seed=1)


@pytest.fixture(scope="module")
def model():
    return nequip_small()


@pytest.fixture(scope="module", params=CONTRACT_MODELS)
def registered_model(request):
    """(name, float64 model) of every registered model's test configuration."""
    return request.param, MODEL_FACTORIES[request.param]()


@pytest.fixture(scope="module")
def frames():
    return deployment_frames()


@pytest.fixture(scope="module")
def eager64(model, frames):
    return eager_results(model, frames)


@pytest.fixture(scope="module")
def exported(zoo_model_file):
    """{dtype: path} of TorchScript exports of the float64 zoo NequIP (`model`)."""
    return {dtype: zoo_model_file("nequip", dtype) for dtype in ("float64", "float32")}


@pytest.fixture(scope="module")
def deployed(exported):
    """{dtype: DeployedModel} loaded once for the tests that only call them."""
    return {dtype: load(path) for dtype, path in exported.items()}


def eager_results(model, frames, dtype=torch.float64) -> list[dict[str, np.ndarray]]:
    copy = build_model(model.model_type, **model.hyperparameters()).to(dtype)
    copy.load_state_dict(model.state_dict())
    forcefield = ForceField(copy)
    results = []
    for atoms in frames:
        config = Configuration.from_atoms(atoms)
        periodic = bool(np.any(config.pbc))
        out = forcefield(configuration_to_graph(config, model.r_max, dtype), compute_stress=periodic)
        results.append({k: v.detach().double().numpy() for k, v in out.items()})
    return results


def assert_matches(out: dict, reference: dict, atol: float, rtol: float) -> None:
    np.testing.assert_allclose(np.asarray(out["energy"]).reshape(1), reference["energy"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(out["forces"], reference["forces"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(out["atomic_energies"], reference["atomic_energies"], rtol=rtol, atol=atol)
    if "stress" in reference:
        np.testing.assert_allclose(out["stress"], reference["stress"][0], rtol=rtol, atol=atol)
        np.testing.assert_allclose(out["virial"], reference["virial"][0], rtol=rtol, atol=atol)
    else:
        assert "stress" not in out


def deployed_results(deployed, frames) -> list[dict[str, np.ndarray]]:
    results = []
    for atoms in frames:
        out = deployed(atoms.get_positions(), atoms.numbers, atoms.get_cell().array, atoms.pbc)
        results.append({k: v.double().numpy() for k, v in out.items()})
    return results


def test_exported_matches_eager_float64(registered_model, zoo_model_file, frames):
    name, model = registered_model
    deployed = load(zoo_model_file(name, "float64"))
    assert len(frames) >= 20
    for out, reference in zip(
        deployed_results(deployed, frames), eager_results(model, frames), strict=True
    ):
        assert_matches(out, reference, atol=1e-10, rtol=0.0)


def test_exported_matches_eager_float32(registered_model, zoo_model_file, frames):
    name, model = registered_model
    deployed = load(zoo_model_file(name, "float32"))
    assert deployed.dtype == torch.float32
    for frame, out, reference in zip(
        frames,
        deployed_results(deployed, frames),
        eager_results(model, frames, torch.float32),
        strict=True,
    ):
        scale = {key: np.abs(value).max() + 1e-12 for key, value in reference.items()}
        if "stress" in reference:
            # stress is a sum of pair terms r_ij ⊗ f_ij / V that largely cancel; float32
            # rounding (the in-graph and matscipy neighbor lists sum edges in different
            # orders) is relative to the size of those terms, not to their small sum.
            pair_term = np.abs(reference["forces"]).max() * model.r_max / frame.get_volume()
            scale["stress"] = max(scale["stress"], pair_term)
        for key in ("energy", "forces", "stress"):
            if key in reference:
                deviation = np.abs(np.asarray(out[key]).ravel() - reference[key].ravel()).max()
                # + 1e-7 eV/Å³ (16 Pa) floor for stress: float32 rounding of nearly cancelling
                # pair terms summed in another edge order
                floor = 1e-7 if key == "stress" else 0.0
                assert deviation <= 1e-5 * scale[key] + floor, (key, deviation, scale[key])


def test_verify_reports_max_deviations(model, exported, deployed, frames):
    result = verify(exported["float64"], model, frames[:5])  # from the path
    assert result["passed"] and result["frames"] == 5
    for key in ("energy", "forces", "stress"):
        assert result[f"{key}_max_abs"] < 1e-10
    result32 = verify(deployed["float32"], model, frames[:5], reference_dtype="float64")
    assert 0.0 < result32["forces_max_abs"] < 1e-3


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np
    import equimd.deploy
    from equimd.md_drivers.ase import EquimdCalculator
    frames = np.load(sys.argv[2], allow_pickle=True)["frames"]
    model = equimd.deploy.load(sys.argv[1])
    results = []
    for positions, numbers, cell, pbc in frames:
        out = model(positions, numbers, cell, pbc)
        results.append({k: v.double().numpy() for k, v in out.items()})
    np.save(sys.argv[3], np.array(results, dtype=object), allow_pickle=True)
    loaded = sorted(m for m in sys.modules if m == "equimd.potentials" or m.startswith("equimd.potentials."))
    print("POTENTIALS_MODULES=" + ",".join(loaded))
    """
)


def test_reload_in_fresh_process_matches_eager_without_training_code(exported, frames, eager64, tmp_path):
    packed = np.empty(len(frames), dtype=object)
    for index, atoms in enumerate(frames):
        packed[index] = (atoms.get_positions(), atoms.numbers, atoms.get_cell().array, atoms.pbc)
    np.savez(tmp_path / "frames.npz", frames=packed)
    script = tmp_path / "reload.py"
    script.write_text(FRESH_PROCESS_SCRIPT)
    completed = subprocess.run(
        [sys.executable, str(script), str(exported["float64"]), str(tmp_path / "frames.npz"),
         str(tmp_path / "results.npy")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    loaded = completed.stdout.split("POTENTIALS_MODULES=")[1].strip()
    assert "equimd.potentials.train" not in loaded
    assert loaded == "", f"loading a model imported {loaded}"
    results = np.load(tmp_path / "results.npy", allow_pickle=True)
    for out, reference in zip(results, eager64, strict=True):
        assert_matches(out, reference, atol=1e-10, rtol=0.0)


def test_first_call_of_a_fresh_load_equals_later_calls_bit_for_bit(exported):
    """Results are a function of the inputs alone, whatever was evaluated before: TorchScript's
    first (profiling) call and later (optimised) calls must not round differently, or an MD
    run restarted in a new process parts from the uninterrupted one (equimd.deploy.load.
    repeatable_execution)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=3)
    first = [load(exported["float64"])(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
             for _ in range(2)]  # two fresh loads, one call each
    model = load(exported["float64"])
    later = [model(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc) for _ in range(4)]
    for out in first + later[:-1]:
        for key in ("energy", "forces", "stress"):
            assert torch.equal(out[key], later[-1][key]), key


def test_metadata_round_trip(model, exported, deployed):
    metadata = read_metadata(exported["float32"])
    assert metadata["format"] == "equimd-model"
    assert metadata["format_version"] == MODEL_FORMAT_VERSION
    assert metadata["kind"] == "torchscript"
    assert metadata["species"] == {"numbers": SPECIES, "symbols": ["H", "C", "O", "Cu"]}
    assert metadata["r_max"] == model.r_max
    assert metadata["dtype"] == "float32"
    assert metadata["units"]["forces"] == "eV/Å"
    assert metadata["model"]["type"] == "nequip"
    assert metadata["model"]["hyperparameters"] == json.loads(json.dumps(model.hyperparameters()))
    assert set(metadata["versions"]) == {"equimd", "torch", "e3nn"}
    assert metadata["versions"]["torch"] == torch.__version__
    loaded = deployed["float32"]
    assert loaded.species == SPECIES and loaded.r_max == model.r_max
    assert loaded.metadata == metadata
    # the model rebuilt from the metadata has the exported architecture
    rebuilt = build_model(metadata["model"]["type"], **metadata["model"]["hyperparameters"])
    assert set(rebuilt.state_dict()) == set(model.state_dict())


def test_stress_is_skipped_for_molecules_and_on_request(exported):
    deployed = load(exported["float64"])  # own copy: the module attribute is changed below
    water = molecule("H2O")
    out = deployed(water.positions, water.numbers)
    assert set(out) == {"energy", "atomic_energies", "forces"}
    assert out["energy"].shape == () and out["forces"].shape == (3, 3)
    crystal = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    args = (crystal.positions, crystal.numbers, crystal.cell.array, crystal.pbc)
    assert {"stress", "virial"} <= set(deployed(*args))
    assert "stress" not in deployed(*args, compute_stress=False)
    module = deployed.module
    module.compute_stress = False  # the module attribute used by forward()
    assert "stress" not in module(*(torch.as_tensor(np.asarray(a)) for a in args))
    module.compute_stress = True
    assert "stress" in module(*(torch.as_tensor(np.asarray(a)) for a in args))


def test_unknown_element_is_named_before_the_model_runs(deployed):
    atoms = molecule("CH3CH2OH")
    atoms.numbers[4] = 54  # Xe
    with pytest.raises(UnknownElementError, match=r"atom 4 is Xe \(Z=54\).*H, C, O, Cu"):
        deployed["float32"](atoms.positions, atoms.numbers)


def test_export_leaves_model_and_rng_untouched(model, tmp_path):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    export_model(model, tmp_path / "m.pt", dtype="float32")
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float64


# ---- refusals -------------------------------------------------------------------------


def rewrite_metadata(source: Path, target: Path, **changes) -> Path:
    module = torch.jit.load(str(source))
    metadata = dict(read_metadata(source), **changes)
    torch.jit.save(module, str(target), _extra_files={"metadata.json": json.dumps(metadata)})
    return target


def test_refuses_newer_format_version(exported, tmp_path):
    path = rewrite_metadata(exported["float32"], tmp_path / "future.pt", format_version=MODEL_FORMAT_VERSION + 1)
    with pytest.raises(ModelFileError, match=r"format version 2 .*newer.*upgrade equimd"):
        load(path)


def test_refuses_truncated_file(exported, tmp_path):
    data = exported["float32"].read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load(path)


def test_refuses_corrupt_file(exported, tmp_path):
    data = bytearray(exported["float32"].read_bytes())
    with zipfile.ZipFile(exported["float32"]) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    # record data start: after the local header (30 bytes + name + extra field of its own)
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    for offset in range(start, start + min(32, info.compress_size)):
        data[offset] ^= 0xFF
    path = tmp_path / "corrupt.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt"):
        load(path)


def test_refuses_training_checkpoint_and_says_to_deploy(model, tmp_path):
    checkpoint = tmp_path / "best.ckpt"
    save_model(model, checkpoint)
    with pytest.raises(ModelFileError, match=r"training checkpoint.*equimd deploy"):
        load(checkpoint)


def test_refuses_foreign_files(tmp_path):
    foreign = tmp_path / "linear.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), str(foreign))
    with pytest.raises(ModelFileError, match="without equimd metadata"):
        load(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    with pytest.raises(ModelFileError, match="not a model file"):
        load(text)
    with pytest.raises(ModelFileError, match="no such model file"):
        load(tmp_path / "missing.pt")


def test_cli_exports_and_verifies(model, tmp_path, capsys):
    import argparse

    checkpoint = tmp_path / "model.ckpt"
    save_model(model, checkpoint)
    parser = add_deploy_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(checkpoint), "-o", str(tmp_path / "out.pt"), "--dtype", "float64", "--verify"])
    assert run_deploy(args) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "PASSED" in printed
    assert read_metadata(tmp_path / "out.pt")["source"] == str(checkpoint)


# ---- AOTInductor ----------------------------------------------------------------------


def tiny_model():
    """NequIP with 3 species, r_max 3.5 Å, l_max 1, one layer: an extra AOTInductor case."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = build_model(
            "nequip", species=[1, 8, 29], r_max=3.5, l_max=1, num_features=4, num_layers=1,
            radial_mlp_hidden=[8], avg_num_neighbors=8.0,
        ).double()
    model.scale_shift.set_statistics([-0.3, -1.2, -3.1], scale=0.8, shift=0.1)
    return model.eval()


# every registered model's test configuration, and the hand-written variant above
AOTI_MODELS = {**{name: MODEL_FACTORIES[name] for name in CONTRACT_MODELS}, "nequip_tiny": tiny_model}


# Compiling takes 60-70 s for NequIP's and MACE's test configurations and 20 s for nequip_tiny
# on two cores: slow. The test-only pair potential compiles in 10-20 s and keeps the export
# path itself (tracing, compiling, loading) in the default suite, in float32 (the MD speed
# path; float64 compiles the same graph and takes twice as long: slow).
@pytest.mark.parametrize("dtype", [pytest.param("float64", marks=pytest.mark.slow), "float32"])
@pytest.mark.parametrize("name", slow_unless_test_only(sorted(AOTI_MODELS)))
def test_aoti_package_loads_like_torchscript(name, dtype, tmp_path):
    """An AOTInductor export in float64 and float32 (the MD default, whose C++ code generation
    once failed): same call, same outputs as TorchScript and eager; the compile says what it
    is doing."""
    model = AOTI_MODELS[name]().eval()
    said: list[str] = []
    aoti = load(export_model(model, tmp_path / "model.pt2", dtype=dtype, format="aoti",
                             progress=said.append))
    script = load(export_model(model, tmp_path / "model.pt", dtype=dtype))
    stages = [line for line in said  # the "stage: 12.3 s" lines (not the heartbeats)
              if line.startswith("  ") and line.endswith(" s") and "still" not in line]
    assert [line.split(":")[0].strip() for line in stages] == [
        "tracing energy, forces and stress (make_fx)",
        "exporting with dynamic atom and edge counts (torch.export)",
        "compiling C++ with Inductor (about a minute on 2 cores)",
    ]
    assert aoti.kind == "aoti" and script.kind == "torchscript"
    assert aoti.species == script.species and aoti.r_max == script.r_max
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    cu.rattle(0.05, seed=1)
    water = molecule("H2O")
    single = water[:1]
    frames = [cu, water, single, cu * (1, 1, 2)] + sample_frames(model.species, seed=2)
    for atoms in frames:
        args = (atoms.get_positions(), atoms.numbers, atoms.get_cell().array, atoms.pbc)
        out_aoti, out_script = aoti(*args), script(*args)
        assert set(out_aoti) == set(out_script)
        for key, value in out_script.items():
            assert out_aoti[key].shape == value.shape
            if dtype == "float64":
                np.testing.assert_allclose(out_aoti[key].numpy(), value.numpy(), atol=1e-10, rtol=0)
            else:  # other kernels, other float32 rounding: relative to the largest value
                scale = max(1.0, float(value.abs().max()))
                np.testing.assert_allclose(out_aoti[key].numpy(), value.numpy(), rtol=1e-4,
                                           atol=1e-5 * scale, err_msg=key)
    result = verify(aoti, model, frames)
    assert result["passed"], result
    unknown = molecule("H2O")
    unknown.numbers[1] = 54  # Xe
    with pytest.raises(UnknownElementError, match=r"atom 1 is Xe \(Z=54\)"):
        aoti(unknown.positions, unknown.numbers)


def test_a_long_export_stage_says_it_is_still_running():
    """The AOTInductor compile is a minute of silence otherwise: a line every heartbeat."""
    import time as time_module

    from equimd.deploy.aoti import stage

    said: list[str] = []
    with stage(said.append, "compiling", heartbeat_s=0.02):
        time_module.sleep(0.15)
    assert said[0] == "  compiling ..."
    assert any(line.startswith("  ... still compiling: ") for line in said[1:-1])
    assert said[-1].startswith("  compiling: ") and said[-1].endswith(" s")
    with stage(None, "silent"):  # no callback: nothing to say, no thread
        pass
