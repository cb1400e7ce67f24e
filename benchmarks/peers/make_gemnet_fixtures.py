"""GemNet-T parity fixtures from fairchem-core 1.10's GemNetT (run by the fairchem peer venv).

    .peers/fairchem/bin/python benchmarks/peers/make_gemnet_fixtures.py

Writes tests/data/gemnet_reference.pt: per radial basis ("gaussian", "spherical_bessel") the
hyperparameters and fairchem's state dict, and per structure its positions, numbers, cell,
pbc with the energy, per-atom energies and forces (float64) of fairchem's blocks.

fairchem's GemNet modules import torch_scatter (`scatter`, `segment_csr`) and torch_sparse
(`SparseTensor`, for `get_triplets` only), which have no wheels for torch 2.9.1 on PyPI. This
script puts two small stand-ins in `sys.modules` before importing fairchem (`scatter` with
reduce "sum" and `segment_csr` by `index_add`; a `SparseTensor` that refuses to be built), and
builds the inputs of fairchem's blocks itself: edges from ASE's neighbor list ("ijS", periodic
images included, all within the cutoff, in both directions), `id_swap` (the reverse edge)
and the triplets b→a←c (distinct edges into one atom, `id3_ba`, `id3_ca`, and the ragged
index enumerating the triplets of each edge ca) by Python loops. It then runs the body of
`GemNetT.forward` (bases, embeddings, interaction and output blocks) unchanged.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch


def install_torch_scatter_stand_ins() -> None:
    scatter_module = types.ModuleType("torch_scatter")

    def scatter(src, index, dim=0, dim_size=None, reduce="sum"):
        if dim != 0 or reduce not in ("sum", "add"):
            raise NotImplementedError(f"stand-in scatter: dim 0 sums only, got {dim}, {reduce}")
        size = int(index.max()) + 1 if dim_size is None else dim_size
        return torch.zeros((size, *src.shape[1:]), dtype=src.dtype).index_add(0, index, src)

    def segment_csr(src, indptr, out=None, reduce="sum"):
        if out is not None or reduce != "sum":
            raise NotImplementedError("stand-in segment_csr: sums only")
        counts = indptr[1:] - indptr[:-1]
        index = torch.repeat_interleave(torch.arange(counts.numel()), counts)
        return torch.zeros((counts.numel(), *src.shape[1:]), dtype=src.dtype).index_add(
            0, index, src
        )

    scatter_module.scatter = scatter
    scatter_module.segment_csr = segment_csr
    sparse_module = types.ModuleType("torch_sparse")

    class SparseTensor:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(
                "torch_sparse is not installed; triplets are built by the fixture script"
            )

    sparse_module.SparseTensor = SparseTensor
    sys.modules["torch_scatter"] = scatter_module
    sys.modules["torch_sparse"] = sparse_module


install_torch_scatter_stand_ins()

from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.neighborlist import neighbor_list  # noqa: E402
from fairchem.core.models.gemnet.gemnet import GemNetT  # noqa: E402
from fairchem.core.models.gemnet.utils import inner_product_normalized  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "gemnet_reference.pt"
CUTOFF = 3.5
HYPERPARAMETERS = dict(
    num_spherical=4,
    num_radial=5,
    num_blocks=2,
    emb_size_atom=8,
    emb_size_edge=10,
    emb_size_trip=6,
    emb_size_rbf=4,
    emb_size_cbf=5,
    emb_size_bil_trip=7,
    num_before_skip=1,
    num_after_skip=2,
    num_concat=1,
    num_atom=2,
)


def structures() -> dict[str, Atoms]:
    small = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)  # cell smaller than the cutoff
    small.numbers[1] = 6
    small.rattle(0.05, seed=1)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True)
    slab.pbc = (True, True, False)
    slab.numbers[2] = 8
    slab.rattle(0.05, seed=2)
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=3)
    mixed = Atoms(
        "CuCOH",
        cell=[[3.1, 0.2, 0.0], [0.4, 3.3, 0.1], [0.2, -0.3, 3.6]],
        pbc=True,
        scaled_positions=[[0.1, 0.2, 0.3], [0.5, 0.5, 0.6], [0.8, 0.1, 0.9], [0.3, 0.8, 0.5]],
    )
    return dict(ethanol=ethanol, small_cell=small, slab=slab, triclinic=mixed)


def interaction_graph(atoms: Atoms):
    """Edges s→t (ASE's i→j), the reverse edge of each, triplets b→a←c with ragged indices."""
    sender, receiver, shifts = neighbor_list("ijS", atoms, CUTOFF)
    edge_of = {
        (s, t, tuple(shift)): e
        for e, (s, t, shift) in enumerate(zip(sender, receiver, shifts.tolist(), strict=True))
    }
    id_swap = [
        edge_of[(t, s, tuple(-v for v in shift))]
        for s, t, shift in zip(sender, receiver, shifts.tolist(), strict=True)
    ]
    id3_ba, id3_ca, ragged = [], [], []
    for ca in range(len(sender)):
        count = 0
        for ba in range(len(sender)):
            if receiver[ba] == receiver[ca] and ba != ca:
                id3_ba.append(ba)
                id3_ca.append(ca)
                ragged.append(count)
                count += 1
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return (
        as_long(sender),
        as_long(receiver),
        torch.tensor(shifts, dtype=torch.float64),
        as_long(id_swap),
        as_long(id3_ba),
        as_long(id3_ca),
        as_long(ragged),
    )


def evaluate(model: GemNetT, atoms: Atoms) -> dict:
    idx_s, idx_t, shifts, id_swap, id3_ba, id3_ca, id3_ragged_idx = interaction_graph(atoms)
    positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    cell = torch.tensor(np.array(atoms.cell), dtype=torch.float64)
    vectors = positions[idx_t] - positions[idx_s] + shifts @ cell
    D_st = vectors.norm(dim=-1)
    V_st = vectors / D_st[:, None]  # unit vector from s to t, as fairchem's -distance_vec / d
    atomic_numbers = torch.tensor(atoms.numbers, dtype=torch.long)
    # GemNetT.forward from here on
    cosφ_cab = inner_product_normalized(V_st[id3_ca], V_st[id3_ba])
    rad_cbf3, cbf3 = model.cbf_basis3(D_st, cosφ_cab, id3_ca)
    rbf = model.radial_basis(D_st)
    h = model.atom_emb(atomic_numbers)
    m = model.edge_emb(h, rbf, idx_s, idx_t)
    rbf3 = model.mlp_rbf3(rbf)
    cbf3 = model.mlp_cbf3(rad_cbf3, cbf3, id3_ca, id3_ragged_idx)
    rbf_h = model.mlp_rbf_h(rbf)
    rbf_out = model.mlp_rbf_out(rbf)
    E_t, F_st = model.out_blocks[0](h, m, rbf_out, idx_t)
    for i in range(model.num_blocks):
        h, m = model.int_blocks[i](
            h=h,
            m=m,
            rbf3=rbf3,
            cbf3=cbf3,
            id3_ragged_idx=id3_ragged_idx,
            id_swap=id_swap,
            id3_ba=id3_ba,
            id3_ca=id3_ca,
            rbf_h=rbf_h,
            idx_s=idx_s,
            idx_t=idx_t,
        )
        E, F = model.out_blocks[i + 1](h, m, rbf_out, idx_t)
        E_t += E
    node_energy = E_t[:, 0]
    energy = node_energy.sum()
    (gradient,) = torch.autograd.grad(energy, positions)
    return dict(
        positions=torch.tensor(atoms.positions),
        numbers=atomic_numbers,
        cell=cell,
        pbc=torch.tensor(np.asarray(atoms.pbc, dtype=bool)),
        energy=energy.detach(),
        node_energy=node_energy.detach(),
        forces=-gradient,
        num_triplets=len(id3_ba),
    )


def main() -> None:
    torch.set_default_dtype(torch.float64)
    models = {}
    for seed, rbf in enumerate(["gaussian", "spherical_bessel"]):
        torch.manual_seed(seed)
        model = GemNetT(
            cutoff=CUTOFF,
            otf_graph=True,
            regress_forces=False,
            rbf={"name": rbf},
            envelope={"name": "polynomial", "exponent": 5},
            cbf={"name": "spherical_harmonics"},
            **HYPERPARAMETERS,
        )
        generator = torch.Generator().manual_seed(10 + seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("scale_factor"):  # "fitted" scale factors
                    parameter.fill_(float(0.6 + torch.rand((), generator=generator)))
                if name.endswith("frequencies"):  # trained Bessel frequencies are not nπ
                    parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        frames = []
        for name, atoms in structures().items():
            frame = evaluate(model, atoms)
            frame["name"] = name
            frames.append(frame)
            print(
                f"{rbf} {name}: {len(atoms)} atoms, {frame['num_triplets']} triplets, "
                f"E = {float(frame['energy']):.6f}, max |F| = {float(frame['forces'].abs().max()):.4f}"
            )
        models[rbf] = dict(
            hyperparameters=dict(HYPERPARAMETERS, cutoff=CUTOFF, rbf=rbf, envelope_exponent=5),
            state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
            structures=frames,
        )
    torch.save(models, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
