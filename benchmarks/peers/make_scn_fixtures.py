"""Reference energies and forces of fairchem-core 1.10's SCN for tests/test_scn.py.

Run with the fairchem peer's python (benchmarks/peers/venvs/fairchem.txt):

    .peers/fairchem/bin/python benchmarks/peers/make_scn_fixtures.py

Writes tests/data/scn_fairchem.pt: per configuration, fairchem's constructor arguments, its
state dict (random weights, float64) and, per structure, the edges, fairchem's energy and the
forces −dE/dx by central finite differences of that energy. Around the unmodified fairchem
modules (`SphericalChannelNetwork`, its `EdgeBlock`, `MessageBlock`, `DistanceBlock`,
`SphericalHarmonicsHelper`), three things are fixed, each for a stated reason:

- the graph: `generate_graph` returns the ase neighbor list written to the fixture (the equimd
  test evaluates the same edges; fairchem's own radius graph needs torch_scatter). Edges are
  sorted by receiver, which `_rank_edge_distances` assumes;
- the edge frames: fairchem draws the roll of each frame at random per call, and SCN's
  messages depend on that roll, so `_init_edge_rot_mat` returns the deterministic frame
  equimd uses (`equimd.potentials.nn.wigner.edge_frame_rotation`, re-derived below, since the
  peer does not import equimd);
- forces: fairchem detaches the Wigner matrices (its forces come from a direct force head),
  so its autograd gradient of the energy is not −dE/dx; central differences of the energy are.

torch_scatter, imported by fairchem.core.common.utils, has no wheel for torch 2.4 on PyPI; a
stub whose functions raise is registered instead (SCN's forward pass never calls it).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import primitive_neighbor_list


def _stub_torch_scatter() -> None:
    try:
        import torch_scatter  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch_scatter")

        def unavailable(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("torch_scatter stub: not available in this environment")

        stub.scatter = stub.segment_coo = stub.segment_csr = unavailable
        sys.modules["torch_scatter"] = stub


_stub_torch_scatter()
torch.set_default_dtype(torch.float64)

from fairchem.core.models.base import GraphData  # noqa: E402
from fairchem.core.models.scn.scn import SphericalChannelNetwork  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "scn_fairchem.pt"
CUTOFF = 4.0
# num_resolutions 1: equimd refuses 2 (the second resolution is chosen by neighbour rank, which
# makes the energy discontinuous); num_bands 1 likewise (docs/architectures/scn.md)
CONFIGS = {
    # mmax 0, channel reduction (downsample/upsample), grid node update
    "lmax3_mmax0_grid": dict(num_interactions=2, lmax=3, mmax=0, sphere_channels=6,
                             sphere_channels_reduce=4, hidden_channels=10,
                             num_basis_functions=8, use_grid=True, num_sphere_samples=32,
                             distance_resolution=0.25),
    # mmax 1 with the paper's four taps (rotations about the edge by 0, 90, 180, 270 degrees)
    "lmax4_mmax1_taps": dict(num_interactions=2, lmax=4, mmax=1, num_taps=-1,
                             sphere_channels=4, sphere_channels_reduce=4, hidden_channels=8,
                             num_basis_functions=6, use_grid=True, num_sphere_samples=48,
                             distance_resolution=0.5),
    # mmax 1, one tap, linear aggregation (no grid node update), three layers
    "lmax2_mmax1_linear": dict(num_interactions=3, lmax=2, mmax=1, num_taps=1,
                               sphere_channels=5, sphere_channels_reduce=5, hidden_channels=7,
                               num_basis_functions=6, use_grid=False, num_sphere_samples=16,
                               distance_resolution=0.5),
}  # fmt: skip


def edge_frame_rotation(unit: torch.Tensor) -> torch.Tensor:
    """R [E, 3, 3], R r̂ = ŷ: the two-chart frame of equimd.potentials.nn.wigner."""
    x, y, z = unit.unbind(1)
    sigma = 1.0 - 2.0 * (y < 0).to(y.dtype)
    q = 1.0 / (1.0 + sigma * y)
    xzq = x * z * q
    rows = [
        y + sigma * z * z * q,
        -x,
        -sigma * xzq,
        x,
        y,
        z,
        -xzq,
        -sigma * z,
        sigma * y + x * x * q,
    ]
    return torch.stack(rows, dim=1).view(-1, 3, 3)


def structures() -> list[Atoms]:
    rng = np.random.default_rng(7)
    methanol = molecule("CH3OH")
    methanol.rattle(0.05, seed=1)
    copper_oxide = bulk("Cu", "fcc", a=3.6, cubic=True)
    copper_oxide.append("O")
    copper_oxide.positions[-1] = [0.9, 0.9, 0.1]
    copper_oxide.rattle(0.05, seed=2)
    mixed = Atoms(
        "HCOCuOH", positions=rng.uniform(0.0, 4.5, (6, 3)), cell=np.diag([4.6, 4.8, 5.0]),
        pbc=[True, True, False],
    )  # fmt: skip
    return [methanol, copper_oxide, mixed]


def edges(atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sender, receiver, shift), sorted by receiver (stable)."""
    cell = atoms.cell.array if atoms.pbc.any() else np.eye(3) * 100.0
    i, j, shift = primitive_neighbor_list(
        "ijS", atoms.pbc, cell, atoms.positions, CUTOFF, self_interaction=False
    )
    order = np.argsort(j, kind="stable")
    return i[order], j[order], shift[order].astype(np.float64)


class Graph:
    """What SphericalChannelNetwork.forward reads from a torch_geometric batch."""

    def __init__(self, numbers: torch.Tensor, positions: torch.Tensor) -> None:
        self.atomic_numbers = numbers
        self.pos = positions
        self.natoms = torch.tensor([len(numbers)])
        self.batch = torch.zeros(len(numbers), dtype=torch.long)


def fairchem_energy(model: SphericalChannelNetwork, atoms: Atoms, positions: np.ndarray) -> float:
    sender, receiver, shift = edges(atoms)
    pos = torch.tensor(positions)
    cell = torch.tensor(atoms.cell.array)
    # fairchem's edge vector: x_source − x_target (source = equimd's sender)
    vectors = pos[sender] - pos[receiver] - torch.tensor(shift) @ cell
    graph = GraphData(
        edge_index=torch.tensor(np.stack([sender, receiver])),
        edge_distance=torch.linalg.norm(vectors, dim=1),
        edge_distance_vec=vectors,
        cell_offsets=torch.tensor(shift),
        offset_distances=torch.tensor(shift) @ cell,
        neighbors=torch.tensor([len(sender)]),
        node_offset=0,
        batch_full=torch.zeros(len(atoms), dtype=torch.long),
        atomic_numbers_full=torch.tensor(atoms.numbers),
    )
    model.generate_graph = lambda data, *args, **kwargs: graph
    model._init_edge_rot_mat = lambda data, edge_index, vec: edge_frame_rotation(
        vec / torch.linalg.norm(vec, dim=1, keepdim=True)
    )
    data = Graph(torch.tensor(atoms.numbers), pos)
    with torch.no_grad():
        return float(model(data)["energy"].sum())


def finite_difference_forces(
    model: SphericalChannelNetwork, atoms: Atoms, step: float = 1e-4
) -> np.ndarray:
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.positions.copy(), atoms.positions.copy()
            plus[a, k] += step
            minus[a, k] -= step
            e_plus = fairchem_energy(model, atoms, plus)
            e_minus = fairchem_energy(model, atoms, minus)
            forces[a, k] = -(e_plus - e_minus) / (2.0 * step)
    return forces


def main() -> None:
    fixture = {"cutoff": CUTOFF, "configs": {}}
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        kwargs = dict(config, use_pbc=True, regress_forces=False, otf_graph=True, cutoff=CUTOFF,
                      max_num_elements=90, num_resolutions=1, num_bands=1,
                      max_num_neighbors=64, distance_function="gaussian",
                      basis_width_scalar=1.0)  # fmt: skip
        model = SphericalChannelNetwork(**kwargs).eval()
        with torch.no_grad():  # fairchem's ±0.001 edge embeddings would hide a species mix-up
            for block in model.edge_blocks:
                for table in (block.dist_block.source_embedding,
                              block.dist_block.target_embedding):  # fmt: skip
                    table.weight.normal_(0.0, 0.5)
        records = []
        for atoms in structures():
            sender, receiver, shift = edges(atoms)
            records.append(dict(
                numbers=atoms.numbers.copy(), positions=atoms.positions.copy(),
                cell=atoms.cell.array.copy(), pbc=atoms.pbc.copy(),
                sender=sender, receiver=receiver, shift=shift,
                energy=fairchem_energy(model, atoms, atoms.positions),
                forces=finite_difference_forces(model, atoms),
            ))  # fmt: skip
            print(name, atoms.get_chemical_formula(), len(sender), "edges",
                  f"E = {records[-1]['energy']:.6e} eV")  # fmt: skip
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        fixture["configs"][name] = dict(kwargs=kwargs, state_dict=state, structures=records)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
