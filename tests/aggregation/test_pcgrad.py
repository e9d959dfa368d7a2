"""PCGrad: conflict removal, the paper's algorithm on vectors, and torchjd's PCGradWeighting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _references_a import pcgrad_vectors, random_matrix

import mtrl.aggregation as agg
from mtrl.aggregation import PCGrad, TaskStats


def weights_of(method: PCGrad, G: np.ndarray) -> np.ndarray:
    J = torch.from_numpy(G)
    return method(J, TaskStats(torch.ones(G.shape[0], dtype=torch.float64))).numpy()


def orders_for(seed: int, k: int) -> list[list[int]]:
    """The projection orders a PCGrad seeded with ``seed`` draws at its first call."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(k, generator=generator).tolist() for _ in range(k)]


@pytest.mark.parametrize("seed", range(20))
def test_two_tasks_result_conflicts_with_neither(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g1 = rng.standard_normal(8)
    g2 = -0.7 * g1 + 0.5 * rng.standard_normal(8)  # conflicting: ⟨g1, g2⟩ < 0
    G = np.stack([g1, g2])
    assert g1 @ g2 < 0
    d = weights_of(PCGrad(seed=seed), G) @ G
    scale = np.linalg.norm(g1) * np.linalg.norm(g2)
    assert d @ g1 >= -1e-12 * scale and d @ g2 >= -1e-12 * scale
    # each projected gradient is orthogonal to the other task's gradient
    p1, p2 = pcgrad_vectors(G, [[0, 1], [1, 0]])
    assert abs(p1 @ g2) <= 1e-12 * scale and abs(p2 @ g1) <= 1e-12 * scale


@pytest.mark.parametrize("k, n", [(2, 6), (3, 10), (5, 4), (10, 30)])
@pytest.mark.parametrize("seed", range(3))
def test_weights_reproduce_algorithm_1_on_the_vectors(k: int, n: int, seed: int) -> None:
    """``w @ J`` equals (1/k) Σ_i g_i^PC computed on the vectors with the same random orders."""
    G = random_matrix(k, n, seed=seed)
    expected = np.mean(pcgrad_vectors(G, orders_for(seed, k)), axis=0)
    d = weights_of(PCGrad(seed=seed), G) @ G
    np.testing.assert_allclose(d, expected, rtol=1e-10, atol=1e-12 * np.abs(G).max())


@pytest.mark.parametrize("k", [2, 3, 6, 10])
@pytest.mark.parametrize("seed", range(3))
def test_matches_torchjd_pcgrad_weighting(k: int, seed: int) -> None:
    """torchjd sums the projected gradients and draws ``torch.randperm(k)`` per task from the global
    generator; with that generator in our generator's state the weights agree exactly, up to ÷ k."""
    from torchjd.aggregation import PCGradWeighting

    G = random_matrix(k, 2 * k + 3, seed=100 + seed)
    ours = weights_of(PCGrad(seed=seed), G)
    torch.manual_seed(seed)
    theirs = PCGradWeighting()(torch.from_numpy(G @ G.T)).numpy()
    np.testing.assert_allclose(ours * k, theirs, rtol=1e-10, atol=1e-12)
    summed = weights_of(PCGrad(reduction="sum", seed=seed), G)
    np.testing.assert_allclose(summed, theirs, rtol=1e-10, atol=1e-12)


def test_no_conflict_means_the_mean_gradient() -> None:
    G = np.abs(random_matrix(4, 6, seed=1))  # all inner products positive
    np.testing.assert_allclose(weights_of(PCGrad(seed=0), G), np.full(4, 0.25), rtol=0, atol=1e-15)


def test_zero_gradient_is_never_projected_on() -> None:
    G = random_matrix(3, 5, seed=2)
    G[1] = 0.0
    weights = weights_of(PCGrad(seed=0), G)
    assert np.isfinite(weights).all()
    d = weights @ G
    expected = np.mean(pcgrad_vectors(np.delete(G, 1, axis=0), [[0, 1], [1, 0]]), axis=0) * 2 / 3
    np.testing.assert_allclose(d, expected, rtol=1e-10)


def test_orders_come_from_the_own_generator() -> None:
    G = random_matrix(5, 7, seed=3)
    method = PCGrad(seed=9)
    torch.manual_seed(0)
    first = [weights_of(method, G) for _ in range(3)]
    method.reset()
    torch.manual_seed(123)  # the global generator does not matter
    second = [weights_of(method, G) for _ in range(3)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(first[0], other) for other in first[1:])  # orders change per call


@pytest.mark.parametrize("kwargs, message", [
    ({"reduction": "max"}, "reduction = 'max'"),
    ({"seed": "0"}, "seed = '0'"),
])
def test_bad_options_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agg.make("pcgrad", **kwargs)
