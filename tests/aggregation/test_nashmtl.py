"""Nash-MTL: ``α_i (K α)_i = 1``, the authors' cvxpy formulation, fallbacks and ``update_weights_every``."""

from __future__ import annotations

import pytest
import torch
from _references_b import nash_mtl_ccp

import mtrl.aggregation as agg
from mtrl.aggregation import TaskStats


def random_jacobian(k: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def stats(k: int) -> TaskStats:
    return TaskStats(torch.ones(k, dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_weights_satisfy_the_nash_bargaining_condition(k: int) -> None:
    method = agg.make("nashmtl")
    for seed in range(3):
        jacobian = random_jacobian(k, 2 * k + 8, seed)
        alpha = method(jacobian, stats(k))
        products = alpha * (jacobian @ jacobian.T @ alpha)
        torch.testing.assert_close(products, torch.ones(k, dtype=torch.float64), rtol=1e-9, atol=0)
        # g_iᵀ d = 1/α_i, hence ‖d‖² = Σ_i α_i g_iᵀ d = k.
        assert float((alpha @ jacobian).norm() ** 2) == pytest.approx(k, rel=1e-9)
    assert method.fallbacks == 0


@pytest.mark.parametrize("k", [2, 3, 5])
def test_agrees_with_the_authors_cvxpy_formulation(k: int) -> None:
    pytest.importorskip("cvxpy")
    for seed in range(2):
        scales = torch.linspace(0.1, 3.0, k, dtype=torch.float64)[:, None]
        jacobian = random_jacobian(k, 20, seed=100 * k + seed) * scales
        reference = nash_mtl_ccp((jacobian @ jacobian.T).numpy())
        alpha = agg.make("nashmtl")(jacobian, stats(k))
        # CLARABEL's interior-point tolerance bounds the agreement (~1e-7 relative).
        torch.testing.assert_close(alpha, torch.from_numpy(reference), rtol=1e-5, atol=0)


@pytest.mark.parametrize("case", ["opposite", "zero_row", "more_tasks_than_params"])
def test_degenerate_gramians_use_a_counted_finite_fallback(case: str) -> None:
    g = random_jacobian(3, 8, seed=1)
    jacobian = {
        "opposite": torch.stack([g[0], -g[0]]),
        "zero_row": torch.cat([g, torch.zeros(1, 8, dtype=torch.float64)]),
        "more_tasks_than_params": random_jacobian(9, 3, seed=2),
    }[case]
    method = agg.make("nashmtl")
    for call in range(1, 3):
        weights = method(jacobian, stats(jacobian.shape[0]))
        assert torch.isfinite(weights).all() and (weights >= 0).all()
        assert torch.isfinite(weights @ jacobian).all()
        assert method.fallbacks == call
    if case == "zero_row":
        assert weights[-1] == 0
        torch.testing.assert_close(weights[:3], agg.make("nashmtl")(g, stats(3)))


def test_update_weights_every_reuses_the_last_weights() -> None:
    method = agg.make("nashmtl", update_weights_every=3)
    jacobians = [random_jacobian(3, 10, seed=10 + i) for i in range(7)]
    weights = [method(j, stats(3)) for j in jacobians]
    fresh = [agg.make("nashmtl")(j, stats(3)) for j in jacobians]
    for i, w in enumerate(weights):
        assert torch.equal(w, weights[3 * (i // 3)])  # reused as is in between
        # recomputed from a warm start: the same solution as a cold solve, to the solver's tolerance
        torch.testing.assert_close(w, fresh[3 * (i // 3)], rtol=1e-9, atol=0)


def test_state_dict_resumes_mid_cycle() -> None:
    jacobians = [random_jacobian(3, 10, seed=20 + i) for i in range(6)]
    method = agg.make("nashmtl", update_weights_every=4)
    for j in jacobians[:2]:
        method(j, stats(3))
    saved = method.state_dict()
    first = [method(j, stats(3)) for j in jacobians[2:]]
    resumed = agg.make("nashmtl", update_weights_every=4)
    resumed.load_state_dict(saved)
    second = [resumed(j, stats(3)) for j in jacobians[2:]]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_returns_the_input_dtype() -> None:
    jacobian = random_jacobian(3, 10, seed=3).float()
    weights = agg.make("nashmtl")(jacobian, TaskStats(torch.ones(3)))
    assert weights.dtype == torch.float32
    products = weights.double() * (jacobian.double() @ jacobian.double().T @ weights.double())
    torch.testing.assert_close(products, torch.ones(3, dtype=torch.float64), rtol=1e-5, atol=0)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_update_weights_every_names_the_value(value: object) -> None:
    with pytest.raises(ValueError, match=f"`update_weights_every = {value!r}`"):
        agg.make("nashmtl", update_weights_every=value)
