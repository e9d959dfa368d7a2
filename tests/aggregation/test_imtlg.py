"""IMTL-G: equal projections on the unit gradients, the paper's closed form and torchjd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _references_a import imtlg_closed_form, random_matrix

from mtrl.aggregation import IMTLG, TaskStats


def weights_of(method: IMTLG, G: np.ndarray) -> np.ndarray:
    return method(torch.from_numpy(G), TaskStats(torch.ones(G.shape[0], dtype=torch.float64))).numpy()


def projections(G: np.ndarray, w: np.ndarray) -> np.ndarray:
    """⟨g, u_i⟩ for the nonzero rows, g = w @ G."""
    norms = np.linalg.norm(G, axis=1)
    keep = norms > 0
    return (G[keep] @ (w @ G)) / norms[keep]


@pytest.mark.parametrize("k, n", [(2, 4), (3, 10), (5, 5), (10, 30), (50, 60)])
@pytest.mark.parametrize("seed", range(3))
def test_equal_projections_and_weights_sum_to_one(k: int, n: int, seed: int) -> None:
    G = random_matrix(k, n, seed=seed + k, shift=0.2)
    method = IMTLG()
    w = weights_of(method, G)
    assert abs(w.sum() - 1) <= 1e-12
    p = projections(G, w)
    assert np.ptp(p) <= 1e-9 * np.abs(p).max()
    assert method.fallbacks == 0


@pytest.mark.parametrize("k, n", [(2, 4), (3, 10), (5, 5), (10, 30)])
@pytest.mark.parametrize("seed", range(3))
def test_matches_the_paper_closed_form(k: int, n: int, seed: int) -> None:
    G = random_matrix(k, n, seed=40 + seed + k, shift=0.2)
    np.testing.assert_allclose(weights_of(IMTLG(), G), imtlg_closed_form(G), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("k, n", [(2, 4), (3, 10), (10, 30)])
def test_matches_torchjd_imtlg_weighting_for_independent_gradients(k: int, n: int) -> None:
    from torchjd.aggregation import IMTLGWeighting

    G = random_matrix(k, n, seed=60 + k, shift=0.2)
    theirs = IMTLGWeighting()(torch.from_numpy(G @ G.T)).numpy()
    np.testing.assert_allclose(weights_of(IMTLG(), G), theirs, rtol=1e-7, atol=1e-10)


def test_norms_over_sixteen_orders_of_magnitude() -> None:
    G = random_matrix(4, 8, seed=7) * np.array([[1e-8], [1.0], [1e4], [1e8]])
    w = weights_of(IMTLG(), G)
    p = projections(G, w)
    assert np.ptp(p) <= 1e-9 * np.abs(p).max()
    assert abs(w.sum() - 1) <= 1e-12


def test_zero_gradient_gets_no_weight_and_the_others_stay_balanced() -> None:
    G = random_matrix(4, 8, seed=8, shift=0.2)
    G[2] = 0.0
    w = weights_of(IMTLG(), G)
    assert w[2] == 0 and abs(w.sum() - 1) <= 1e-12
    p = projections(G, w)
    assert np.ptp(p) <= 1e-9 * np.abs(p).max()


def test_opposite_gradients_balance_to_zero_like_the_closed_form() -> None:
    """g_2 = −g_1: equal projections force a common projection 0, α = (½, ½) as the paper's formula
    gives (torchjd's pseudo-inverse returns zeros here)."""
    g = random_matrix(1, 6, seed=9)[0]
    G = np.stack([g, -g])
    w = weights_of(IMTLG(), G)
    np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(w, imtlg_closed_form(G), atol=1e-12)


def test_duplicated_gradients_are_handled() -> None:
    G = random_matrix(3, 7, seed=10, shift=0.2)[[0, 1, 2, 1]]
    w = weights_of(IMTLG(), G)
    assert abs(w.sum() - 1) <= 1e-12
    p = projections(G, w)
    assert np.ptp(p) <= 1e-9 * np.abs(p).max()


def test_no_solution_is_a_counted_fallback_to_the_mean() -> None:
    """Three unit directions whose C⁻¹1 has mixed signs; choosing the norms so that Σ_i (C⁻¹1)_i/‖g_i‖ = 0
    leaves no α with Σα = 1 and equal projections (the paper's D Uᵀ is singular)."""
    units = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [np.sqrt(0.45), np.sqrt(0.45), np.sqrt(0.1)]])
    v = np.linalg.solve(units @ units.T, np.ones(3))
    assert v[2] < 0 < v[0] + v[1]
    norms = np.array([1.0, 1.0, -v[2] / (v[0] + v[1])])
    method = IMTLG()
    w = weights_of(method, units * norms[:, None])
    assert method.fallbacks == 1
    np.testing.assert_allclose(w, np.full(3, 1 / 3))
