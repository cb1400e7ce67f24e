"""The in-graph triplet index (potentials/nn/triplets.py) against a plain double loop over
edges, on molecules and periodic cells (one smaller than the cutoff, where k and i can be the
same atom in different images), the spherical/Legendre bases against scipy, and the exported
triplet models (DimeNet++, GemNet) in a process that imports only torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy import special

from equimd.potentials.data.configuration import Configuration
from equimd.potentials.data.graph import configuration_to_graph, edge_vectors
from equimd.potentials.forcefield import ForceField
from equimd.potentials.nn.dtype import default_dtype
from equimd.potentials.nn.edge_slots import no_edge_slots
from equimd.potentials.nn.spherical_basis import (
    DimeNetEnvelope,
    PolynomialEnvelope,
    SphericalBasis,
    legendre_harmonics,
    spherical_bessel,
    spherical_bessel_roots,
)
from equimd.potentials.nn.triplets import (
    build_receiver_pairs,
    build_triplets,
    cos_angle,
    pad_triplets,
    reverse_edges,
    sum_over_triplets,
    triplet_slots,
)
from tests.model_zoo import MODEL_FACTORIES


def structures() -> dict[str, Atoms]:
    small = bulk("Cu", "fcc", a=3.6)  # one atom, every neighbor is itself in another image
    small.rattle(0.05, seed=0)
    triclinic = Atoms(
        "CuCO",
        cell=[[3.1, 0.2, 0.0], [0.4, 3.3, 0.1], [0.2, -0.3, 3.6]],
        pbc=True,
        scaled_positions=[[0.1, 0.2, 0.3], [0.5, 0.5, 0.6], [0.8, 0.1, 0.9]],
    )
    slab = bulk("Cu", "fcc", a=3.6, cubic=True)
    slab.pbc = (True, False, True)
    return dict(ethanol=molecule("CH3CH2OH"), small_cell=small, triclinic=triclinic, slab=slab)


def loop_triplets(sender, receiver, shifts) -> set[tuple[int, int]]:
    """(kj, ji) for every edge pair k→j, j→i except the exact reverse edge."""
    found = set()
    for ji in range(len(sender)):
        for kj in range(len(sender)):
            reverse = sender[kj] == receiver[ji] and np.array_equal(shifts[kj], -shifts[ji])
            if receiver[kj] == sender[ji] and not reverse:
                found.add((kj, ji))
    return found


def graph_of(atoms: Atoms, r_max: float = 3.0):
    return configuration_to_graph(Configuration.from_atoms(atoms), r_max, torch.float64)


@pytest.mark.parametrize("name", sorted(structures()))
def test_triplets_are_all_edge_pairs_but_the_reverse_edge(name):
    graph = graph_of(structures()[name])
    sender, receiver = graph.edge_index.numpy()
    triplets = build_triplets(graph.edge_index, graph.edge_shift, graph.positions.shape[0])
    kept = triplets.mask > 0.5
    built = set(zip(triplets.edge_kj[kept].tolist(), triplets.edge_ji[kept].tolist(), strict=True))
    assert len(built) == int(kept.sum())  # no duplicates
    assert built == loop_triplets(sender, receiver, graph.edge_shift.numpy())
    # every masked entry is a reverse edge: r_kj = -r_ji
    vectors = edge_vectors(graph)
    masked_sum = vectors[triplets.edge_kj[~kept]] + vectors[triplets.edge_ji[~kept]]
    assert masked_sum.abs().max() < 1e-12 if masked_sum.numel() else True
    assert int((~kept).sum()) == graph.edge_index.shape[1]  # one reverse edge per edge


@pytest.mark.parametrize("name", sorted(structures()))
def test_reverse_edges_and_receiver_pairs_match_loops(name):
    graph = graph_of(structures()[name])
    sender, receiver = graph.edge_index.numpy()
    shifts = graph.edge_shift.numpy()
    swap = reverse_edges(graph.edge_index, graph.edge_shift).numpy()
    for edge, reverse in enumerate(swap):
        assert (sender[reverse], receiver[reverse]) == (receiver[edge], sender[edge])
        np.testing.assert_array_equal(shifts[reverse], -shifts[edge])
    pairs = build_receiver_pairs(graph.edge_index, graph.positions.shape[0], torch.float64)
    kept = pairs.mask > 0.5
    built = set(zip(pairs.edge_kj[kept].tolist(), pairs.edge_ji[kept].tolist(), strict=True))
    expected = {
        (ba, ca)
        for ca in range(len(sender))
        for ba in range(len(sender))
        if receiver[ba] == receiver[ca] and ba != ca
    }
    assert len(built) == int(kept.sum()) and built == expected


def loop_sum_over_triplets(basis, features, triplets):
    """S[ji, l] = Σ_k Y[(kj, ji), l] x[kj], one triplet at a time."""
    summed = torch.zeros(features.shape[0], basis.shape[1], features.shape[1], dtype=torch.float64)
    for t, (kj, ji) in enumerate(zip(triplets.edge_kj.tolist(), triplets.edge_ji.tolist(), strict=True)):
        summed[ji] += basis[t].unsqueeze(-1) * features[kj]
    return summed


@pytest.mark.parametrize("kind", ["dimenet", "gemnet"])
@pytest.mark.parametrize("name", sorted(structures()))
def test_triplet_sums_padded_and_scattered_equal_the_loop(name, kind):
    """Σ_k Y(k→j→i) x_kj per edge ji: the per-atom padded matmul (uneven degrees in the slab,
    the molecule and the triclinic cell, periodic images in the small cell) and the scatter
    path give the loop's sums and the same gradients, for DimeNet's triplets (outgoing edges
    grouped by sender) and GemNet's receiver pairs (by receiver)."""
    graph = graph_of(structures()[name])
    num_nodes = graph.positions.shape[0]
    sender, receiver = graph.edge_index
    if kind == "gemnet":
        triplets = build_receiver_pairs(graph.edge_index, num_nodes, torch.float64)
    else:
        triplets = build_triplets(graph.edge_index, graph.edge_shift, num_nodes)
    incoming, outgoing = triplet_slots(triplets, sender, receiver, num_nodes, kind == "gemnet")
    assert incoming.width == int(torch.bincount(receiver, minlength=num_nodes).max())
    assert outgoing.width == int(torch.bincount(sender, minlength=num_nodes).max())
    for slots in (incoming, outgoing):  # every edge in exactly one slot
        filled = slots.table[slots.table < len(slots.row)]
        assert sorted(filled.tolist()) == list(range(len(slots.row)))
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(triplets.mask.shape[0], 4, generator=generator, dtype=torch.float64)
    basis = (basis * triplets.mask.unsqueeze(-1)).requires_grad_()
    features = torch.randn(graph.edge_index.shape[1], 5, generator=generator,
                           dtype=torch.float64).requires_grad_()
    expected = loop_sum_over_triplets(basis.detach(), features.detach(), triplets)
    cotangent = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    gradients = []
    none = no_edge_slots(receiver.device)
    for layout in ((incoming, outgoing), (none, none)):
        summed = sum_over_triplets(pad_triplets(basis, triplets, *layout), features, triplets,
                                   *layout)
        torch.testing.assert_close(summed, expected, rtol=1e-12, atol=1e-12)
        gradients.append(torch.autograd.grad(summed, (basis, features), cotangent))
    for padded, scattered in zip(*gradients, strict=True):
        torch.testing.assert_close(padded, scattered, rtol=1e-12, atol=1e-12)


def test_triplet_sums_script_and_skip_padding_for_uneven_degrees():
    graph = graph_of(structures()["triclinic"])
    num_nodes = graph.positions.shape[0]
    sender, receiver = graph.edge_index
    triplets = build_triplets(graph.edge_index, graph.edge_shift, num_nodes)
    basis = torch.rand(triplets.mask.shape[0], 3, dtype=torch.float64)
    features = torch.rand(graph.edge_index.shape[1], 2, dtype=torch.float64)
    layout = torch.jit.script(triplet_slots)(triplets, sender, receiver, num_nodes, False)
    assert layout[0].width > 0
    padded = torch.jit.script(pad_triplets)(basis, triplets, *layout)
    none = no_edge_slots(basis.device)
    torch.testing.assert_close(
        torch.jit.script(sum_over_triplets)(padded, features, triplets, *layout),
        sum_over_triplets(basis, features, triplets, none, none),
    )
    # one atom with 12 neighbours (an icosahedron of H, 2.1 Å out, 2.21 Å apart) that have
    # one each: the padding (N·K² = 1872) would exceed 4× the 156 triplets, so no layout
    golden = (1 + 5**0.5) / 2
    vertices = np.array([[0, s1, s2 * golden] for s1 in (-1, 1) for s2 in (-1, 1)])
    vertices = np.concatenate([np.roll(vertices, shift, axis=1) for shift in range(3)])
    vertices = 2.1 * vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    star = graph_of(Atoms("CH12", positions=np.concatenate([[[0.0, 0.0, 0.0]], vertices])), 2.15)
    star_triplets = build_triplets(star.edge_index, star.edge_shift, 13)
    assert star_triplets.mask.shape[0] == 156
    incoming, _ = triplet_slots(star_triplets, star.edge_index[0], star.edge_index[1], 13, False)
    assert incoming.width == 0


@pytest.mark.parametrize("name", ["dimenetpp", "gemnet"])
def test_triplet_models_give_the_same_numbers_without_the_padded_layout(name, monkeypatch):
    """DimeNet++ and GemNet with and without the per-atom padded triplet matmuls (the scatter
    path is what an AOTInductor export traces): same energies, forces and stress."""
    import importlib

    model = MODEL_FACTORIES[name]()
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    atoms.numbers[0] = 6
    atoms.rattle(0.05, seed=3)
    graph = graph_of(atoms, model.r_max)
    module = importlib.import_module(type(model).__module__)
    layouts = []
    real = module.triplet_slots
    monkeypatch.setattr(module, "triplet_slots", lambda *a, **k: layouts.append(real(*a, **k)) or layouts[-1])
    padded = ForceField(model)(graph, True, True)
    assert layouts and all(slots.width > 0 for slots in layouts[0])  # the padded path ran
    monkeypatch.setattr(module, "triplet_slots",
                        lambda *args, **kwargs: (no_edge_slots(graph.positions.device),) * 2)
    scattered = ForceField(model)(graph, True, True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(padded[key], scattered[key], rtol=1e-10, atol=1e-10)


def test_envelopes_equal_their_expanded_polynomials():
    x = torch.linspace(0.05, 1.2, 500, dtype=torch.float64)
    for p in (3, 5, 6):
        expanded = (
            1
            - (p + 1) * (p + 2) / 2 * x**p
            + p * (p + 2) * x ** (p + 1)
            - p * (p + 1) / 2 * x ** (p + 2)
        )
        expected = expanded * (x < 1)
        assert torch.allclose(PolynomialEnvelope(p)(x), expected, atol=1e-13)
        assert torch.allclose(DimeNetEnvelope(p - 1)(x), expected / x, atol=1e-12)


def test_periodic_images_of_the_receiver_are_triplets():
    """In a one-atom cell, k = j = i for every triplet: all but the reverse edge count."""
    graph = graph_of(structures()["small_cell"])
    triplets = build_triplets(graph.edge_index, graph.edge_shift, 1)
    num_edges = graph.edge_index.shape[1]
    assert num_edges == 12  # fcc nearest neighbors
    assert triplets.edge_kj.shape[0] == num_edges**2
    assert int(triplets.mask.sum()) == num_edges * (num_edges - 1)


def test_no_edges_gives_no_triplets_and_scripts():
    scripted = torch.jit.script(build_triplets)
    edge_index = torch.zeros((2, 0), dtype=torch.long)
    shifts = torch.zeros((0, 3), dtype=torch.float64)
    for function in (build_triplets, scripted):
        triplets = function(edge_index, shifts, 3)
        assert triplets.edge_kj.shape == (0,) and triplets.mask.shape == (0,)


def test_cos_angle_is_the_dimenet_angle_and_smooth_when_collinear():
    r_kj = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    r_ji = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    cos = cos_angle(r_kj, r_ji)
    assert torch.allclose(cos, torch.tensor([0.0, 1.0], dtype=torch.float64))
    (gradient,) = torch.autograd.grad(cos.sum(), r_ji)
    assert torch.isfinite(gradient).all()


def test_spherical_bessel_functions_and_roots_match_scipy():
    x = torch.linspace(0.5, 25.0, 200, dtype=torch.float64)
    values = spherical_bessel(x, 7)
    for order in range(7):
        expected = special.spherical_jn(order, x.numpy())
        np.testing.assert_allclose(values[:, order].numpy(), expected, atol=1e-9)
    roots = spherical_bessel_roots(7, 6)
    for order, row in enumerate(roots):
        assert np.abs(special.spherical_jn(order, np.array(row))).max() < 1e-12
        assert np.all(np.diff(row) > 0) and row[0] > order  # the first roots, in order


def test_spherical_basis_is_normalised_bessel_times_legendre():
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        basis = SphericalBasis(4, 3, cutoff=5.0, envelope_exponent=5)
    distances = torch.rand(6, dtype=torch.float64) * 4.0 + 0.5
    cos_theta = torch.rand(9, dtype=torch.float64) * 2 - 1
    edge_kj = torch.randint(0, 6, (9,))
    values = basis(distances, cos_theta, edge_kj).reshape(9, 4, 3).numpy()
    x = distances.numpy()[edge_kj.numpy()] / 5.0
    p = 6
    envelope = (
        1 / x
        - (p + 1) * (p + 2) / 2 * x ** (p - 1)
        + p * (p + 2) * x**p
        - p * (p + 1) / 2 * x ** (p + 1)
    )
    roots = spherical_bessel_roots(4, 3)
    for order in range(4):
        harmonic = np.sqrt((2 * order + 1) / (4 * np.pi)) * special.eval_legendre(
            order, cos_theta.numpy()
        )
        for n in range(3):
            z = roots[order][n]
            norm = 1 / np.sqrt(0.5 * special.spherical_jn(order + 1, z) ** 2)
            expected = envelope * norm * special.spherical_jn(order, z * x) * harmonic
            np.testing.assert_allclose(values[:, order, n], expected, rtol=1e-9, atol=1e-12)
    legendre = legendre_harmonics(cos_theta, 4).numpy()
    np.testing.assert_allclose(
        legendre[:, 2], np.sqrt(5 / (4 * np.pi)) * special.eval_legendre(2, cos_theta.numpy())
    )


FRESH_PROCESS = textwrap.dedent(
    """
    import sys, torch
    model = torch.jit.load(sys.argv[1])
    data = torch.load(sys.argv[2])
    out = model(data["positions"], data["numbers"], data["cell"], data["pbc"])
    torch.save({"energy": out["energy"], "forces": out["forces"]}, sys.argv[3])
    print("EQUIMD_MODULES=" + ",".join(sorted(m for m in sys.modules if m.startswith("equimd"))))
    """
)


@pytest.mark.parametrize("name", ["dimenetpp", "gemnet"])
def test_exported_triplet_models_build_triplets_in_a_torch_only_process(
    name, zoo_model_file, tmp_path
):
    """The TorchScript file carries the neighbor list and the triplet (and GemNet's reverse-edge)
    construction: a process that imports only torch evaluates a periodic cell smaller than the
    cutoff (triplets through periodic images) and matches the eager model."""
    model = MODEL_FACTORIES[name]()  # the test configuration, exported once per session
    path = zoo_model_file(name, "float64")
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    atoms.numbers[0] = 6
    atoms.rattle(0.05, seed=3)
    data = dict(
        positions=torch.tensor(atoms.positions),
        numbers=torch.tensor(atoms.numbers),
        cell=torch.tensor(np.array(atoms.cell)),
        pbc=torch.tensor(atoms.pbc),
    )
    torch.save(data, tmp_path / "input.pt")
    (tmp_path / "run.py").write_text(FRESH_PROCESS)
    completed = subprocess.run(
        [sys.executable, "run.py", str(path), "input.pt", "output.pt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split("EQUIMD_MODULES=")[1].strip() == ""
    out = torch.load(tmp_path / "output.pt")
    graph = configuration_to_graph(Configuration.from_atoms(atoms), model.r_max, torch.float64)
    eager = ForceField(model)(graph, True, False, False)
    assert abs(float(out["energy"].sum()) - float(eager["energy"][0])) < 1e-10
    assert (out["forces"] - eager["forces"]).abs().max() < 1e-10
