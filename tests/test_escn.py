"""eSCN (potentials/models/escn.py): parity with fairchem-core 1.10's eSCN, and its blocks.

The fixture tests/data/escn_fairchem.pt is written by benchmarks/peers/make_escn_fixtures.py in
the fairchem peer environment (fairchem's weights, edges, energies, and forces as central
differences of fairchem's energy, all float64). Our model takes the same weights with
`nonlinearity="grid"` and `cutoff_envelope=False` (fairchem's choices).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn import o3

from equimd.potentials.data.graph import AtomicGraph
from equimd.potentials.forcefield import ForceField
from equimd.potentials.models import build_model
from equimd.potentials.nn.dtype import default_dtype
from equimd.potentials.nn.so2_block import SO2Block
from equimd.potentials.nn.spherical_grid import SphericalGrid, coefficient_orders
from equimd.potentials.nn.wigner import EdgeFrameRotation, WignerMatrices, edge_frame_rotation

FIXTURE = Path(__file__).parent / "data" / "escn_fairchem.pt"
SPECIES = [1, 6, 8, 29]
# fairchem state-dict entries indexed by atomic number (ours: by species index)
ELEMENT_TABLES = ("sphere_embedding.weight", "source_embedding.weight", "target_embedding.weight")
# fairchem buffers/constants that our model derives itself
DERIVED = ("sphere_points", "sphharm_weights.", "distance_expansion.offset")


def load_fixture() -> dict:
    return torch.load(FIXTURE, weights_only=False)


def equimd_from_fairchem(kwargs: dict, state: dict) -> torch.nn.Module:
    """Our eSCN with fairchem's hyperparameters and weights (float64)."""
    hyperparameters = {
        key: kwargs[key]
        for key in ("num_layers", "lmax_list", "mmax_list", "sphere_channels", "hidden_channels",
                    "edge_channels", "num_sphere_samples", "distance_function",
                    "basis_width_scalar", "distance_resolution")
    }  # fmt: skip
    with default_dtype(torch.float64):
        model = build_model(
            "escn", species=SPECIES, r_max=kwargs["cutoff"], nonlinearity="grid",
            cutoff_envelope=False, **hyperparameters,
        )  # fmt: skip
    ours = model.state_dict()
    mapped = {}
    for key, value in state.items():
        if any(part in key for part in DERIVED):
            continue
        if key.endswith(ELEMENT_TABLES):
            value = value[SPECIES]
        assert key in ours, f"fairchem parameter {key} has no counterpart"
        mapped[key] = value
    missing = [name for name, _ in model.named_parameters() if name not in mapped]
    assert not missing, f"parameters not set from fairchem: {missing}"
    mapped.update({k: v for k, v in ours.items() if k not in mapped})
    model.load_state_dict(mapped)
    return model


def graph_of(record: dict) -> AtomicGraph:
    n = len(record["numbers"])
    return AtomicGraph(
        positions=torch.tensor(record["positions"]),
        numbers=torch.tensor(record["numbers"], dtype=torch.long),
        edge_index=torch.tensor(np.stack([record["sender"], record["receiver"]]), dtype=torch.long),
        edge_shift=torch.tensor(record["shift"]),
        cell=torch.tensor(record["cell"]).unsqueeze(0),
        pbc=torch.tensor(record["pbc"]).unsqueeze(0),
        batch=torch.zeros(n, dtype=torch.long),
        ptr=torch.tensor([0, n]),
    )


@pytest.mark.parametrize("config", ["lmax3_mmax2", "lmax6_mmax2"])
def test_energies_and_forces_match_fairchem(config):
    fixture = load_fixture()["configs"][config]
    model = equimd_from_fairchem(fixture["kwargs"], fixture["state_dict"])
    forcefield = ForceField(model)
    for record in fixture["structures"]:
        out = forcefield(graph_of(record), compute_forces=True)
        assert abs(float(record["energy"])) > 1e-2  # the comparison below is not a trivial one
        np.testing.assert_allclose(out["energy"].item(), record["energy"], rtol=0, atol=1e-6)
        # reference forces: central differences of fairchem's energy (error ~1e-9 eV/Å)
        np.testing.assert_allclose(out["forces"].detach().numpy(), record["forces"], atol=1e-6)


def test_readout_points_match_fairchem():
    fixture = load_fixture()["configs"]["lmax3_mmax2"]
    model = equimd_from_fairchem(fixture["kwargs"], fixture["state_dict"])
    np.testing.assert_allclose(
        model.readout_harmonics.numpy(), fixture["state_dict"]["sphharm_weights.0"].numpy(),
        atol=1e-12,
    )  # fmt: skip


@pytest.fixture
def unit_vectors() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    poles = torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    vectors = torch.cat([vectors, poles.double()])
    return vectors / vectors.norm(dim=1, keepdim=True)


def test_edge_frame_maps_edge_to_y_axis(unit_vectors):
    rotation = edge_frame_rotation(unit_vectors)
    identity = torch.eye(3, dtype=torch.float64).expand_as(rotation)
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), identity, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(len(rotation)).double())
    y_axis = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(unit_vectors)
    torch.testing.assert_close((rotation @ unit_vectors.unsqueeze(2)).squeeze(2), y_axis)


def test_wigner_matrices_equal_e3nn(unit_vectors):
    with default_dtype(torch.float64):
        wigner = WignerMatrices(6)(edge_frame_rotation(unit_vectors))
    rotation = edge_frame_rotation(unit_vectors)
    for degree in range(7):
        with default_dtype(torch.float64):  # e3nn's generators follow the default dtype
            reference = o3.Irrep(degree, 1).D_from_matrix(rotation)
        torch.testing.assert_close(wigner[degree], reference, rtol=0, atol=1e-10)


def test_rotation_into_frame_keeps_orders_up_to_mmax(unit_vectors):
    """x' = D x restricted to |m| ≤ m_max; back and forth is the projection on those orders
    (in the frame), and Y(r̂) rotated into its own frame is nonzero at m = 0 only."""
    lmax, mmax = 4, 2
    with default_dtype(torch.float64):
        wigner = WignerMatrices(lmax)(edge_frame_rotation(unit_vectors))
    frame = EdgeFrameRotation(lmax, mmax)
    harmonics = o3.spherical_harmonics(list(range(lmax + 1)), unit_vectors, True).unsqueeze(2)
    rotated = frame.rotate(harmonics, wigner).squeeze(2)  # [E, K]
    orders = torch.tensor([m for _, m in coefficient_orders(lmax, mmax)])
    assert rotated[:, orders != 0].abs().max() < 1e-10
    assert rotated[:, orders == 0].abs().min() > 1e-3
    back = frame.rotate_back(frame.rotate(harmonics, wigner), wigner)
    torch.testing.assert_close(back, harmonics)  # only m = 0 in the frame: nothing is dropped


def test_so2_block_is_equivariant_about_the_edge_axis():
    """A rotation about ŷ by φ commutes with the SO(2) convolution (in the edge frame)."""
    lmax, mmax, channels = 3, 2, 3
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        block = SO2Block(channels, 5, 4, lmax, mmax)
        frame = EdgeFrameRotation(lmax, lmax)
        wigner = WignerMatrices(lmax)(
            o3.matrix_y(torch.tensor([0.7], dtype=torch.float64)).reshape(1, 3, 3)
        )  # fmt: skip
    kept = [k for k, (_, m) in enumerate(coefficient_orders(lmax, lmax)) if abs(m) <= mmax]
    x = torch.randn(1, (lmax + 1) ** 2, channels, dtype=torch.float64)
    edge = torch.randn(1, 4, dtype=torch.float64)
    rotated_x = frame.rotate(x, wigner)  # full rotation about ŷ, all orders
    out_then_rotate = frame.rotate(_pad(block(x[:, kept], edge), kept, lmax), wigner)[:, kept]
    rotate_then_out = block(rotated_x[:, kept], edge)
    torch.testing.assert_close(out_then_rotate, rotate_then_out)


def _pad(x: torch.Tensor, kept: list[int], lmax: int) -> torch.Tensor:
    full = x.new_zeros(x.shape[0], (lmax + 1) ** 2, x.shape[2])
    full[:, kept] = x
    return full


def test_grid_round_trip_is_identity_on_band_limited_coefficients():
    with default_dtype(torch.float64):
        for lmax, mmax in ((3, 3), (4, 2), (6, 2)):
            grid = SphericalGrid(lmax, mmax)
            x = torch.randn(2, len(coefficient_orders(lmax, mmax)), 3, dtype=torch.float64)
            torch.testing.assert_close(grid.from_grid(grid.to_grid(x)), x)


@pytest.mark.parametrize("nonlinearity", ["grid", "gate"])
def test_energy_is_invariant_under_the_roll_of_the_edge_frames(nonlinearity):
    """Gate: exactly independent of the frames' roll (a rotation about each edge); grid: only
    approximately (fairchem's non-linearity on the edge-frame grid aliases)."""
    record = load_fixture()["configs"]["lmax3_mmax2"]["structures"][0]
    graph = graph_of(record)
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        model = build_model(
            "escn", species=SPECIES, r_max=4.0, num_layers=2, lmax_list=[3], mmax_list=[2],
            sphere_channels=4, hidden_channels=6, edge_channels=5, distance_resolution=0.5,
            nonlinearity=nonlinearity, num_sphere_samples=32,
        )  # fmt: skip
        for parameter in model.parameters():  # weights of order 1: every path contributes
            torch.nn.init.normal_(parameter, 0.0, 0.5)
    reference = model(graph).sum()
    roll = o3.matrix_y(
        torch.tensor(1.1, dtype=torch.float64)
    )  # about ŷ, the edge axis in the frame
    import equimd.potentials.models.escn as escn_module

    original = escn_module.edge_frame_rotation
    escn_module.edge_frame_rotation = lambda unit: roll @ original(unit)
    try:
        rolled = model(graph).sum()
    finally:
        escn_module.edge_frame_rotation = original
    difference = float((rolled - reference).abs())
    if nonlinearity == "gate":
        assert difference < 1e-12 * max(1.0, float(reference.abs()))
    else:  # the roll matters, slightly: why the fixture fixes the frames
        assert 0.0 < difference < 1e-6 * max(1.0, float(reference.abs()))
