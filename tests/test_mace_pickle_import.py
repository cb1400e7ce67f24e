"""`equimd import mace FILE` on mace-torch's own files, without mace-torch, never running their code.

Fixtures (tests/data/mace_pickle_*, made by benchmarks/peers/make_mace_pickle_fixtures.py in the
mace-torch 0.3.16 venv): `torch.save(model)` files of small float64 mace-torch models, one per
architecture option (gzip-compressed; unpacked into tmp_path here), a mace training checkpoint,
and mace's energies, node energies, forces and stress on a molecule, a triclinic periodic cell,
a cell smaller than the cutoff and a slab (per head for the multi-head model).
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch

from equimd.cli import main as cli_main
from equimd.errors import EquimdError
from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models.mace_import import (
    MaceImportError,
    mace_model_from_export,
    read_mace_export,
)
from equimd.potentials.models.mace_pickle import MacePickleError, load_records
from equimd.potentials.models.serialization import load_model

DATA = Path(__file__).parent / "data"
TOL = 1e-8  # eV/atom, eV/Å, eV/Å³ (float64)
# MACE-MP-0 small/medium/large hidden irreps, plain MACE, radial bases and transforms, ZBL
# (the larger max_ell / correlation ones in the slow suite)
SLOW = pytest.mark.slow
EXACT = [
    pytest.param("mp_small", marks=SLOW),
    "mp_medium",
    pytest.param("mp_large", marks=SLOW),
    "plain",
    "gaussian",
    "agnesi",
    pytest.param("soft", marks=SLOW),
    "zbl",
    pytest.param("density", marks=SLOW),  # (mpa has both density blocks)
    "mpa",
    # MACE-OMAT-0 / MATPES: built by mace-torch's own training-command code from the published
    # script's flags (--model MACE: density blocks, ZBL, Agnesi, max_ell 3, correlation 3)
    "omat",
    pytest.param("off", marks=SLOW),
]


def _unpack(name: str, directory: Path) -> Path:
    """tests/data/mace_pickle_<name>.model.gz (or .pt.gz) → directory/<name>.model (.pt)."""
    for suffix in (".model", ".pt"):
        packed = DATA / f"mace_pickle_{name}{suffix}.gz"
        if packed.is_file():
            path = directory / f"{name}{suffix}"
            path.write_bytes(gzip.decompress(packed.read_bytes()))
            return path
    raise FileNotFoundError(name)


def _reference(name: str) -> dict:
    return torch.load(DATA / f"mace_pickle_{name}_reference.pt", weights_only=True)


def _max_errors(model, frames: list[dict]) -> dict[str, float]:
    """Max |Δ| over `frames`: energy per atom, node energies, forces, stress (vs mace)."""
    forcefield = ForceField(model)
    errors = dict(energy_per_atom=0.0, node_energy=0.0, forces=0.0, stress=0.0)
    for frame in frames:
        configuration = Configuration(
            positions=frame["positions"].numpy(),
            numbers=frame["numbers"].numpy(),
            cell=frame["cell"].numpy(),
            pbc=frame["pbc"].numpy(),
        )
        graph = configuration_to_graph(configuration, model.r_max, dtype=torch.float64)
        assert graph.edge_index.shape[1] == frame["num_edges"], frame["name"]
        periodic = "stress" in frame
        out = forcefield(graph, True, periodic, False)
        n = len(frame["numbers"])
        deltas = dict(
            energy_per_atom=abs(out["energy"][0].item() - frame["energy"].item()) / n,
            node_energy=(out["atomic_energies"] - frame["node_energy"]).abs().max().item(),
            forces=(out["forces"] - frame["forces"]).abs().max().item(),
            stress=(out["stress"][0] - frame["stress"]).abs().max().item() if periodic else 0.0,
        )
        errors = {k: max(errors[k], deltas[k]) for k in errors}
    return errors


@pytest.mark.parametrize("name", EXACT)
def test_pickled_mace_model_matches_mace(name: str, tmp_path: Path) -> None:
    """MACE-MP-0 small/medium/large hidden irreps and plain MACE, read from `.model` files."""
    model = mace_model_from_export(read_mace_export(_unpack(name, tmp_path)))
    reference = _reference(name)
    errors = _max_errors(model, reference["structures"]["Default"])
    assert max(errors.values()) < TOL, errors


def test_unimplemented_options_are_refused_by_name(tmp_path: Path, capsys) -> None:
    """A model with an option equimd does not implement: one line naming it, no traceback."""
    record = read_mace_export(_unpack("mp_medium", tmp_path))
    record["hyperparameters"]["interaction_cls"] = "RealAgnosticAttResidualInteractionBlock"
    path = tmp_path / "converted.pt"
    torch.save(record, path)
    assert cli_main(["import", "mace", str(path), "-o", str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("equimd: error:") and err.count("\n") == 1, err
    assert "interaction_cls='RealAgnosticAttResidualInteractionBlock'" in err


def _chebyshev_model(tmp_path: Path):
    with pytest.warns(UserWarning, match="chebyshev.*not -dE/dr"):
        return mace_model_from_export(read_mace_export(_unpack("chebyshev", tmp_path)))


def _energy_and_forces(model, frame: dict, positions: torch.Tensor | None = None):
    configuration = Configuration(
        positions=(frame["positions"] if positions is None else positions).numpy(),
        numbers=frame["numbers"].numpy(),
        cell=frame["cell"].numpy(),
        pbc=frame["pbc"].numpy(),
    )
    graph = configuration_to_graph(configuration, model.r_max, dtype=torch.float64)
    out = ForceField(model)(graph, True, False, False)
    return out["energy"][0].item(), out["forces"]


def test_chebyshev_energies_match_mace(tmp_path: Path) -> None:
    """radial_type="chebyshev": mace's T_n(r) (r in Å), by equimd's own recursion."""
    model = _chebyshev_model(tmp_path)
    for frame in _reference("chebyshev")["structures"]["Default"]:
        n = len(frame["numbers"])
        energy, _ = _energy_and_forces(model, frame)
        assert abs(energy - frame["energy"].item()) / n < TOL, frame["name"]
        # and at mace's displaced positions
        step, direction = frame["fd_step"], frame["fd_direction"]
        for sign, mace_energy in zip((1.0, -1.0), frame["fd_energies"], strict=True):
            displaced, _ = _energy_and_forces(
                model, frame, frame["positions"] + sign * step * direction
            )
            assert abs(displaced - mace_energy.item()) / n < TOL, frame["name"]


def test_chebyshev_forces_are_negative_energy_gradient_unlike_mace(tmp_path: Path) -> None:
    """equimd's forces are -dE/dr of the energy both codes agree on (the central difference of
    mace's own energies); mace-torch's forces are not: torch.special.chebyshev_polynomial_t has
    no derivative, so mace drops the radial basis' gradient."""
    model = _chebyshev_model(tmp_path)
    for frame in _reference("chebyshev")["structures"]["Default"]:
        direction = frame["fd_direction"]
        plus, minus = (e.item() for e in frame["fd_energies"])
        slope = (plus - minus) / (2 * frame["fd_step"])  # dE/dλ along direction, eV/Å
        _, forces = _energy_and_forces(model, frame)
        ours = -(forces * direction).sum().item()
        theirs = -(frame["forces"] * direction).sum().item()
        scale = max(1.0, frame["forces"].abs().max().item())
        assert abs(ours - slope) < 1e-6 * scale, (frame["name"], ours, slope)
        assert abs(theirs - slope) > 1e-3 * scale, (frame["name"], theirs, slope)


@pytest.mark.parametrize(
    "block",
    ["RealAgnosticAttResidualInteractionBlock", "RealAgnosticResidualNonLinearInteractionBlock"],
)
def test_unimplemented_interaction_blocks_are_refused_by_name(block: str, tmp_path: Path) -> None:
    record = read_mace_export(_unpack("mp_medium", tmp_path))
    record["hyperparameters"]["interaction_cls"] = block
    with pytest.raises(MaceImportError, match=f"interaction_cls='{block}'"):
        mace_model_from_export(record)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mpa", "density", "omat"])
def test_deployed_model_with_radial_options_matches_mace(name: str, tmp_path: Path) -> None:
    """The TorchScript export (in-graph neighbor list) keeps ZBL and the distance transform."""
    from equimd.deploy.export import export_model
    from equimd.deploy.load import load

    model = mace_model_from_export(read_mace_export(_unpack(name, tmp_path)))
    deployed = load(export_model(model, tmp_path / "deployed.pt", dtype="float64"))
    for frame in _reference(name)["structures"]["Default"]:
        out = deployed(frame["positions"], frame["numbers"], frame["cell"], frame["pbc"])
        n = len(frame["numbers"])
        assert abs(out["energy"].item() - frame["energy"].item()) / n < TOL, frame["name"]
        assert (out["forces"] - frame["forces"]).abs().max() < TOL, frame["name"]
        if "stress" in frame:
            assert (out["stress"] - frame["stress"]).abs().max() < TOL, frame["name"]


def test_float32_model_file_matches_mace_to_float32_rounding(tmp_path: Path) -> None:
    """A model saved under mace-torch's default_dtype float32 imports as float32; it agrees
    with mace to float32 rounding (energies ~1e3 eV: relative 1e-6), not better."""
    model = mace_model_from_export(read_mace_export(_unpack("float32", tmp_path)))
    assert next(model.parameters()).dtype == torch.float32
    forcefield = ForceField(model)
    for frame in _reference("float32")["structures"]["Default"]:
        configuration = Configuration(
            positions=frame["positions"].numpy(),
            numbers=frame["numbers"].numpy(),
            cell=frame["cell"].numpy(),
            pbc=frame["pbc"].numpy(),
        )
        graph = configuration_to_graph(configuration, model.r_max, dtype=torch.float32)
        out = forcefield(graph, True, False, False)
        energy = frame["energy"].item()
        assert abs(out["energy"][0].item() - energy) < 1e-6 * abs(energy), frame["name"]
        scale = frame["forces"].abs().max().item()
        assert (out["forces"] - frame["forces"]).abs().max() < 1e-5 * scale + 1e-5, frame["name"]


@pytest.mark.parametrize("head", ["pt_head", pytest.param("water", marks=SLOW)])
def test_multihead_model_matches_mace_for_each_head(head: str, tmp_path: Path) -> None:
    path = _unpack("multihead", tmp_path)
    model = mace_model_from_export(read_mace_export(path, head=head))
    errors = _max_errors(model, _reference("multihead")["structures"][head])
    assert max(errors.values()) < TOL, errors


def test_multihead_default_is_the_fine_tuned_head(tmp_path: Path) -> None:
    record = read_mace_export(_unpack("multihead", tmp_path))
    assert record["hyperparameters"]["heads"] == ["water"]
    assert record["hyperparameters"]["all_heads"] == ["pt_head", "water"]
    with pytest.raises(MaceImportError, match="no head 'nope'.*pt_head"):
        read_mace_export(tmp_path / "multihead.model", head="nope")


def test_training_checkpoint_imports_with_architecture(tmp_path: Path) -> None:
    checkpoint = _unpack("checkpoint", tmp_path)
    architecture = _unpack("mp_medium", tmp_path)
    with pytest.raises(MaceImportError, match="--architecture"):
        read_mace_export(checkpoint)
    model = mace_model_from_export(read_mace_export(checkpoint, architecture=architecture))
    errors = _max_errors(model, _reference("checkpoint")["structures"]["Default"])
    assert max(errors.values()) < TOL, errors


@pytest.mark.slow
def test_checkpoint_of_a_distributed_run_imports(tmp_path: Path) -> None:
    """DistributedDataParallel checkpoints prefix every state-dict key with "module."."""
    checkpoint = torch.load(_unpack("checkpoint", tmp_path), weights_only=True)
    checkpoint["model"] = {f"module.{k}": v for k, v in checkpoint["model"].items()}
    torch.save(checkpoint, tmp_path / "ddp.pt")
    record = read_mace_export(tmp_path / "ddp.pt", architecture=_unpack("mp_medium", tmp_path))
    errors = _max_errors(
        mace_model_from_export(record), _reference("checkpoint")["structures"]["Default"]
    )
    assert max(errors.values()) < TOL, errors


def test_cli_imports_a_model_file_in_one_command(tmp_path: Path, capsys) -> None:
    """MACE-MPA-0's architecture (density blocks, ZBL, Agnesi) survives the checkpoint."""
    path = _unpack("mpa", tmp_path)
    output = tmp_path / "imported.pt"
    assert cli_main(["import", "mace", str(path), "-o", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    model = load_model(output).double()
    errors = _max_errors(model, _reference("mpa")["structures"]["Default"])
    assert max(errors.values()) < TOL, errors


def test_info_lists_heads_of_a_mace_file(tmp_path: Path, capsys) -> None:
    path = _unpack("multihead", tmp_path)
    assert cli_main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pt_head" in out and "water (default)" in out


# ------------------------------------------------------------------------ refusing code


class _RunsACommand:
    """Unpickling this calls os.system (a classic malicious pickle)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_torch_file_is_refused_and_nothing_runs(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.model"
    torch.save({"model": _RunsACommand(marker)}, path)
    with pytest.raises(MacePickleError, match=r"'(posix|os|nt)\.system'"):
        load_records(path)
    assert not marker.exists()
    # the command line: one line, no traceback
    assert cli_main(["import", "mace", str(path), "-o", str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("equimd: error:") and "system" in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert not marker.exists()


def test_malicious_plain_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_RunsACommand(marker), protocol=2))
    with pytest.raises(MaceImportError, match="system"):
        read_mace_export(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load"), ("numpy", "load")],
)
def test_globals_outside_the_allow_list_are_refused_by_name(
    module: str, name: str, tmp_path: Path
) -> None:
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    path = tmp_path / "global.pkl"
    path.write_bytes(payload)
    with pytest.raises(MacePickleError, match=f"'{module}.{name}'"):
        load_records(path)


def test_mace_classes_become_inert_records(tmp_path: Path) -> None:
    """A mace class name is allowed, but constructing it runs nothing of mace (not installed)."""
    assert "mace" not in sys.modules
    payload = (
        b"\x80\x02cmace.tools.utils\nsetup_logger\nq\x00X\x03\x00\x00\x00argq\x01\x85q\x02Rq\x03."
    )
    path = tmp_path / "record.pkl"
    path.write_bytes(payload)
    record = load_records(path)
    assert record.qualname == "mace.tools.utils.setup_logger" and record.args == ("arg",)
    assert "mace" not in sys.modules


def test_not_a_model_is_refused_with_its_content_named(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(EquimdError, match="Tensor, not a mace-torch model"):
        read_mace_export(path)


def test_chebyshev_basis_scripts_and_matches_the_closed_form() -> None:
    """T_n(r) = cosh(n arccosh r) for r > 1 and cos(n arccos r) for |r| < 1, n = 1..8; the
    TorchScript module gives the same numbers."""
    from equimd.potentials.nn.mace_radial import ChebyshevBasis

    basis = ChebyshevBasis(r_max=5.0, num_basis=8)
    scripted = torch.jit.script(basis)
    n = torch.arange(1, 9, dtype=torch.float64)
    outside = torch.linspace(1.05, 5.0, 7, dtype=torch.float64).unsqueeze(-1)
    inside = torch.linspace(-0.95, 0.95, 7, dtype=torch.float64).unsqueeze(-1)
    for r, closed_form in (
        (outside, torch.cosh(n * torch.acosh(outside))),
        (inside, torch.cos(n * torch.acos(inside))),
    ):
        values = basis(r)
        assert torch.allclose(values, closed_form, rtol=1e-12, atol=1e-12)
        assert torch.equal(scripted(r), values)


@pytest.mark.slow
def test_deployed_chebyshev_model_keeps_conservative_forces(tmp_path: Path) -> None:
    """The TorchScript export of an imported Chebyshev model: mace's energies, and forces equal
    to the eager model's (-dE/dr)."""
    from equimd.deploy.export import export_model
    from equimd.deploy.load import load

    model = _chebyshev_model(tmp_path)
    deployed = load(export_model(model, tmp_path / "deployed.pt", dtype="float64"))
    for frame in _reference("chebyshev")["structures"]["Default"]:
        out = deployed(frame["positions"], frame["numbers"], frame["cell"], frame["pbc"])
        _, forces = _energy_and_forces(model, frame)
        n = len(frame["numbers"])
        assert abs(out["energy"].item() - frame["energy"].item()) / n < TOL, frame["name"]
        assert (out["forces"] - forces).abs().max() < TOL, frame["name"]


def test_docs_name_every_mace_option_the_importer_reads(tmp_path: Path) -> None:
    """docs/mace.md says for every mace-torch option read off a file whether it is imported
    or refused, and names every interaction block mace-torch has."""
    record = read_mace_export(_unpack("mp_medium", tmp_path))
    docs = (Path(__file__).parents[1] / "docs" / "mace.md").read_text()
    internal = {  # per-layer details and derived values, not mace-torch options
        "layers", "all_heads", "num_elements", "radial_mlp_activation_cst",
        "avg_num_neighbors_per_interaction", "correlation_per_interaction", "radial_MLP_class",
    }  # fmt: skip
    options = [key for key in record["hyperparameters"] if key not in internal]
    blocks = [
        "RealAgnosticInteractionBlock", "RealAgnosticResidualInteractionBlock",
        "RealAgnosticDensityInteractionBlock", "RealAgnosticDensityResidualInteractionBlock",
        "RealAgnosticAttResidualInteractionBlock", "RealAgnosticResidualNonLinearInteractionBlock",
    ]  # fmt: skip
    missing = [name for name in options + blocks if f"`{name}`" not in docs]
    assert not missing, f"docs/mace.md does not name {missing}"


def test_chebyshev_import_says_in_one_line_that_forces_differ_from_mace(
    tmp_path: Path, capsys
) -> None:
    path = _unpack("chebyshev", tmp_path)
    assert cli_main(["import", "mace", str(path), "-o", str(tmp_path / "out.pt")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("equimd: note: radial_type='chebyshev'") and err.count("\n") == 1, err
    assert cli_main(["info", str(path)]) == 0
    captured = capsys.readouterr()
    assert re.search(r"note:\s+radial_type='chebyshev'", captured.out), captured.out
    assert "importable" in captured.out
    assert "Warning" not in captured.out + captured.err
