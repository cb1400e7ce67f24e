"""`equimd import nequip FILE` on nequip's own files, without nequip, never running their code.

Fixtures (tests/data/nequip_*, made by benchmarks/peers/make_nequip_fixtures.py in the nequip
0.19.1 venv): a `nequip-train` checkpoint (Lightning `.ckpt`, EMA weights; gzip-compressed,
unpacked into tmp_path here), the `nequip-package` archive made from it (without its packaged
sources), and nequip's energies, per-atom energies, forces and stress (NequIPCalculator) on a
molecule, a triclinic periodic cell and a cell smaller than the cutoff.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from equimd.cli import main as cli_main
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models.nequip_import import (
    NequipImportError,
    NequipPickleError,
    read_nequip_file,
)
from equimd.potentials.models.nequip_mapping import nequip_model_from_record
from equimd.potentials.models.serialization import load_model

DATA = Path(__file__).parent / "data"
TOL = 1e-8  # eV/atom, eV/Å, eV/Å³ (float64)


def _checkpoint(name: str, directory: Path) -> Path:
    path = directory / f"{name}.ckpt"
    path.write_bytes(gzip.decompress((DATA / f"nequip_{name}.ckpt.gz").read_bytes()))
    return path


def _full(voigt: torch.Tensor) -> torch.Tensor:
    """ASE Voigt (xx yy zz yz xz xy) → 3×3."""
    xx, yy, zz, yz, xz, xy = voigt.tolist()
    return torch.tensor([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]], dtype=torch.float64)


def _max_errors(model, frames: list[dict]) -> dict[str, float]:
    """Max |Δ| over `frames` vs nequip: energy per atom, atomic energies, forces, stress."""
    forcefield = ForceField(model)
    errors = dict(energy_per_atom=0.0, atomic_energies=0.0, forces=0.0, stress=0.0)
    for frame in frames:
        configuration = Configuration(
            positions=frame["positions"].numpy(),
            numbers=frame["numbers"].numpy(),
            cell=frame["cell"].numpy(),
            pbc=frame["pbc"].numpy(),
        )
        dtype = next(model.parameters()).dtype
        graph = configuration_to_graph(configuration, model.r_max, dtype=dtype)
        periodic = "stress" in frame
        out = forcefield(graph, True, periodic, False)
        n = len(frame["numbers"])
        deltas = dict(
            energy_per_atom=abs(out["energy"][0].item() - frame["energy"]) / n,
            atomic_energies=(out["atomic_energies"].double() - frame["energies"]).abs().max().item(),
            forces=(out["forces"].double() - frame["forces"]).abs().max().item(),
            stress=(out["stress"][0].double() - _full(frame["stress"])).abs().max().item()
            if periodic
            else 0.0,
        )
        errors = {k: max(errors[k], deltas[k]) for k in errors}
    return errors


# "default": nequip-train's defaults (l_max 2, parity, scalar scale/shift, fixed Bessel);
# "variant": l_max 1, 4 layers, type-embedding width ≠ features, 2-layer radial MLP, trainable
# Bessel weights, 6 Bessels, p = 5, resnet, trainable per-type energy scales and shifts,
# per-type average neighbour counts;
# "noparity": as nequip's foundation presets, parity off and one feature count per l; an MLP
# readout (one hidden layer, SiLU)
FIXTURES = ["default", "variant", "noparity"]


@pytest.mark.parametrize("name", FIXTURES)
def test_packaged_nequip_model_matches_nequip(name: str) -> None:
    model = nequip_model_from_record(read_nequip_file(DATA / f"nequip_{name}.nequip.zip"))
    reference = torch.load(DATA / f"nequip_{name}_reference.pt", weights_only=True)
    errors = _max_errors(model, reference["structures"])
    assert max(errors.values()) < TOL, errors


def test_float32_nequip_model_matches_nequip_to_float32_rounding() -> None:
    """nequip's usual precision: a float32 model imports as float32 (its `model_dtype`) and
    matches nequip's float32 numbers to float32 rounding; `dtype=float64` evaluates the same
    weights in float64."""
    record = read_nequip_file(DATA / "nequip_float32.nequip.zip")
    reference = torch.load(DATA / "nequip_float32_reference.pt", weights_only=True)
    model = nequip_model_from_record(record)
    assert next(model.parameters()).dtype == torch.float32
    errors = _max_errors(model, reference["structures"])
    assert max(errors.values()) < 1e-5, errors
    errors = _max_errors(nequip_model_from_record(record, torch.float64), reference["structures"])
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("name", FIXTURES)
def test_checkpoint_reads_the_same_ema_weights_as_the_package(name: str, tmp_path: Path) -> None:
    """The training checkpoint's EMA weights are the packaged ones (what nequip evaluates)."""
    packaged = read_nequip_file(DATA / f"nequip_{name}.nequip.zip")
    checkpoint = read_nequip_file(_checkpoint(name, tmp_path))
    assert checkpoint["kind"] == "checkpoint" and packaged["kind"] == "package"
    assert checkpoint["config"] == packaged["config"]
    assert checkpoint["state"].keys() == packaged["state"].keys()
    for key, value in packaged["state"].items():
        assert torch.equal(checkpoint["state"][key], value), key


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_imported_checkpoint_deploys_and_matches_nequip(name: str, tmp_path: Path) -> None:
    """file → `equimd import nequip` → checkpoint → `equimd deploy` → same numbers."""
    from equimd.deploy.load import load

    output = tmp_path / "imported.pt"
    assert cli_main(["import", "nequip", str(_checkpoint(name, tmp_path)), "-o", str(output)]) == 0
    model = load_model(output)
    reference = torch.load(DATA / f"nequip_{name}_reference.pt", weights_only=True)
    assert max(_max_errors(model, reference["structures"]).values()) < TOL
    deployed_path = tmp_path / "deployed.pt"
    assert cli_main(["deploy", str(output), "-o", str(deployed_path), "--dtype", "float64"]) == 0
    deployed = load(deployed_path)
    for frame in reference["structures"]:
        out = deployed(frame["positions"], frame["numbers"], frame["cell"], frame["pbc"])
        n = len(frame["numbers"])
        assert abs(out["energy"].item() - frame["energy"]) / n < TOL, frame["name"]
        assert (out["forces"] - frame["forces"]).abs().max().item() < TOL, frame["name"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("convnet_nonlinearity_type", "norm", r"convnet_nonlinearity_type='norm'"),
        ("learnable_shift", True, r"learnable_shift=True is not supported"),
        ("pair_potential", {"_target_": "ZBL"}, r"pair_potential=.* is not supported"),
        ("per_edge_type_cutoff", {"H": 3.0}, r"per_edge_type_cutoff=.* is not supported"),
        ("readout_mlp_hidden_layers_depth", 2, r"readout_mlp_hidden_layers_depth=2"),
        ("avg_num_neighbors", {"H": 3.0, "C": 4.0}, r"avg_num_neighbors=.*every type"),
        ("some_future_option", 1, r"some_future_option=1 is not supported"),
    ],
)
def test_unimplemented_options_are_refused_by_name(option, value, message) -> None:
    record = read_nequip_file(DATA / "nequip_default.nequip.zip")
    record["config"][option] = value
    with pytest.raises(NequipImportError, match=message):
        nequip_model_from_record(record)


def test_trained_weights_differ_from_their_initial_values() -> None:
    """The fixtures test the mapping of every weight: one epoch moved all of them (a weight
    left at a constant initial value, e.g. all-ones scales, could hide a mapping mistake)."""
    state = read_nequip_file(DATA / "nequip_variant.nequip.zip")["state"]
    for key in ("bessel_encode.bessel_weights", "per_type_energy_scale_shift.scales"):
        initial = {"bessel_encode.bessel_weights": torch.arange(1.0, 7.0).double(),
                   "per_type_energy_scale_shift.scales": torch.tensor([0.7, 1.3, 2.1]).double()}
        assert not torch.allclose(state[key].reshape(-1), initial[key]), key


def test_mlp_readout_with_another_nonlinearity_is_refused() -> None:
    record = read_nequip_file(DATA / "nequip_default.nequip.zip")
    record["config"].update(readout_mlp_hidden_layers_depth=1, readout_mlp_nonlinearity="mish")
    with pytest.raises(NequipImportError, match=r"readout_mlp_nonlinearity='mish'"):
        nequip_model_from_record(record)


def test_refusal_is_one_line_on_the_command_line(tmp_path: Path, capsys) -> None:
    not_nequip = tmp_path / "model.ckpt"
    torch.save({"weights": torch.zeros(3)}, not_nequip)
    assert cli_main(["import", "nequip", str(not_nequip), "-o", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("equimd: error:") and err.count("\n") == 1, err


class _RunsCommand:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_package_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    """A package whose model pickle would run a command: refused by name, nothing ran."""
    marker = tmp_path / "ran"
    source = zipfile.ZipFile(DATA / "nequip_default.nequip.zip")
    evil = tmp_path / "evil.nequip.zip"
    with zipfile.ZipFile(evil, "w") as out:
        for entry in source.namelist():
            data = source.read(entry)
            if entry.endswith("model/eager_model.pkl"):
                data = pickle.dumps({"sole_model": _RunsCommand(str(marker))})
            out.writestr(entry, data)
    with pytest.raises(NequipPickleError, match=r"global 'posix\.system'|global 'os\.system'"):
        read_nequip_file(evil)
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    buffer = io.BytesIO()
    torch.save({"state_dict": {}, "payload": _RunsCommand(str(marker))}, buffer)
    evil.write_bytes(buffer.getvalue())
    with pytest.raises(NequipPickleError, match=r"system"):
        read_nequip_file(evil)
    assert not marker.exists()


def test_info_describes_nequip_files_and_says_whether_they_import(tmp_path: Path) -> None:
    from equimd.info import describe

    text = describe(DATA / "nequip_default.nequip.zip")
    assert "nequip package" in text and "importable: equimd import nequip" in text
    assert "training checkpoint" in describe(_checkpoint("variant", tmp_path))


def test_docs_name_every_model_option_the_importer_knows() -> None:
    """docs/nequip.md lists every config key the importer accepts (the rest are refused)."""
    from equimd.potentials.models.nequip_mapping import _SUPPORTED

    docs = (Path(__file__).parents[1] / "docs" / "nequip.md").read_text()
    missing = [key for key in _SUPPORTED if f"`{key}`" not in docs]
    assert not missing, f"docs/nequip.md does not name {missing}"
