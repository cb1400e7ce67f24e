"""Reference energies and forces of the published Graphormer-3D for tests/test_graphormer3d.py.

Run by the peer venv (bash benchmarks/peers/setup_peers.sh graphormer):

    .peers/graphormer/bin/python benchmarks/peers/make_graphormer3d_fixtures.py

The model is `Graphormer3D` from PyPI graphormer-pretrained 0.2.3
(graphormer_pretrained/models/graphormer_3d.py, the microsoft/Graphormer OC20 model). That
module imports three names from `fairseq.models` (a base class and two registry decorators);
fairseq is not installed (its last release, 0.12.2, builds its C++ extensions against whatever
torch the build finds and does not support Python 3.11), so when it is missing this script puts
a `fairseq.models` module with those three names in `sys.modules` first: the base class is
`torch.nn.Module`, the decorators return the class unchanged. They take no part in the numbers.

A small model (random weights, float64, eval mode) is evaluated on a few molecules with all
atoms tagged 1 (the OC20 tag that counts in the energy): the energy it returns and forces by
autograd (its in-place `delta_pos /=` is harmless with saved tensors cloned). Twice: as
published, whose Gaussian basis is computed in float32 even in a float64 model ("energy",
"forces"), and with those float32 casts made no-ops ("energy_float64", "forces_float64"). Written:
tests/data/graphormer3d_reference.pt (the state dict, the configuration, the structures and
the results; a few tens of kB, loaded with weights_only=True).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from argparse import Namespace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "graphormer3d_reference.pt"

CONFIG = dict(
    layers=2,
    blocks=2,
    embed_dim=16,
    ffn_embed_dim=24,
    attention_heads=4,
    num_kernel=8,
    input_dropout=0.0,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
)


def fairseq_models_shim() -> None:
    try:
        import fairseq.models  # noqa: F401

        return
    except ImportError:
        pass
    models = types.ModuleType("fairseq.models")
    models.BaseFairseqModel = torch.nn.Module
    models.register_model = lambda name: lambda cls: cls
    models.register_model_architecture = lambda model, name: lambda fn: fn
    package = types.ModuleType("fairseq")
    package.models = models
    sys.modules["fairseq"] = package
    sys.modules["fairseq.models"] = models


def load_graphormer3d_module() -> types.ModuleType:
    """graphormer_pretrained/models/graphormer_3d.py by its path: the package's
    models/__init__.py imports the 2D model, which needs much more of fairseq."""
    package = importlib.util.find_spec("graphormer_pretrained")
    path = Path(package.submodule_search_locations[0]) / "models" / "graphormer_3d.py"
    spec = importlib.util.spec_from_file_location("graphormer_pretrained_3d", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def structures() -> list[tuple[list[int], torch.Tensor]]:
    """(atomic numbers, positions [N, 3] Å): molecules of H, C, O and Cu, distorted."""
    gen = torch.Generator().manual_seed(7)
    water = ([8, 1, 1], [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    methanol = (
        [6, 8, 1, 1, 1, 1],
        [
            [0, 0, 0],
            [1.43, 0, 0],
            [-0.36, 1.03, 0],
            [-0.36, -0.51, 0.89],
            [-0.36, -0.51, -0.89],
            [1.75, 0.9, 0],
        ],
    )
    cluster = (
        [29, 29, 8, 6, 1],
        [[0, 0, 0], [2.5, 0.1, 0], [1.2, 1.6, 0.3], [1.1, -1.7, 0.8], [3.6, 1.2, -0.5]],
    )
    out = []
    for numbers, positions in (water, methanol, cluster):
        positions = torch.tensor(positions, dtype=torch.float64)
        positions = positions + 0.05 * torch.randn(
            positions.shape, generator=gen, dtype=torch.float64
        )
        out.append((numbers, positions))
    return out


def energy_and_forces(model, atoms: torch.Tensor, positions: torch.Tensor):
    """Energy (eV) and forces [N, 3] (eV/Å, autograd) of one molecule, all atoms tagged 1."""
    tags = torch.ones_like(atoms)
    pos = positions.clone().unsqueeze(0).requires_grad_(True)
    # saved tensors are cloned: the model divides delta_pos in place after taking its norm
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        energy, _, _ = model(atoms, tags, pos, torch.ones_like(atoms, dtype=torch.bool))
        (gradient,) = torch.autograd.grad(energy.sum(), pos)
    return energy.detach()[0], -gradient[0].detach()


@contextlib.contextmanager
def float32_casts(enabled: bool):
    """The reference evaluates its Gaussian basis in float32 (`x.float()`, `.float()` of the
    means and widths) even in a float64 model. enabled=False makes Tensor.float() return the
    tensor unchanged for the duration, so the same code runs in float64 throughout."""
    original = torch.Tensor.float
    if not enabled:
        torch.Tensor.float = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.float = original


def main() -> None:
    fairseq_models_shim()
    Graphormer3D = load_graphormer3d_module().Graphormer3D

    torch.manual_seed(0)
    model = Graphormer3D(Namespace(**CONFIG)).double().eval()
    with torch.no_grad():  # non-default values where the defaults are ones and zeros
        for name, tensor in model.named_parameters():
            if (
                "layer_norm" in name
                or name.startswith("final_ln")
                or name.startswith("gbf.mul")
                or name.startswith("gbf.bias")
            ):
                tensor.add_(0.2 * torch.randn_like(tensor))
        model.energe_agg_factor.weight.fill_(0.7)
    results = []
    for numbers, positions in structures():
        atoms = torch.tensor([numbers])
        result = dict(numbers=atoms[0], positions=positions)
        for suffix, casts in (("", True), ("_float64", False)):
            with float32_casts(enabled=casts):
                energy, forces = energy_and_forces(model, atoms, positions)
            result["energy" + suffix] = energy
            result["forces" + suffix] = forces
            print(f"{len(numbers)} atoms{suffix or ' (as published)'}: E = {float(energy):.12f} eV")
        results.append(result)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    torch.save(dict(config=CONFIG, state_dict=state, structures=results), OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
