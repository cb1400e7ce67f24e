"""The model contract (docs/models.md): registration, discovery, and what every registered
model's `forward` must do; and that the shared physics, export and fuzz tests pick up every
registered model, one registered in a test file alone (tests/models/toy_pair.py) included.

The physics checks are tests/test_physics.py, exported == eager tests/test_deploy.py, the
fuzzing tests/test_reliability_inputs.py; all are parametrized from the registry
(`tests.model_zoo.CONTRACT_MODELS`).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import equimd.potentials.models as models_package
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import (
    MODELS,
    SKIPPED_MODULES,
    TEST_HYPERPARAMETERS,
    Potential,
    build_model,
    import_model_modules,
    register_model,
)
from tests.model_zoo import (
    CONTRACT_MODELS,
    MODEL_FACTORIES,
    STRUCTURES,
    graph_of,
    slow_unless_test_only,
)

REPO = Path(__file__).resolve().parents[1]


# ---- registration and discovery -----------------------------------------------------------


def test_every_model_module_of_the_package_is_imported():
    """No import list to keep up to date: each module of equimd.potentials.models is imported
    (and in the dev environment none is skipped for a missing optional dependency)."""
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(models_package.__path__)}
    assert {"base", "nequip", "mace"} <= modules
    not_imported = sorted(m for m in modules if f"equimd.potentials.models.{m}" not in sys.modules)
    assert not_imported == []
    assert SKIPPED_MODULES == {}, f"model modules not imported: {SKIPPED_MODULES}"
    assert {"nequip", "mace"} <= set(MODELS)


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """fake_package(name, {module: source}) -> the package's __path__; importable until the
    test ends (sys.path and sys.modules are restored)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(name: str, modules: dict[str, str]) -> list[str]:
        package = tmp_path / name
        package.mkdir()
        (package / "__init__.py").write_text("")
        for module, source in modules.items():
            (package / f"{module}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return [str(package)]

    yield write
    for module in [m for m in sys.modules if m.split(".")[0] in names]:
        del sys.modules[module]


def test_module_with_missing_optional_dependency_is_skipped_with_its_reason(fake_package):
    path = fake_package("fake_models", {
        "needs_fairchem": "import fairchem_not_installed_here\n",
        "plain": "VALUE = 1\n",
    })
    skipped = import_model_modules("fake_models", path)
    assert set(skipped) == {"fake_models.needs_fairchem"}
    assert "No module named 'fairchem_not_installed_here'" in skipped["fake_models.needs_fairchem"]
    assert sys.modules["fake_models.plain"].VALUE == 1


@pytest.mark.parametrize(
    "source",
    ["from equimd.potentials.nn import no_such_block\n", "from fake_models_own import missing\n"],
    ids=["equimd", "same-package"],
)
def test_broken_import_of_our_own_code_is_raised_not_skipped(source, fake_package):
    path = fake_package("fake_models_own", {"broken": source})
    with pytest.raises(ImportError, match="cannot import name"):
        import_model_modules("fake_models_own", path)


def test_unknown_model_type_names_the_skipped_modules(monkeypatch):
    monkeypatch.setitem(
        SKIPPED_MODULES, "equimd.potentials.models.fancynet", "ModuleNotFoundError: No module named 'fancy'"
    )
    with pytest.raises(ValueError, match=r"unknown model type 'fancynet'.*Not imported: "
                       r"equimd\.potentials\.models\.fancynet \(ModuleNotFoundError: No module named 'fancy'\)"):
        build_model("fancynet", species=[1])


def test_an_equivariance_group_other_than_o3_or_se3_is_refused(monkeypatch):
    monkeypatch.setattr(models_package.base, "MODELS", dict(MODELS))  # leave the registry as it was
    with pytest.raises(ValueError, match=r"equivariance must be 'O\(3\)' or 'SE\(3\)', got 'E\(3\)'"):

        @register_model("mirror_blind")
        class MirrorBlind(Potential):
            equivariance = "E(3)"


def test_a_taken_model_name_is_refused(monkeypatch):
    monkeypatch.setitem(MODELS, "nequip", MODELS["nequip"])  # restored afterwards
    with pytest.raises(ValueError, match=r"'nequip' is already registered by equimd\.potentials\.models\.nequip\.NequIP"):

        @register_model("nequip")
        class AnotherNequIP(Potential):
            pass


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_has_a_json_test_configuration(name):
    assert name in TEST_HYPERPARAMETERS, (
        f"{name}: register_model(..., test_hyperparameters={{...}}) is missing (docs/models.md)"
    )
    configuration = TEST_HYPERPARAMETERS[name]
    assert not {"species", "r_max"} & set(configuration), "the tests set species and r_max"
    assert json.loads(json.dumps(configuration)) == configuration


def test_test_models_stay_out_of_the_package_registry():
    """tests/models/ registers only inside the test session: equimd itself (the CLI, a script)
    sees the package's models alone."""
    code = "import json, equimd.potentials.models as m; print(json.dumps(sorted(m.MODELS)))"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    outside = set(json.loads(completed.stdout))
    assert "toy_pair" in MODELS and "toy_pair" not in outside
    assert {"nequip", "mace"} <= outside


# ---- what every registered model's forward does ------------------------------------------


@pytest.fixture(scope="module", params=CONTRACT_MODELS)
def registered(request) -> Potential:
    return MODEL_FACTORIES[request.param]()


def test_hyperparameters_rebuild_the_model_through_json(registered):
    """hyperparameters() is JSON (the model file stores it as such) and rebuilds the same
    architecture: the state dict loads strictly and gives the same energies."""
    hyperparameters = json.loads(json.dumps(registered.hyperparameters()))
    rebuilt = build_model(registered.model_type, **hyperparameters).double()
    rebuilt.load_state_dict(registered.state_dict())
    graph = graph_of(STRUCTURES["periodic_mixed_species"]())
    assert torch.equal(rebuilt(graph), registered(graph))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_returns_one_energy_per_atom_in_the_input_dtype(registered, dtype):
    model = build_model(registered.model_type, **registered.hyperparameters()).to(dtype)
    model.load_state_dict(registered.state_dict())
    graph = graph_of(STRUCTURES["triclinic_cu"](), dtype)
    energies = model(graph)
    assert energies.shape == (graph.positions.shape[0],) and energies.dtype == dtype
    assert torch.isfinite(energies).all()


def test_scale_shift_is_applied_last(registered):
    """E_i = E0[Z_i] + scale · e_i + shift with the network output e_i unchanged."""
    graph = graph_of(STRUCTURES["periodic_mixed_species"]())
    statistics = registered.scale_shift
    e0, scale, shift = statistics.e0.clone(), float(statistics.scale), float(statistics.shift)
    assert e0.abs().min() > 0 and scale != 1.0 and shift != 0.0  # tests/model_zoo.py sets them
    statistics.set_statistics([0.0] * registered.num_species, scale=1.0, shift=0.0)
    network = registered(graph)
    statistics.set_statistics(e0.tolist(), scale=scale, shift=shift)
    species = registered.species_index(graph.numbers)
    expected = e0[species] + scale * network + shift
    torch.testing.assert_close(registered(graph), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("structure", ["slab", "molecule"])
def test_energies_do_not_depend_on_pbc(registered, structure):
    """The AOTInductor export passes pbc = all True: a model must not read graph.pbc (the
    neighbor list and the lattice shifts already say which directions are periodic)."""
    graph = graph_of(STRUCTURES[structure]())
    all_periodic = graph._replace(pbc=torch.ones_like(graph.pbc))
    assert torch.equal(registered(all_periodic), registered(graph))
    forces = ForceField(registered)(graph)["forces"]
    assert torch.equal(ForceField(registered)(all_periodic)["forces"], forces)


# 10-15 s per model of the package (building e3nn models twice, with EMA): slow for them
@pytest.mark.parametrize("name", slow_unless_test_only(CONTRACT_MODELS))
def test_trains_from_a_training_config(name, tmp_path):
    """The test configuration as the `model` section of a training config: an epoch on
    energies, forces and stress (a double backward through the model) give finite losses, and
    the best checkpoint rebuilds the model."""
    from equimd.potentials.models.serialization import load_model
    from equimd.potentials.train.config import config_from_dict
    from equimd.potentials.train.trainer import train
    from tests.test_train import read_rows, write_emt_copper

    config = config_from_dict({
        "data": {"train": str(write_emt_copper(tmp_path / "cu.xyz", num_frames=4)),
                 "valid_fraction": 0.5},
        "model": {"model_type": name, "r_max": 4.0, **TEST_HYPERPARAMETERS[name]},
        "training": {"epochs": 1, "batch_size": 2, "lr": 0.01, "device": "cpu", "seed": 1,
                     "dtype": "float64", "stress_weight": 10.0},
        "output": {"run_dir": str(tmp_path / "run")},
    })
    result = train(config, progress=False)
    losses = [float(row[key]) for row in read_rows(result.metrics_csv)
              for key in ("train_loss", "valid_loss")]
    assert len(losses) == 2 and all(map(math.isfinite, losses)), losses
    model = load_model(result.best_checkpoint)
    assert type(model) is MODELS[name] and model.species == [29]


# ---- the shared tests pick up every registered model -------------------------------------

# test file -> the tests in it that must run for every registered model
CONTRACT_TESTS = {
    "tests/test_physics.py": [
        "test_rotation_and_reflection_equivariance",
        "test_translation_and_permutation_invariance",
        "test_forces_are_negative_energy_gradient",
        "test_stress_is_strain_derivative",
        "test_supercell_energy_is_extensive",
        "test_cell_smaller_than_cutoff_matches_supercell",
        "test_batch_equals_individual_structures",
        "test_float32_agrees_with_float64",
    ],
    "tests/test_deploy.py": [
        "test_exported_matches_eager_float64",
        "test_exported_matches_eager_float32",
        "test_aoti_package_loads_like_torchscript",
    ],
    "tests/test_reliability_inputs.py": [
        "test_fuzz_exported_model_molecules",
        "test_fuzz_exported_model_periodic",
    ],
    "tests/test_model_contract.py": [
        "test_hyperparameters_rebuild_the_model_through_json",
        "test_forward_returns_one_energy_per_atom_in_the_input_dtype",
        "test_scale_shift_is_applied_last",
        "test_energies_do_not_depend_on_pbc",
        "test_trains_from_a_training_config",
    ],
}


def test_a_model_registered_in_a_test_file_gets_every_contract_test():
    """Collect the contract test files (slow tests included) in a fresh pytest: each of their
    contract tests has a case for every registered model, and toy_pair, registered in
    tests/models/ alone, is one of them."""
    assert "toy_pair" in CONTRACT_MODELS and MODELS["toy_pair"].__module__ == "tests.models.toy_pair"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", "slow or not slow", *CONTRACT_TESTS],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    collected = set(completed.stdout.split())
    for path, tests in CONTRACT_TESTS.items():
        for test in tests:
            ids = [item for item in collected if item.startswith(f"{path}::{test}[")]
            for name in CONTRACT_MODELS:
                case = re.compile(rf"\[(.*-)?{re.escape(name)}(-.*)?\]$")
                assert any(case.search(item) for item in ids), f"{path}::{test} has no case for {name}"
