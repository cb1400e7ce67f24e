"""edge_softmax: a softmax over each receiver's incoming edges, equal to a dense softmax per atom."""

from __future__ import annotations

import torch

from equimd.potentials.nn.edge_softmax import edge_softmax


def dense_reference(logits: torch.Tensor, receivers: torch.Tensor, num_nodes: int) -> torch.Tensor:
    out = torch.empty_like(logits)
    for node in range(num_nodes):
        mask = receivers == node
        if mask.any():
            out[mask] = torch.softmax(logits[mask], dim=0)
    return out


def test_matches_a_dense_softmax_per_receiver_and_sums_to_one():
    gen = torch.Generator().manual_seed(0)
    receivers = torch.randint(0, 6, (40,), generator=gen)
    logits = 30.0 * torch.randn(40, 3, generator=gen, dtype=torch.float64)  # large: stability
    alpha = edge_softmax(logits, receivers, 7)  # atom 6 receives nothing
    torch.testing.assert_close(alpha, dense_reference(logits, receivers, 7), rtol=1e-12, atol=1e-14)
    sums = torch.zeros(7, 3, dtype=torch.float64).index_add(0, receivers, alpha)
    present = torch.bincount(receivers, minlength=7) > 0
    torch.testing.assert_close(sums[present], torch.ones_like(sums[present]))


def test_gradients_twice_and_empty_and_scripted():
    logits = torch.randn(10, 2, dtype=torch.float64, requires_grad=True)
    receivers = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    assert torch.autograd.gradcheck(lambda x: edge_softmax(x, receivers, 4), (logits,))
    assert torch.autograd.gradgradcheck(lambda x: edge_softmax(x, receivers, 4), (logits,))
    scripted = torch.jit.script(edge_softmax)
    torch.testing.assert_close(scripted(logits, receivers, 4), edge_softmax(logits, receivers, 4))
    empty = edge_softmax(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 3)
    assert empty.shape == (0, 2)
