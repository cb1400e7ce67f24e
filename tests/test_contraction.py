"""MACE symmetric contraction: coupling bases and outputs against mace-torch, symmetry, TorchScript.

Fixtures: tests/data/mace_contraction_reference.pt and mace_<name>_model.pt, made by
benchmarks/peers/make_mace_fixtures.py in the mace-torch venv (mace is never imported here).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from e3nn import o3

from equimd.potentials.nn.contraction import (
    E3NN_044_FLIPPED_TRIPLES,
    SymmetricContraction,
    coupling_basis,
    fold_coupling_basis,
    monomials,
    wigner_3j,
)
from equimd.potentials.nn.dtype import default_dtype

DATA = Path(__file__).parent / "data"
CONFIGS = ["scalar", "vector"]


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(DATA / "mace_contraction_reference.pt", weights_only=True)["configs"]



def _model_state_dict(ref: dict) -> dict[str, torch.Tensor]:
    return torch.load(DATA / ref["model_file"], weights_only=True)["state_dict"]


def _dense(sparse: dict) -> torch.Tensor:
    u = torch.zeros(sparse["shape"], dtype=torch.float64)
    u[tuple(sparse["indices"].long().T)] = sparse["values"]
    return u


@functools.cache
def _cached_mace_contraction(name: str, dtype: torch.dtype) -> SymmetricContraction:
    ref = torch.load(DATA / "mace_contraction_reference.pt", weights_only=True)["configs"][name]
    with default_dtype(dtype):
        module = SymmetricContraction(
            ref["irreps_in"], ref["irreps_out"], ref["correlation"], ref["num_elements"]
        )
    module.load_mace_weights(_model_state_dict(ref), ref["state_dict_prefix"])
    return module


def _mace_contraction(name: str, dtype: torch.dtype = torch.float64) -> SymmetricContraction:
    """products.0's contraction of mace model `name` with mace's weights (a fresh copy)."""
    return copy.deepcopy(_cached_mace_contraction(name, dtype))


@pytest.mark.parametrize("name", CONFIGS)
def test_coupling_basis_equals_mace_u_matrices(reference: dict, name: str) -> None:
    """Our generalized CG bases equal mace-torch's U_matrix buffers: paths, order and signs."""
    ref = reference[name]
    coupling_irreps = o3.Irreps([(1, ir) for _, ir in o3.Irreps(ref["irreps_in"])])
    for k, (_, ir) in enumerate(o3.Irreps(ref["irreps_out"])):
        for order in range(1, ref["correlation"] + 1):
            expected = _dense(ref["U"][f"contractions.{k}.U_matrix_{order}"])
            ours = coupling_basis(coupling_irreps, ir, order)
            if ir.dim == 1:
                ours = ours.squeeze(0)  # mace drops the m axis of scalar outputs
            assert ours.shape == expected.shape, (ir, order)
            assert torch.allclose(ours, expected, rtol=0, atol=1e-10), (ir, order)


@pytest.mark.parametrize("name", CONFIGS)
def test_contraction_matches_mace(reference: dict, name: str) -> None:
    """Same weights, same inputs: outputs and input gradients equal mace's (float64)."""
    ref = reference[name]
    module = _mace_contraction(name)
    node_features = ref["node_features"].clone().requires_grad_(True)
    output = module(node_features, ref["species"])
    torch.testing.assert_close(output, ref["output"], rtol=1e-12, atol=1e-11)
    (grad,) = torch.autograd.grad((output * ref["probe"]).sum(), node_features)
    torch.testing.assert_close(grad, ref["input_grad"], rtol=1e-12, atol=1e-11)


def test_loads_mace_u_buffers_as_state(reference: dict) -> None:
    """U_matrix buffers in a mace state dict are used as given (load_mace_weights and
    coupling_bases=...): a wrong basis changes the output, mace's restores it."""
    ref = reference["vector"]
    state_dict = dict(_model_state_dict(ref))
    bases = {key: _dense(sp) for key, sp in ref["U"].items()}
    prefix = ref["state_dict_prefix"]
    module = _mace_contraction("vector")
    module.orders[2].basis.mul_(-1.0)
    assert not torch.allclose(module(ref["node_features"], ref["species"]), ref["output"])
    state_dict.update({prefix + key: u for key, u in bases.items()})
    module.load_mace_weights(state_dict, prefix)
    torch.testing.assert_close(module(ref["node_features"], ref["species"]), ref["output"])

    num_outputs = len(o3.Irreps(ref["irreps_out"]))
    given = [
        [bases[f"contractions.{k}.U_matrix_{nu}"] for nu in range(1, ref["correlation"] + 1)]
        for k in range(num_outputs)
    ]
    with default_dtype(torch.float64):
        rebuilt = SymmetricContraction(
            ref["irreps_in"],
            ref["irreps_out"],
            ref["correlation"],
            ref["num_elements"],
            coupling_bases=given,
        )
    rebuilt.load_mace_weights(state_dict, prefix)
    torch.testing.assert_close(rebuilt(ref["node_features"], ref["species"]), ref["output"])


@pytest.mark.parametrize(
    ("irreps_in", "irreps_out", "correlation"),
    [
        ("3x0e+3x1o+3x2e+3x3o", "3x0e+3x1o+3x2e", 3),
        ("2x0e+2x1o+2x2e", "2x0e+2x1o+2x1e+2x2e", 2),
        ("2x0e+2x1o", "2x0e+2x1o", 4),
    ],
)
def test_rotation_equivariance(irreps_in: str, irreps_out: str, correlation: int) -> None:
    """f(D_in(g) x) = D_out(g) f(x) for rotations and the inversion (float64)."""
    generator = torch.Generator().manual_seed(0)
    with default_dtype(torch.float64):
        module = SymmetricContraction(irreps_in, irreps_out, correlation, num_elements=3)
        irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        x = torch.randn(6, irreps_in.dim, generator=generator)
        species = torch.tensor([0, 1, 2, 2, 1, 0])
        rotation = o3.rand_matrix()
        for g in (rotation, -rotation):
            d_in, d_out = irreps_in.D_from_matrix(g), irreps_out.D_from_matrix(g)
            rotated_first = module(x @ d_in.T, species)
            rotated_after = module(x, species) @ d_out.T
            torch.testing.assert_close(rotated_first, rotated_after, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torchscript_matches_eager(reference: dict, dtype: torch.dtype) -> None:
    ref = reference["vector"]
    module = _mace_contraction("vector", dtype)
    scripted = torch.jit.script(module)
    x = ref["node_features"].to(dtype).requires_grad_(True)
    eager_out = module(x, ref["species"])
    script_out = scripted(x, ref["species"])
    torch.testing.assert_close(script_out, eager_out, rtol=0, atol=0)
    (eager_grad,) = torch.autograd.grad(eager_out.sum(), x)
    (script_grad,) = torch.autograd.grad(scripted(x, ref["species"]).sum(), x)
    torch.testing.assert_close(script_grad, eager_grad)
    if dtype == torch.float32:  # float32 agrees with mace's float64 to float32 precision
        torch.testing.assert_close(
            eager_out.double(), ref["output"], rtol=1e-4, atol=1e-4 * ref["output"].abs().max()
        )


def test_state_dict_round_trip(reference: dict) -> None:
    """weights and the (pruned, folded) bases are the persistent state; a fresh module reloads
    them."""
    ref = reference["scalar"]
    module = _mace_contraction("scalar")
    state = module.state_dict()
    expected = {"weights"} | {
        f"orders.{i}.{name}" for i in range(3) for name in ("basis", "parent", "last")
    }
    assert set(state) == expected
    with default_dtype(torch.float64):
        fresh = SymmetricContraction(
            ref["irreps_in"], ref["irreps_out"], ref["correlation"], ref["num_elements"]
        )
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(ref["node_features"], ref["species"]), ref["output"])


def test_unreachable_output_irrep_gives_zeros() -> None:
    """No coupling path from scalars to a vector: zero paths, zero output, no error."""
    module = SymmetricContraction("4x0e", "4x0e+4x1o", correlation=3, num_elements=2)
    assert module.num_paths == [[1, 1, 1], [0, 0, 0]]
    out = module(torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))
    assert out.shape == (5, 16)
    assert torch.all(out[:, 4:] == 0)


def test_fold_coupling_basis_preserves_contraction() -> None:
    """Σ_a U_a Π A_a equals Σ_n folded_n Π_{a∈n} A_a for a random full U."""
    dim, order = 5, 3
    generator = torch.Generator().manual_seed(1)
    u = torch.randn(2, dim, dim, dim, 4, generator=generator, dtype=torch.float64)
    a = torch.randn(dim, generator=generator, dtype=torch.float64)
    full = torch.einsum("mabck,a,b,c->mk", u, a, a, a)
    monomial_values = a[monomials(dim, order)].prod(dim=1)
    folded = torch.einsum("nmk,n->mk", fold_coupling_basis(u, dim, order), monomial_values)
    torch.testing.assert_close(folded, full)


def test_wigner_3j_convention_is_a_sign_table() -> None:
    """Flipped triples all have odd l1+l2+l3 (couplings between natural-parity irreps in
    e3nn tensor products are unaffected), and the symbols stay orthonormal."""
    assert all(sum(t) % 2 == 1 for t in E3NN_044_FLIPPED_TRIPLES)
    assert len(E3NN_044_FLIPPED_TRIPLES) == 44
    symbol = wigner_3j(1, 2, 2)
    assert torch.allclose(-symbol, o3.wigner_3j(1, 2, 2, dtype=torch.float64))
    gram = torch.einsum("abc,abd->cd", symbol, symbol) * 5
    torch.testing.assert_close(gram, torch.eye(5, dtype=torch.float64))


@pytest.mark.parametrize(
    ("irreps_in", "irreps_out", "correlation", "columns", "folded"),
    [
        ("2x0e+2x1o+2x2e+2x3o", "2x0e", 3, 28, True),  # MACE small's products
        ("2x0e+2x1o+2x2e+2x3o", "2x0e+2x1o", 3, 202, True),  # MACE medium's first
        ("2x0e+2x1o+2x2e+2x3o", "2x0e", 2, 5, False),
        ("2x0e+2x1o", "2x0e+2x1o", 2, 12, False),
    ],
)
def test_the_folded_route_is_taken_from_20_extra_columns(
    irreps_in: str, irreps_out: str, correlation: int, columns: int, folded: bool
) -> None:
    """`fold_weights` where the column route would do more than FOLDING_OVERHEAD (20) columns
    beyond one per output component (measured break-even, docs/performance.md)."""
    module = SymmetricContraction(irreps_in, irreps_out, correlation=correlation, num_elements=2)
    assert module.num_columns == columns
    assert module.fold_weights is folded


@pytest.mark.parametrize(
    ("irreps_in", "irreps_out", "species"),
    [
        ("3x0e+3x1o+3x2e+3x3o", "3x0e+3x1o", [2, 0, 2, 2, 0, 2]),  # element 1 absent
        ("3x0e+3x1o+3x2e+3x3o", "3x0e+3x1o", [1, 1, 1, 1]),  # one element only
        ("2x0e+2x1o+2x2e", "2x0e+2x1o+2x2e", [0, 1, 2, 1, 0]),
    ],
)
def test_folded_and_column_evaluations_agree(irreps_in: str, irreps_out: str, species: list[int]) -> None:
    """The two evaluations of the product basis (`fold_weights`: W folded into the bases per
    element, or one matmul per order over all columns) are the same function: values, input
    and weight gradients, second derivatives (forces in training), also when scripted."""
    generator = torch.Generator().manual_seed(3)
    with default_dtype(torch.float64):
        module = SymmetricContraction(irreps_in, irreps_out, correlation=3, num_elements=3)
    module.weights.data.normal_(generator=generator)
    x = torch.randn(len(species), o3.Irreps(irreps_in).dim, generator=generator, dtype=torch.float64)
    species_t = torch.tensor(species)
    results = []
    for fold in (True, False):
        module.fold_weights = fold
        for evaluate in (module, torch.jit.script(copy.deepcopy(module))):
            inputs = x.clone().requires_grad_(True)
            out = evaluate(inputs, species_t)
            probe = torch.linspace(-1.0, 1.0, out.numel(), dtype=torch.float64).view_as(out)
            (grad,) = torch.autograd.grad((out * probe).sum(), inputs, create_graph=True)
            weights = evaluate.weights if isinstance(evaluate, torch.jit.ScriptModule) else module.weights
            second = torch.autograd.grad(grad.square().sum(), [inputs, weights])
            results.append((out.detach(), grad.detach(), *second))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    assert results[0][0].abs().max() > 0 and results[0][3].abs().max() > 0
