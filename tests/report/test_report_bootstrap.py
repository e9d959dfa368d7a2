"""The aggregate metrics of Agarwal et al. (2021) against independent computations: the IQM against
``scipy.stats.trim_mean``, the probability of improvement against ``scipy.stats.mannwhitneyu`` and planted
answers, and the stratified bootstrap's replicates and intervals against the exact bootstrap distribution
enumerated over every resample."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats

from mtrl.report.bootstrap import (bootstrap_interval, improvement_interval, iqm, probability_of_improvement,
                                   stratified_resample)


@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (3, 10), (7, 3), (5, 1), (2, 2)])
def test_iqm_is_the_25_percent_trimmed_mean_over_runs_and_tasks(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    for scores in (rng.uniform(size=shape), np.round(rng.uniform(size=shape) * 10) / 10):   # with ties
        assert iqm(scores) == pytest.approx(scipy.stats.trim_mean(scores, 0.25, axis=None), abs=1e-12)
    # a batch of matrices: one IQM each
    batch = rng.uniform(size=(4, *shape))
    assert np.allclose(iqm(batch), [scipy.stats.trim_mean(m, 0.25, axis=None) for m in batch])


def test_iqm_ignores_the_outer_quartiles_and_is_affine_equivariant() -> None:
    scores = np.arange(12, dtype=float).reshape(3, 4)          # 0..11: the middle half is 3..8
    assert iqm(scores) == pytest.approx(np.mean(np.arange(3, 9)))
    outliers = scores.copy()
    outliers[0, 0], outliers[2, 3] = -1e9, 1e9                  # the extremes move, the IQM does not
    assert iqm(outliers) == pytest.approx(iqm(scores))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 10))
    assert iqm(2.5 * x + 0.3) == pytest.approx(2.5 * iqm(x) + 0.3)
    assert iqm(rng.permutation(x.ravel()).reshape(5, 6)) == pytest.approx(iqm(x))


def _mann_whitney_reference(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's definition written with SciPy: per task U / (n_x n_y), identical columns 0.5."""
    per_task = []
    for m in range(x.shape[1]):
        if np.array_equal(x[:, m], y[:, m]):
            per_task.append(0.5)
        else:
            u = scipy.stats.mannwhitneyu(x[:, m], y[:, m], alternative="greater").statistic
            per_task.append(u / (x.shape[0] * y.shape[0]))
    return float(np.mean(per_task))


def test_probability_of_improvement_against_mann_whitney_and_planted_answers() -> None:
    rng = np.random.default_rng(1)
    for runs_x, runs_y in ((3, 3), (1, 3), (5, 2), (10, 10)):
        x = np.round(rng.uniform(size=(runs_x, 10)) * 10) / 10
        y = np.round(rng.uniform(size=(runs_y, 10)) * 10) / 10
        assert probability_of_improvement(x, y) == pytest.approx(_mann_whitney_reference(x, y))
        assert probability_of_improvement(x, y) + probability_of_improvement(y, x) == pytest.approx(1.0)
    x = rng.uniform(size=(3, 10))
    assert probability_of_improvement(x, x) == 0.5                       # identical methods
    assert probability_of_improvement(x + 2, x) == 1.0                   # X dominates on every task
    assert probability_of_improvement(x, x + 2) == 0.0
    # Task 0: X always better (1); task 1: every pair tied (1/2); task 2: half the pairs won (1/2).
    planted_x = np.array([[1.0, 0.3, 0.0], [1.0, 0.3, 1.0]])
    planted_y = np.array([[0.0, 0.3, 0.5], [0.0, 0.3, 0.5]])
    assert probability_of_improvement(planted_x, planted_y) == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_a_stratified_resample_draws_runs_within_each_task() -> None:
    scores = np.array([[0.0, 10.0, 20.0], [1.0, 11.0, 21.0], [2.0, 12.0, 22.0], [3.0, 13.0, 23.0]])
    replicates = stratified_resample(scores, 20_000, np.random.default_rng(0))
    assert replicates.shape == (20_000, 4, 3)
    for m in range(3):                          # every task keeps its own values, each run about 1/4 of draws
        values, counts = np.unique(replicates[:, :, m], return_counts=True)
        assert np.array_equal(values, scores[:, m])
        assert np.allclose(counts / counts.sum(), 0.25, atol=0.01)
    # the tasks are drawn independently: run 0 on task 0 says nothing about task 1
    same_run = np.mean(replicates[:, :, 0] - 0 == replicates[:, :, 1] - 10)
    assert same_run == pytest.approx(0.25, abs=0.01)


def _exact_quantile(values: np.ndarray, q: float) -> float:
    """The q-quantile (inverse CDF) of the equally likely ``values``."""
    ordered = np.sort(values)
    return float(ordered[min(len(ordered) - 1, int(np.ceil(q * len(ordered))) - 1)])


def test_the_interval_is_the_percentile_interval_of_the_exact_stratified_bootstrap() -> None:
    # Tasks with disjoint value ranges: a resample that mixed tasks would give IQMs the exact set lacks.
    scores = np.array([[0.0, 0.7, 0.3], [0.1, 0.8, 0.35], [0.4, 1.0, 0.3]])
    runs, tasks = scores.shape
    draws = itertools.product(itertools.product(range(runs), repeat=runs), repeat=tasks)
    exact = np.array([iqm(np.stack([scores[list(picks), m] for m, picks in enumerate(draw)], axis=1))
                      for draw in draws])                                       # 27^3 equally likely resamples
    interval = bootstrap_interval(scores, iqm, reps=50_000, seed=3)
    assert interval.point == pytest.approx(scipy.stats.trim_mean(scores, 0.25, axis=None))
    assert _exact_quantile(exact, 0.02) <= interval.low <= _exact_quantile(exact, 0.03)
    assert _exact_quantile(exact, 0.97) <= interval.high <= _exact_quantile(exact, 0.98)
    replicates = iqm(stratified_resample(scores, 20_000, np.random.default_rng(0)))
    support = np.unique(np.round(exact, 12))
    assert np.isin(np.round(replicates, 12), support).all()
    assert replicates.mean() == pytest.approx(exact.mean(), abs=0.003)
    # the same seed, the same interval; another confidence level, a nested interval
    assert bootstrap_interval(scores, iqm, reps=50_000, seed=3) == interval
    narrow = bootstrap_interval(scores, iqm, reps=50_000, confidence=0.5, seed=3)
    assert interval.low <= narrow.low <= narrow.high <= interval.high


def test_one_run_has_no_interval_and_bad_shapes_are_refused() -> None:
    one = bootstrap_interval(np.array([[0.2, 0.4, 0.9, 1.0]]))             # n = 4: one cut at each end
    assert one.point == pytest.approx(0.65) and one.low is None and one.high is None
    assert improvement_interval(np.array([[1.0, 0.0]]), np.array([[0.0, 0.0]])).low is None
    with pytest.raises(ValueError, match="runs, tasks"):
        bootstrap_interval(np.array([0.2, 0.4]))
    with pytest.raises(ValueError, match="same tasks"):
        improvement_interval(np.zeros((2, 3)), np.zeros((2, 4)))


def test_improvement_intervals_of_identical_and_dominating_methods() -> None:
    x = np.random.default_rng(2).uniform(size=(3, 10))
    same = improvement_interval(x, x.copy(), reps=20_000)
    assert same.point == 0.5 and same.low < 0.5 < same.high
    assert same.low + same.high == pytest.approx(1.0, abs=0.03)          # symmetric about 0.5
    better = improvement_interval(x + 1, x, reps=2_000)
    assert (better.point, better.low, better.high) == (1.0, 1.0, 1.0)
    # one run against three: the three are still resampled
    spread = improvement_interval(x[:1], x, reps=2_000)
    assert spread.low < spread.point < spread.high
