"""FairGrad: ``(K w)_i = w_i^(-1/α)``, against torchjd and the authors' least-squares formulation."""

from __future__ import annotations

import pytest
import torch
from _references_b import fairgrad_least_squares

import mtrl.aggregation as agg
from mtrl.aggregation import TaskStats


def random_jacobian(k: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def weights_of(method: agg.Aggregator, jacobian: torch.Tensor) -> torch.Tensor:
    return method(jacobian, TaskStats(torch.ones(jacobian.shape[0], dtype=jacobian.dtype)))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0, 10.0])
@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_weights_satisfy_the_alpha_fair_condition(alpha: float, k: int) -> None:
    method = agg.make("fairgrad", alpha=alpha)
    jacobian = random_jacobian(k, 2 * k + 8, seed=k)
    w = weights_of(method, jacobian)
    assert (w > 0).all()
    torch.testing.assert_close(jacobian @ jacobian.T @ w, w ** (-1 / alpha), rtol=1e-9, atol=0)
    assert method.fallbacks == 0


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_agrees_with_torchjd_fairgrad_weighting(alpha: float, k: int) -> None:
    """torchjd's FairGradWeighting is the authors' scipy least-squares solve on the raw Gramian."""
    torchjd_aggregation = pytest.importorskip("torchjd.aggregation")
    for seed in range(3):
        jacobian = random_jacobian(k, 3 * k + 5, seed=seed)
        reference = torchjd_aggregation.FairGradWeighting(alpha)(jacobian @ jacobian.T)
        # least_squares' default tolerances (1e-8) bound the agreement.
        torch.testing.assert_close(weights_of(agg.make("fairgrad", alpha=alpha), jacobian), reference,
                                   rtol=1e-6, atol=0)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_agrees_with_a_tight_least_squares_solve_on_badly_scaled_tasks(alpha: float) -> None:
    jacobian = random_jacobian(4, 12, seed=5) * torch.tensor([1e-3, 1.0, 10.0, 1e3], dtype=torch.float64)[:, None]
    reference = torch.from_numpy(fairgrad_least_squares((jacobian @ jacobian.T).numpy(), alpha))
    torch.testing.assert_close(weights_of(agg.make("fairgrad", alpha=alpha), jacobian), reference, rtol=1e-6, atol=0)


def test_alpha_one_is_nash_mtl() -> None:
    jacobian = random_jacobian(5, 20, seed=6)
    torch.testing.assert_close(weights_of(agg.make("fairgrad", alpha=1.0), jacobian),
                               weights_of(agg.make("nashmtl"), jacobian), rtol=1e-12, atol=0)


def test_alpha_zero_is_the_mean() -> None:
    weights = weights_of(agg.make("fairgrad", alpha=0), random_jacobian(4, 6, seed=7))
    torch.testing.assert_close(weights, torch.full((4,), 0.25, dtype=torch.float64))


def test_larger_alpha_equalises_the_utilities() -> None:
    """α → ∞ tends to max-min fairness: the spread of the utilities g_iᵀd shrinks as α grows."""
    jacobian = random_jacobian(4, 10, seed=8) * torch.tensor([0.2, 1.0, 3.0, 6.0], dtype=torch.float64)[:, None]
    spreads = []
    for alpha in (0.5, 1.0, 2.0, 8.0):
        utilities = jacobian @ (weights_of(agg.make("fairgrad", alpha=alpha), jacobian) @ jacobian)
        spreads.append(float(utilities.max() / utilities.min()))
    assert spreads == sorted(spreads, reverse=True), spreads


def test_pareto_stationary_input_uses_a_counted_fallback() -> None:
    g = random_jacobian(1, 5, seed=9)[0]
    method = agg.make("fairgrad", alpha=2.0)
    weights = weights_of(method, torch.stack([g, -g, 2 * g]))
    assert torch.isfinite(weights).all() and method.fallbacks == 1


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan"), "2", True])
def test_bad_alpha_names_the_value(value: object) -> None:
    with pytest.raises(ValueError, match="Parameter `alpha`"):
        agg.make("fairgrad", alpha=value)


def test_repr_and_str() -> None:
    method = agg.make("fairgrad", alpha=2.0)
    assert repr(method) == "FairGrad(alpha=2.0)"
    assert str(method) == "fairgrad2"
