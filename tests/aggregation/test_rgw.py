"""RGW: random gradient weights on the shared parameters, unweighted heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtrl.aggregation as agg
from mtrl.aggregation import RGW, TaskStats, mtl_backward
from mtrl.aggregation._rlw import DISTRIBUTIONS


def draws(method: RGW, k: int, count: int) -> torch.Tensor:
    stats = TaskStats(torch.ones(k, dtype=torch.float64))
    return torch.stack([method(None, stats) for _ in range(count)])


def test_flags_follow_the_paper() -> None:
    assert RGW.needs_jacobian is False  # weights do not depend on the gradients
    assert RGW.loss_weighting is False  # heads take their own unweighted step (Algorithm 1)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_weights_on_the_simplex_with_mean_one_over_k(distribution: str) -> None:
    k, count = 5, 4000
    weights = draws(RGW(distribution=distribution, seed=1), k, count)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(count, dtype=torch.float64))
    # E[w_i] = 1/k; the standard error of a mean of weights in [0, 1] is below 0.5/sqrt(count) ≈ 0.008.
    standard_error = weights.std(dim=0) / count**0.5
    assert ((weights.mean(dim=0) - 1 / k).abs() <= 4 * standard_error + 1e-12).all(), weights.mean(dim=0)


def test_reproducible_under_a_seed_and_different_across_seeds() -> None:
    first = draws(RGW(seed=3), 4, 20)
    again = draws(RGW(seed=3), 4, 20)
    other = draws(RGW(seed=4), 4, 20)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_same_draws_as_rlw_and_as_torchjd_random_weighting() -> None:
    """Shared sampler with RLW; and softmax(N(0, I)) exactly as torchjd's RandomWeighting draws it from
    a generator in the same state (torchjd uses the global one)."""
    from torchjd.aggregation import RandomWeighting

    k, seed = 6, 11
    ours = draws(RGW(seed=seed), k, 5)
    rlw = torch.stack([agg.make("rlw", seed=seed)(None, TaskStats(torch.ones(k, dtype=torch.float64)))
                       for _ in range(1)])
    torch.testing.assert_close(ours[:1], rlw, rtol=0, atol=0)
    torch.manual_seed(seed)
    reference = RandomWeighting()
    matrix = torch.zeros(k, 3, dtype=torch.float64)
    theirs = torch.stack([reference(matrix) for _ in range(5)])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_mtl_backward_gives_the_paper_update() -> None:
    """Shared: Σ λ_i ∇_θ ℓ_i (from one weighted backward, no Jacobian); heads: their own ∇_ψ ℓ_i."""
    torch.manual_seed(0)
    k = 3
    trunk = nn.Linear(4, 5).double()
    heads = nn.ModuleList(nn.Linear(5, 1).double() for _ in range(k))
    x = torch.randn(k, 7, 4, dtype=torch.float64)
    y = torch.randn(k, 7, dtype=torch.float64)

    def losses() -> torch.Tensor:
        return torch.stack([((heads[i](torch.tanh(trunk(x[i]))).squeeze(-1) - y[i]) ** 2).mean() for i in range(k)])

    method = RGW(seed=5)
    weights = mtl_backward(losses(), trunk.parameters(), method)
    shared = [p.grad.clone() for p in trunk.parameters()]
    head_grads = [p.grad.clone() for p in heads.parameters()]

    for p in [*trunk.parameters(), *heads.parameters()]:
        p.grad = None
    task_losses = losses()
    jacobian = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(task_losses[i], trunk.parameters(),
                                                                              retain_graph=True)])
                            for i in range(k)])
    expected_shared = weights @ jacobian
    torch.testing.assert_close(torch.cat([g.flatten() for g in shared]), expected_shared)
    expected_heads = torch.autograd.grad(task_losses.sum(), list(heads.parameters()))
    for got, expected in zip(head_grads, expected_heads):
        torch.testing.assert_close(got, expected)
    assert torch.equal(weights, RGW(seed=5)(None, TaskStats(task_losses.detach())))


def test_uses_the_jacobian_dtype_when_given_one() -> None:
    weights = RGW(seed=0)(torch.randn(3, 4, dtype=torch.float32), TaskStats(torch.ones(3, dtype=torch.float64)))
    assert weights.dtype == torch.float32


@pytest.mark.parametrize("kwargs, message", [
    ({"distribution": "gauss"}, "distribution = 'gauss'"),
    ({"seed": 1.5}, "seed = 1.5"),
    ({"seed": True}, "seed = True"),
])
def test_bad_options_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agg.make("rgw", **kwargs)
