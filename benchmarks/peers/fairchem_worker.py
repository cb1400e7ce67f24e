"""Benchmark worker for the fairchem peer: fairchem-core 1.10's eSCN and GemNetT (runs in
.peers/fairchem, torch 2.4; never imports equimd).

    .peers/fairchem/bin/python benchmarks/peers/fairchem_worker.py --row-json '<row>' \
        --system water --dtype float64 --threads 2 --repeats 5 --warmup 1

The row's ``peer`` entry says which model: ``{"name": "fairchem", "model": "escn" | "gemnet",
"kwargs": {...}}`` (fairchem's constructor arguments; `cutoff` is the row's r_max). The model
is built as the parity fixture scripts build it (seeded random float64 weights: the sizes of
the row's equimd model, not its weights) and energy + forces are timed with `harness.measure`,
the measurement code of equimd's worker. The graph is built beforehand by ASE's neighbor list
(`peer_graphs`), as equimd's neighbor list is built beforehand; what one timed evaluation
includes:

- eSCN (`make_escn_fixtures`' set-up): fairchem's `eSCN.forward` (`regress_forces=False`, the
  energy head) with `generate_graph` returning the prebuilt edges, whose vectors and
  distances are computed from the positions inside the timed call, and `_init_edge_rot_mat`
  returning the deterministic edge frame equimd uses (the fixtures' `edge_frame_rotation`;
  fairchem's own draws a random roll per call); forces = −∂E/∂x by autograd. fairchem
  detaches its Wigner matrices, so its backward pass skips the frames' derivative, which
  equimd's includes (equimd's forces are −dE/dx; the peer's gradient is not, see the fixture
  script: the same work but that term). Its grid non-linearity is compared with equimd's
  `nonlinearity="grid"` (the row's `peer.equimd_hyperparameters`).
- GemNet-T (`make_gemnet_fixtures.evaluate`: the body of `GemNetT.forward`, bases, embeddings,
  interaction and output blocks, forces by autograd), with its Python-loop interaction graph
  replaced by index arrays built beforehand (`peer_graphs.gemnet_triplets`,
  `peer_graphs.reverse_edges`: the same triplets and reverse edges). So the peer's time
  excludes the triplet and reverse-edge construction, which equimd's includes (equimd builds
  both inside the model).

float64 only: the fixtures' evaluation paths are float64 (the parity dtype); a float32 request
is answered with a reason. Prints one ``BENCH_RESULT {json}`` line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as bench  # noqa: E402  (benchmarks/harness.py: systems, timing, workers)
import peer_graphs  # noqa: E402


def escn_evaluation(kwargs: dict, atoms, r_max: float):
    """(model, evaluate, graph sizes) for fairchem's eSCN on `atoms` (make_escn_fixtures)."""
    # its torch_scatter stand-in, then fairchem's eSCN, GraphData and the fixtures' frame
    import make_escn_fixtures as fixtures
    import numpy as np
    import torch

    torch.manual_seed(0)
    model = fixtures.eSCN(
        **dict(kwargs, cutoff=r_max, use_pbc=True, regress_forces=False, otf_graph=True)
    ).eval().requires_grad_(False)  # inference: no weight gradients (as equimd's worker)
    sender, receiver, shift = peer_graphs.neighbor_graph(atoms, r_max)
    edge_index = torch.tensor(np.stack([sender, receiver]))
    shifts = torch.tensor(shift, dtype=torch.float64)
    cell = torch.tensor(np.asarray(atoms.cell), dtype=torch.float64)
    offsets = shifts @ cell
    numbers = torch.tensor(atoms.numbers)
    positions0 = torch.tensor(atoms.positions, dtype=torch.float64)
    model._init_edge_rot_mat = lambda data, edge_index, vec: fixtures.edge_frame_rotation(
        vec / torch.linalg.norm(vec, dim=1, keepdim=True)
    )

    def evaluate() -> None:
        positions = positions0.clone().requires_grad_(True)
        # fairchem's edge vector: x_source − x_target (make_escn_fixtures.fairchem_energy)
        vectors = positions[edge_index[0]] - positions[edge_index[1]] - offsets
        graph = fixtures.GraphData(
            edge_index=edge_index,
            edge_distance=torch.linalg.norm(vectors, dim=1),
            edge_distance_vec=vectors,
            cell_offsets=shifts,
            offset_distances=offsets,
            neighbors=torch.tensor([len(sender)]),
            node_offset=0,
            batch_full=torch.zeros(len(atoms), dtype=torch.long),
            atomic_numbers_full=numbers,
        )
        model.generate_graph = lambda data, *args, **kw: graph
        energy = model(fixtures.Graph(numbers, positions))["energy"].sum()
        (gradient,) = torch.autograd.grad(energy, positions)
        (-gradient).sum().item()

    return model, evaluate, {"edges": len(sender)}


def gemnet_evaluation(kwargs: dict, atoms, r_max: float):
    """(model, evaluate, graph sizes) for fairchem's GemNetT on `atoms` (make_gemnet_fixtures)."""
    # its torch_scatter / torch_sparse stand-ins, then fairchem's GemNetT
    import make_gemnet_fixtures as fixtures
    import torch

    sender, receiver, shift = peer_graphs.neighbor_graph(atoms, r_max)
    id3_ba, id3_ca, ragged = peer_graphs.gemnet_triplets(receiver, len(atoms))
    id_swap = peer_graphs.reverse_edges(sender, receiver, shift)
    as_long = lambda values: torch.as_tensor(values, dtype=torch.long)  # noqa: E731
    prebuilt = (
        as_long(sender),
        as_long(receiver),
        torch.tensor(shift, dtype=torch.float64),
        as_long(id_swap),
        as_long(id3_ba),
        as_long(id3_ca),
        as_long(ragged),
    )
    fixtures.interaction_graph = lambda _atoms: prebuilt

    torch.manual_seed(0)
    model = fixtures.GemNetT(
        **dict(kwargs, cutoff=r_max, otf_graph=True, regress_forces=False)
    ).eval().requires_grad_(False)  # inference: no weight gradients (as equimd's worker)

    def evaluate() -> None:
        fixtures.evaluate(model, atoms)["forces"].sum().item()

    return model, evaluate, {"edges": len(sender), "triplets": len(id3_ba)}


MODELS = {"escn": escn_evaluation, "gemnet": gemnet_evaluation}


def main() -> None:
    args = bench.worker_arguments()
    peer = args.row["peer"]
    result: dict = {"implementation": f"fairchem {peer['model']}"}
    if bench.emitted_unless_float64(args.dtype, result):
        return

    import torch

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)  # as the fixtures: the model is float64
    atoms = bench.SYSTEMS[args.system]()
    model, evaluate, sizes = MODELS[peer["model"]](peer["kwargs"], atoms, float(args.row["r_max"]))
    model.double()
    from importlib.metadata import version

    result.update(
        version=version("fairchem-core"),
        torch=torch.__version__,
        atoms=len(atoms),
        **sizes,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    bench.emit_measurement(result, evaluate, args)


if __name__ == "__main__":
    main()
