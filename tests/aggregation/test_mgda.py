"""MGDA: the min-norm point of the convex hull (KKT on the simplex), against cvxpy and torchjd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _references_a import min_norm_qp, min_norm_two, random_matrix

import mtrl.aggregation as agg
from mtrl.aggregation import MGDA, TaskStats
from mtrl.aggregation import _linalg


def weights_of(method: MGDA, G: np.ndarray, losses: np.ndarray | None = None) -> np.ndarray:
    losses = np.ones(G.shape[0]) if losses is None else losses
    return method(torch.from_numpy(G), TaskStats(torch.from_numpy(losses))).numpy()


def assert_kkt(K: np.ndarray, w: np.ndarray, tol: float) -> None:
    """Simplex KKT of min wᵀKw: (Kw)_i ≥ wᵀKw for all i, with equality where w_i > 0."""
    assert (w >= 0).all() and abs(w.sum() - 1) <= 1e-12
    Kw = K @ w
    value = w @ Kw
    scale = np.abs(K).max()
    assert (Kw >= value - tol * scale).all(), Kw - value
    support = w > 1e-9
    assert np.abs(Kw[support] - value).max() <= tol * scale


CASES = {
    "independent": lambda: random_matrix(5, 12, seed=1),
    "more tasks than dimensions": lambda: random_matrix(10, 4, seed=2),
    "fifty tasks": lambda: random_matrix(50, 60, seed=3, shift=0.2),
    "duplicated rows": lambda: random_matrix(4, 7, seed=4)[[0, 1, 2, 3, 0, 2]],
    "rank two": lambda: random_matrix(6, 2, seed=5) @ random_matrix(2, 9, seed=6),
    "nearly collinear": lambda: random_matrix(1, 8, seed=7) + 1e-6 * random_matrix(5, 8, seed=8),
    "zero row": lambda: np.vstack([random_matrix(3, 6, seed=9, shift=1.0), np.zeros((1, 6))]),
    "mixed magnitudes": lambda: random_matrix(4, 6, seed=10) * np.array([[1e-8], [1.0], [1e4], [1e8]]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kkt_conditions_of_the_min_norm_point(case: str) -> None:
    G = CASES[case]()
    method = MGDA()
    w = weights_of(method, G)
    K = G @ G.T
    assert_kkt(K, w, tol=1e-9)
    assert method.fallbacks == 0


@pytest.mark.parametrize("k, n", [(2, 5), (3, 10), (5, 3), (10, 30), (20, 8)])
@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_a_generic_qp_solver(k: int, n: int, seed: int) -> None:
    G = random_matrix(k, n, seed=seed + 10 * k, shift=0.3)
    K = G @ G.T
    w = weights_of(MGDA(), G)
    w_qp, value_qp = min_norm_qp(K)
    assert w @ K @ w <= value_qp + 1e-9 * np.abs(K).max()
    if k <= n:  # strictly convex: unique minimiser
        np.testing.assert_allclose(w, w_qp, atol=1e-5)
    np.testing.assert_allclose(w @ G, w_qp @ G, atol=1e-4 * np.linalg.norm(G, axis=1).max())


@pytest.mark.parametrize("seed", range(5))
def test_two_tasks_closed_form(seed: int) -> None:
    G = random_matrix(2, 6, seed=seed)
    np.testing.assert_allclose(weights_of(MGDA(), G), min_norm_two(G[0], G[1]), atol=1e-12)


@pytest.mark.parametrize("k, n", [(3, 10), (5, 4), (10, 30)])
def test_matches_torchjd_mgda_weighting(k: int, n: int) -> None:
    """torchjd runs plain Frank-Wolfe (sublinear): it approaches our exact minimum from above."""
    from torchjd.aggregation import MGDAWeighting

    G = random_matrix(k, n, seed=20 + k, shift=0.3)
    K = G @ G.T
    ours = weights_of(MGDA(), G)
    theirs = MGDAWeighting(epsilon=1e-12, max_iters=2000)(torch.from_numpy(K)).numpy()
    assert ours @ K @ ours <= theirs @ K @ theirs + 1e-12 * np.abs(K).max()
    np.testing.assert_allclose(ours @ K @ ours, theirs @ K @ theirs, rtol=2e-3)
    np.testing.assert_allclose(ours, theirs, atol=0.05)


def test_every_task_improves_by_at_least_the_squared_norm() -> None:
    G = random_matrix(6, 10, seed=11)
    d = weights_of(MGDA(), G) @ G
    assert (G @ d >= d @ d - 1e-10 * np.abs(G).max() ** 2).all()


def test_pareto_stationary_point_gives_zero_update() -> None:
    g = random_matrix(1, 5, seed=12)[0]
    G = np.stack([g, -g, 2 * g])
    d = weights_of(MGDA(), G) @ G
    assert np.linalg.norm(d) <= 1e-12 * np.linalg.norm(g)


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_normalisations_solve_on_scaled_gradients_and_weight_the_raw_ones(normalization: str) -> None:
    G = random_matrix(4, 9, seed=13) * np.array([[0.1], [1.0], [10.0], [3.0]])
    losses = np.array([0.5, 2.0, 1.5, 4.0])
    norms = np.linalg.norm(G, axis=1)
    divisor = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    expected, _ = min_norm_qp((G / divisor[:, None]) @ (G / divisor[:, None]).T)
    w = weights_of(MGDA(normalization=normalization), G, losses)
    np.testing.assert_allclose(w, expected, atol=1e-6)


def test_non_positive_loss_under_loss_normalisation_is_a_counted_fallback() -> None:
    G = random_matrix(3, 5, seed=14)
    method = MGDA(normalization="loss")
    w = weights_of(method, G, np.array([1.0, 0.0, -2.0]))
    assert np.isfinite(w).all() and method.fallbacks == 1


def test_exhausted_iteration_budget_is_a_counted_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """With too few active-set iterations the duality gap stays open: the call is counted, and the
    weights are still the best point of the simplex found (finite, non-negative, summing to 1)."""
    G = random_matrix(10, 30, seed=15, shift=0.3)
    monkeypatch.setattr(_linalg, "iteration_budget", lambda k: 1)
    method = MGDA()
    w = weights_of(method, G)
    assert method.fallbacks == 1
    assert (w >= 0).all() and abs(w.sum() - 1) <= 1e-12
    monkeypatch.undo()
    assert_kkt(G @ G.T, weights_of(method, G), tol=1e-9)
    assert method.fallbacks == 1


def test_bad_option_names_the_value() -> None:
    with pytest.raises(ValueError, match="normalization = 'norm'"):
        agg.make("mgda", normalization="norm")


@pytest.mark.parametrize("case", ["random", "opposite_rows", "singular_on_the_face"])
def test_the_face_solve_equals_the_bordered_system(case: str) -> None:
    """The active set's face step solves the indefinite bordered system ``[[K_PP, −1], [1ᵀ, 0]]`` through one
    SPD solve with ``K_PP + 11ᵀ``; it equals LAPACK's pivoted solve of the bordered system itself, also where
    ``K_PP`` is singular (opposite rows: the origin is on the face) but definite on ``1ᵀx = 0``."""
    generator = torch.Generator().manual_seed(5)
    if case == "random":
        G = torch.randn(6, 4, dtype=torch.float64, generator=generator)
        face = torch.tensor([True, False, True, True, False, False])
    elif case == "opposite_rows":
        G = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.3, 2.0]], dtype=torch.float64)
        face = torch.tensor([True, True, False])
    else:   # three rows in a plane through the origin: K_PP has rank 2
        G = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -1.5, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
        face = torch.tensor([True, True, True, False])
    K = G @ G.T
    K = K / torch.diagonal(K).max()
    b = torch.randn(K.shape[0], dtype=torch.float64, generator=generator)
    a, c, lam_a, lam_c = _linalg._face_stationary_points(K + 1.0, torch.eye(K.shape[0], dtype=torch.float64), b, face)
    a_only, none, lam_a_only, _ = _linalg._face_stationary_points(K + 1.0, torch.eye(K.shape[0], dtype=torch.float64),
                                                                 None, face)   # MGDA's face step: a alone
    assert none is None
    torch.testing.assert_close(torch.cat([a_only, lam_a_only[None]]), torch.cat([a, lam_a[None]]), rtol=1e-12, atol=1e-14)

    P = face.nonzero().flatten()
    m = len(P)
    bordered = torch.zeros(m + 1, m + 1, dtype=torch.float64)
    bordered[:m, :m] = K[P][:, P]
    bordered[:m, m] = -1.0
    bordered[m, :m] = 1.0
    rhs = torch.zeros(m + 1, 2, dtype=torch.float64)
    rhs[m, 0] = 1.0
    rhs[:m, 1] = -b[P]
    reference = torch.linalg.solve(bordered, rhs)
    torch.testing.assert_close(a[P], reference[:m, 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c[P], reference[:m, 1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.stack([lam_a, lam_c]), reference[m], rtol=1e-10, atol=1e-12)
    assert not a[~face].any() and not c[~face].any()
