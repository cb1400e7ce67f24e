"""AOTInductor export: trace energy + forces + stress, compile ahead of time, package.

Recipe (checked on torch 2.9.1, see DESIGN.md "Stack facts"):

1. rebuild the model with e3nn's TorchScript code generation off (``jit_script_fx=False``);
2. trace ``f(positions, numbers, edge_index, shifts, cell)`` — `ForceField` with its
   `torch.autograd.grad` inside — with `make_fx(tracing_mode="symbolic")`;
3. `torch.export.export` the traced graph with dynamic atom and edge counts
   (`torch.export.Dim`);
4. compile with AOTInductor and package as a PT2 archive, adding ``extra/metadata.json`` and
   the TorchScript neighbor list (``extra/neighbor_list.torchscript.b64``).

The neighbor list has data-dependent output shapes and is not traced: `equimd.deploy.load` runs the
stored TorchScript cell list (the same code as in the TorchScript format) and passes
(edge_index, shifts) to the compiled graph. The species check is also done by the loader,
before the call (a data-dependent branch cannot be traced); the compiled graph uses a plain
lookup table.
"""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from equimd.deploy.load import NEIGHBOR_LIST_FILE
from equimd.deploy.metadata import METADATA_FILE, dump_metadata
from equimd.deploy.rebuild import rebuild_model
from equimd.potentials.models.base import Potential

# Inductor's CPU vectorizer emits uncompilable C++ for some indirect-indexing bounds checks
# on this model family (VecMask<int64_t, 2> built from a scalar, torch 2.9.1). The indices
# come from our own neighbor list, so the checks are switched off.
INDUCTOR_CONFIGS: dict[str, Any] = {"assert_indirect_indexing": False}


def dtype_configs(dtype: torch.dtype) -> dict[str, Any]:
    """Inductor settings that depend on the dtype. float32: scalar (not SIMD-vectorised) CPU
    code, `cpp.simdlen=1`. torch 2.9.1's vectorised float32 code generation, checked on two
    cores: NequIP's package compiled with two threads corrupts the heap when run (`free():
    invalid next size`, an abort, whatever the threads at run time), and MACE's compiled with
    one thread does not compile (`'tmp20' was not declared`, an indirect vector load); with
    scalar code both are correct (tests/test_deploy.py, slow). float64 is unaffected."""
    return {"cpp.simdlen": 1} if dtype == torch.float32 else {}


class SpeciesLookup(nn.Module):
    """numbers [N] → species index [N] by table lookup, without the data-dependent check of
    `equimd.potentials.nn.species.SpeciesIndex` (the loader checks species before calling)."""

    def __init__(self, z_to_index: Tensor) -> None:
        super().__init__()
        self.register_buffer("z_to_index", z_to_index.clone())

    def forward(self, numbers: Tensor) -> Tensor:
        return self.z_to_index[numbers]


class EnergyForcesStress(nn.Module):
    """f(positions, numbers, edge_index, shifts, cell) → (energy [], atomic_energies [N],
    forces [N, 3], stress [3, 3], virial [3, 3]) through `ForceField` (autograd)."""

    def __init__(self, model: Potential) -> None:
        super().__init__()
        from equimd.potentials.forcefield import ForceField

        model.species_index = SpeciesLookup(model.species_index.z_to_index)
        self.forcefield = ForceField(model)

    def forward(
        self, positions: Tensor, numbers: Tensor, edge_index: Tensor, shifts: Tensor, cell: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        from equimd.deploy.module import single_structure_graph, single_structure_results

        pbc = torch.ones(3, dtype=torch.bool, device=positions.device)  # not read by models
        graph = single_structure_graph(positions, numbers, edge_index, shifts, cell, pbc)
        results = self.forcefield(graph, compute_forces=True, compute_stress=True)
        out = single_structure_results(results, True, True)
        return out["energy"], out["atomic_energies"], out["forces"], out["stress"], out["virial"]


def example_inputs(
    model: Potential, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A small periodic structure to trace with: 2×2×2 simple cubic, spacing 0.6 r_max.

    Atom and edge counts differ from each other and from 1, 2 and 3 so that no dynamic size
    is specialised or merged with a static one.
    """
    from equimd.deploy.module import NeighborList

    spacing = 0.6 * model.r_max
    grid = torch.stack(torch.meshgrid(*[torch.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = (grid.to(dtype) + 0.05 * torch.arange(8, dtype=dtype).unsqueeze(1)) * spacing
    numbers = torch.tensor([model.species[i % len(model.species)] for i in range(8)])
    cell = torch.eye(3, dtype=dtype) * 2 * spacing
    pbc = torch.ones(3, dtype=torch.bool)
    edge_index, shifts = NeighborList(model.r_max)(positions, cell, pbc)
    inputs = (positions, numbers, edge_index, shifts, cell)
    return tuple(t.to(device) for t in inputs)  # type: ignore[return-value]


@contextlib.contextmanager
def stage(say: Callable[[str], None] | None, what: str, heartbeat_s: float = 15.0) -> Iterator[None]:
    """Say `what` before a stage and its duration after it; while it runs, a line every
    `heartbeat_s` seconds (Inductor's C++ compile is a minute of silence otherwise)."""
    if say is None:
        yield
        return
    say(f"  {what} ...")
    started = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(heartbeat_s):
            say(f"  ... still {what}: {time.monotonic() - started:.0f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    say(f"  {what}: {time.monotonic() - started:.1f} s")


def aoti_package_bytes(
    model: Potential, dtype: torch.dtype, device: torch.device, metadata: dict[str, Any],
    say: Callable[[str], None] | None = None,
) -> bytes:
    """Trace, export, compile and package `model`; return the PT2 archive bytes. `say` gets
    a line per stage and a heartbeat during the compile (the CLI passes `print`)."""
    from torch.export.pt2_archive._package import package_pt2
    from torch.fx.experimental.proxy_tensor import make_fx

    from equimd.deploy.module import NeighborList

    function = EnergyForcesStress(rebuild_model(model, dtype, jit_script_fx=False)).to(device)
    inputs = example_inputs(model, dtype, device)
    with stage(say, "tracing energy, forces and stress (make_fx)"):
        traced = make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*inputs)
    atoms = torch.export.Dim("atoms", min=1)
    edges = torch.export.Dim("edges", min=0)
    dynamic_shapes = ({0: atoms}, {0: atoms}, {1: edges}, {0: edges}, None)
    with stage(say, "exporting with dynamic atom and edge counts (torch.export)"):
        exported = torch.export.export(traced, inputs, dynamic_shapes=dynamic_shapes)
    options = {"aot_inductor.package": True, **INDUCTOR_CONFIGS, **dtype_configs(dtype)}
    with stage(say, "compiling C++ with Inductor (about a minute on 2 cores)"):
        aoti_files = torch._inductor.aot_compile(exported.module(), inputs, options=options)

    neighbor_list = io.BytesIO()
    torch.jit.save(torch.jit.script(NeighborList(model.r_max)), neighbor_list)
    buffer = io.BytesIO()
    package_pt2(
        buffer,
        aoti_files=aoti_files,
        extra_files={
            METADATA_FILE: dump_metadata(metadata),
            NEIGHBOR_LIST_FILE: base64.b64encode(neighbor_list.getvalue()).decode(),
        },
    )
    return buffer.getvalue()
