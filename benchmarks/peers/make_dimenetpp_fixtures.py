"""DimeNet++ parity fixtures from torch_geometric's DimeNetPlusPlus (run by the pyg peer venv).

    bash benchmarks/peers/setup_peers.sh pyg      # or: python3 -m venv .peers/pyg && pip install -r
    .peers/pyg/bin/python benchmarks/peers/make_dimenetpp_fixtures.py

Writes tests/data/dimenetpp_reference.pt: the hyperparameters, torch_geometric's state dict,
the spherical Bessel roots and normalisers torch_geometric uses (float32 roots from its
`dimenet_utils.Jn_zeros`), and per structure its positions, numbers, cell, pbc with the
energy, per-atom energies and forces (float64) of torch_geometric's blocks.

torch_geometric's `DimeNet.forward` needs torch_cluster (radius_graph) and torch_sparse
(`triplets`), which have no wheels for torch 2.9 on PyPI. So this script builds the inputs of
torch_geometric's blocks itself, and runs the blocks (`rbf`, `sbf`, `emb`, `interaction_blocks`,
`output_blocks`) exactly as `DimeNet.forward` does: edges from ASE's neighbor list ("ijS",
periodic images included), triplets by a plain Python double loop over edges (k→j, j→i; only
the exact reverse edge excluded, as equimd does for periodic cells), and angles by
torch_geometric's DimeNet++ formula atan2(|r_ij × r_jk|, r_ij · r_jk) on the image vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list
from scipy.special import spherical_jn
from torch_geometric.nn.models import DimeNetPlusPlus
from torch_geometric.nn.models.dimenet_utils import Jn_zeros

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "dimenetpp_reference.pt"
CUTOFF = 4.0
HYPERPARAMETERS = dict(
    hidden_channels=16,
    num_blocks=2,
    int_emb_size=8,
    basis_emb_size=4,
    out_emb_channels=12,
    num_spherical=4,
    num_radial=5,
    envelope_exponent=5,
    num_before_skip=1,
    num_after_skip=2,
    num_output_layers=2,
)


def structures(rng: np.random.Generator) -> list[tuple[str, Atoms]]:
    """Molecules (no cell) and periodic cells, some smaller than the cutoff."""
    frames = []
    for index in range(3):  # random H/C/O molecules, atoms at least 0.9 Å apart
        n = 6 + 2 * index
        positions = []
        while len(positions) < n:
            trial = rng.uniform(0.0, 3.5, size=3)
            if all(np.linalg.norm(trial - p) > 0.9 for p in positions):
                positions.append(trial)
        numbers = rng.choice([1, 6, 8], size=n)
        frames.append((f"molecule_{index}", Atoms(numbers=numbers, positions=positions)))
    cu = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)  # primitive cell doubled: smaller than the cutoff
    cu.rattle(0.08, seed=1)
    frames.append(("cu_small_cell", cu))
    cell = np.array([[4.2, 0.3, 0.0], [0.5, 4.6, 0.2], [0.1, -0.4, 4.4]])
    mixed = Atoms(
        numbers=[6, 8, 1, 1, 29, 6],
        cell=cell,
        pbc=True,
        scaled_positions=rng.uniform(0.0, 1.0, size=(6, 3)),
    )
    frames.append(("mixed_triclinic", mixed))
    slab = bulk("Cu", "fcc", a=3.6, cubic=True)
    slab.pbc = (True, True, False)
    slab.rattle(0.1, seed=2)
    frames.append(("cu_slab", slab))
    return frames


def triplets_by_loops(sender, receiver, shifts) -> tuple[list[int], list[int]]:
    """(edge_kj, edge_ji) for every edge pair k→j, j→i but the exact reverse edge."""
    edge_kj, edge_ji = [], []
    for ji in range(len(sender)):
        for kj in range(len(sender)):
            if receiver[kj] != sender[ji]:
                continue
            if sender[kj] == receiver[ji] and np.all(shifts[kj] == -shifts[ji]):
                continue
            edge_kj.append(kj)
            edge_ji.append(ji)
    return edge_kj, edge_ji


def evaluate(model: DimeNetPlusPlus, atoms: Atoms) -> dict:
    sender, receiver, shifts = neighbor_list("ijS", atoms, CUTOFF)
    edge_kj, edge_ji = triplets_by_loops(sender, receiver, shifts)
    positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    cell = torch.tensor(np.array(atoms.cell), dtype=torch.float64)
    z = torch.tensor(atoms.numbers, dtype=torch.long)
    send, recv = torch.tensor(sender, dtype=torch.long), torch.tensor(receiver, dtype=torch.long)
    idx_kj, idx_ji = (
        torch.tensor(edge_kj, dtype=torch.long),
        torch.tensor(edge_ji, dtype=torch.long),
    )
    # edge j→i (torch_geometric's row j, col i): r_ji = x_i - x_j + S·cell
    vectors = positions[recv] - positions[send] + torch.tensor(shifts, dtype=torch.float64) @ cell
    dist = vectors.pow(2).sum(dim=-1).sqrt()
    pos_ij, pos_jk = vectors[idx_ji], vectors[idx_kj]  # x_i - x_j and x_j - x_k (DimeNet++)
    angle = torch.atan2(torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1), (pos_ij * pos_jk).sum(-1))
    num_nodes = len(atoms)
    rbf = model.rbf(dist)
    sbf = model.sbf(dist, angle, idx_kj)
    x = model.emb(z, rbf, recv, send)  # (i, j) = (target, source)
    per_atom = model.output_blocks[0](x, rbf, recv, num_nodes=num_nodes)
    for interaction, output in zip(model.interaction_blocks, model.output_blocks[1:], strict=True):
        x = interaction(x, rbf, sbf, idx_kj, idx_ji)
        per_atom = per_atom + output(x, rbf, recv, num_nodes=num_nodes)
    per_atom = per_atom.squeeze(-1)
    energy = per_atom.sum()
    (gradient,) = torch.autograd.grad(energy, positions)
    return dict(
        positions=torch.tensor(atoms.positions),
        numbers=z,
        cell=cell,
        pbc=torch.tensor(np.asarray(atoms.pbc, dtype=bool)),
        energy=energy.detach(),
        node_energy=per_atom.detach(),
        forces=-gradient,
        num_triplets=len(edge_kj),
    )


def main() -> None:
    torch.manual_seed(0)
    model = DimeNetPlusPlus(
        out_channels=1, cutoff=CUTOFF, output_initializer="glorot_orthogonal", **HYPERPARAMETERS
    ).double()
    with torch.no_grad():  # non-trivial biases (torch_geometric initialises them to zero)
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
        model.rbf.freq.add_(0.05 * torch.randn_like(model.rbf.freq))
    num_spherical, num_radial = HYPERPARAMETERS["num_spherical"], HYPERPARAMETERS["num_radial"]
    zeros = Jn_zeros(num_spherical, num_radial)  # float32, as torch_geometric uses them
    # the normalisers N_ln as torch_geometric evaluates them (its sympy closed forms carry
    # N_ln computed in float32 from the float32 roots): basis / j_l(z_ln x) at one x
    x = torch.tensor([0.37], dtype=torch.float64)
    normalizer = [
        [
            float(model.sbf.bessel_funcs[order * num_radial + n](x)[0])
            / float(spherical_jn(order, float(zeros[order, n]) * 0.37))
            for n in range(num_radial)
        ]
        for order in range(num_spherical)
    ]
    rng = np.random.default_rng(0)
    frames = []
    for name, atoms in structures(rng):
        frame = evaluate(model, atoms)
        frame["name"] = name
        frames.append(frame)
        print(
            f"{name}: {len(atoms)} atoms, {frame['num_triplets']} triplets, "
            f"E = {float(frame['energy']):.6f}"
        )
    torch.save(
        dict(
            hyperparameters=dict(HYPERPARAMETERS, cutoff=CUTOFF),
            state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
            sbf_roots=torch.tensor(zeros.astype(np.float64)),
            sbf_normalizer=torch.tensor(normalizer, dtype=torch.float64),
            structures=frames,
        ),
        OUT,
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
