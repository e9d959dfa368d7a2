"""CAGrad: the primal against cvxpy, the duality gap, the authors' SLSQP route and torchjd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _references_a import cagrad_dual_objective, cagrad_primal, cagrad_slsqp, random_matrix

import mtrl.aggregation as agg
from mtrl.aggregation import CAGrad, TaskStats
from mtrl.aggregation import _linalg

SHAPES = [(2, 5), (3, 10), (5, 4), (10, 30), (10, 6), (50, 80)]


def weights_of(method: CAGrad, G: np.ndarray) -> np.ndarray:
    return method(torch.from_numpy(G), TaskStats(torch.ones(G.shape[0], dtype=torch.float64))).numpy()


@pytest.mark.parametrize("k, n", SHAPES)
@pytest.mark.parametrize("c", [0.4, 0.9])
def test_direction_solves_the_primal(k: int, n: int, c: float) -> None:
    """``d = w @ J`` (no rescaling) lies in the ball and attains the primal optimum from cvxpy."""
    G = random_matrix(k, n, seed=k * n, shift=0.3)
    method = CAGrad(c=c, rescale=0)
    d = weights_of(method, G) @ G
    g0 = G.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    assert np.linalg.norm(d - g0) <= radius * (1 + 1e-9)
    d_cvx, optimum = cagrad_primal(G, c)
    scale = np.abs(G).max() * np.linalg.norm(g0)
    assert (G @ d).min() >= optimum - 1e-7 * scale  # cvxpy (CLARABEL) is accurate to ~1e-8
    np.testing.assert_allclose(d, d_cvx, rtol=0, atol=1e-4 * np.linalg.norm(d_cvx))
    assert method.fallbacks == 0


@pytest.mark.parametrize("k, n", SHAPES)
def test_duality_gap_vanishes(k: int, n: int) -> None:
    """The dual value F(w*) at the recovered simplex point equals the primal value min_i ⟨g_i, d⟩."""
    G = random_matrix(k, n, seed=7 + k, shift=0.2)
    c = 0.4
    weights = weights_of(CAGrad(c=c, rescale=0), G)
    w_star = weights - 1.0 / k
    w_star /= w_star.sum()
    assert (w_star >= -1e-12).all()
    primal = (G @ (weights @ G)).min()
    dual = cagrad_dual_objective(G, w_star, c)
    assert dual - primal <= 1e-10 * (abs(dual) + np.linalg.norm(G.mean(axis=0)) ** 2)
    assert dual >= primal - 1e-12 * abs(dual)  # weak duality


@pytest.mark.parametrize("k, n", [(2, 5), (3, 10), (5, 4), (10, 30)])
@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_agrees_with_the_authors_slsqp_route(k: int, n: int, rescale: int) -> None:
    """Same direction as SLSQP on the dual (the authors' solver, tolerance ~1e-6), with every
    rescaling; our dual objective is never worse than SLSQP's."""
    G = random_matrix(k, n, seed=31 + k, shift=0.3)
    c = 0.4
    ours = weights_of(CAGrad(c=c, rescale=rescale), G) @ G
    theirs = cagrad_slsqp(G, c, rescale)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-3 * np.linalg.norm(theirs))


@pytest.mark.parametrize("k, n", [(2, 5), (3, 10), (5, 4), (10, 30)])
def test_matches_torchjd_cagrad_weighting(k: int, n: int) -> None:
    """torchjd returns ``1/k + (√φ/‖g_w‖) w`` (our ``rescale=0``), solved with cvxpy/CLARABEL."""
    from torchjd.aggregation import CAGradWeighting

    G = random_matrix(k, n, seed=50 + k, shift=0.3)
    ours = weights_of(CAGrad(c=0.4, rescale=0), G)
    theirs = CAGradWeighting(c=0.4)(torch.from_numpy(G @ G.T)).numpy()
    np.testing.assert_allclose(ours @ G, theirs @ G, rtol=0, atol=1e-5 * np.linalg.norm(theirs @ G))


def test_rescale_factors() -> None:
    G = random_matrix(4, 9, seed=3, shift=0.3)
    c = 0.6
    raw = weights_of(CAGrad(c=c, rescale=0), G)
    np.testing.assert_allclose(weights_of(CAGrad(c=c, rescale=1), G), raw / (1 + c**2), rtol=1e-12)
    np.testing.assert_allclose(weights_of(CAGrad(c=c, rescale=2), G), raw / (1 + c), rtol=1e-12)


def test_c_zero_is_the_mean() -> None:
    G = random_matrix(5, 9, seed=4)
    np.testing.assert_allclose(weights_of(CAGrad(c=0.0), G), np.full(5, 0.2), rtol=0, atol=0)


def test_zero_gradient_in_the_hull_gives_the_mean_direction() -> None:
    """With a zero task gradient and no gradient opposed to g_0 the dual optimum is g_w = 0; the
    documented choice is d = g_0 (then rescaled)."""
    G = np.abs(random_matrix(4, 6, seed=5))
    G[2] = 0.0
    method = CAGrad(c=0.4)
    np.testing.assert_allclose(weights_of(method, G), np.full(4, 0.25) / (1 + 0.4**2), rtol=1e-12)
    assert method.fallbacks == 0


def test_scale_invariance_over_sixteen_orders_of_magnitude() -> None:
    G = random_matrix(6, 10, seed=6, shift=0.3)
    reference = weights_of(CAGrad(), G)
    for scale in (1e-8, 1e8):
        np.testing.assert_allclose(weights_of(CAGrad(), G * scale), reference, rtol=1e-7, atol=1e-12)


def test_exhausted_iteration_budget_is_a_counted_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """With too few active-set iterations the duality gap stays open: the call is counted and the
    direction is still finite; with the full budget the same input is solved to the cvxpy optimum."""
    G = random_matrix(10, 30, seed=8, shift=0.3)
    monkeypatch.setattr(_linalg, "iteration_budget", lambda k: 1)
    method = CAGrad(c=0.4, rescale=0)
    assert np.isfinite(weights_of(method, G)).all()
    assert method.fallbacks == 1
    monkeypatch.undo()
    d = weights_of(method, G) @ G
    assert method.fallbacks == 1
    _, optimum = cagrad_primal(G, 0.4)
    assert (G @ d).min() >= optimum - 1e-7 * np.abs(G).max() * np.linalg.norm(G.mean(axis=0))


@pytest.mark.parametrize("kwargs, message", [
    ({"c": -0.1}, "c = -0.1"),
    ({"c": "big"}, "c = 'big'"),
    ({"rescale": 3}, "rescale = 3"),
    ({"rescale": True}, "rescale = True"),
])
def test_bad_options_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agg.make("cagrad", **kwargs)
