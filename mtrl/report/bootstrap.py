"""Aggregate metrics over runs x tasks with stratified-bootstrap confidence intervals (Agarwal et al. 2021,
"Deep Reinforcement Learning at the Edge of the Statistical Precipice", Sec. 4), as the ``rliable`` package
defines them; Meta-World+ reports MT10 this way.

A method's scores are a ``[runs, tasks]`` matrix (here: each run's success rate on each task).

* interquartile mean (IQM): the mean of the middle 50 % of all ``runs x tasks`` scores, i.e. the 25 %
  trimmed mean with ``floor(0.25 n)`` scores cut at each end (``scipy.stats.trim_mean(scores, 0.25,
  axis=None)``, rliable's ``metrics.aggregate_iqm``);
* probability of improvement ``P(X > Y) = 1/M sum_m P(X_m > Y_m)``, with ``P(X_m > Y_m)`` the
  Mann-Whitney U statistic over the runs of task ``m``, ``1/(N K) sum_i sum_j S(x_im, y_jm)``, ``S`` = 1 if
  ``x > y``, 1/2 if equal, 0 otherwise (rliable's ``metrics.probability_of_improvement``);
* stratified bootstrap: a replicate resamples, for every task independently, the runs with replacement
  (tasks are the strata: every replicate keeps all tasks); two methods are resampled independently of
  each other. The confidence interval is the percentile interval of the replicates (rliable's
  ``get_interval_estimates(..., method="percentile")``, 95 % by default).

.. note:: Not the ``rliable`` package itself: it needs ``arch < 8``, and ``arch`` 7.2 fails to import with
   pandas 3 (what a fresh install resolves), so this module computes the same definitions with NumPy. The
   replicates are drawn from a fixed seed, so a report is reproducible; with one run there is nothing to
   resample and no interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "iqm", "probability_of_improvement", "stratified_resample", "bootstrap_interval",
           "improvement_interval", "REPS"]

#: Bootstrap replicates (rliable's default).
REPS = 50_000
#: Replicates drawn at a time, so that memory stays bounded for many runs.
_CHUNK = 5_000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval (None without one: a single run)."""

    point: float
    low: float | None
    high: float | None


def iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean over the last two axes (``[..., runs, tasks]`` -> ``[...]``): the mean of the
    sorted scores with ``floor(n / 4)`` cut at each end, ``n = runs x tasks``."""
    scores = np.asarray(scores, dtype=np.float64)
    flat = np.sort(scores.reshape(*scores.shape[:-2], -1), axis=-1)
    cut = flat.shape[-1] // 4
    return flat[..., cut:flat.shape[-1] - cut].mean(axis=-1)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``P(X > Y)`` of ``x`` ``[..., runs_x, tasks]`` over ``y`` ``[..., runs_y, tasks]`` -> ``[...]``: per
    task the fraction of run pairs where X scores higher (ties count one half), averaged over tasks."""
    x = np.asarray(x, dtype=np.float64)[..., :, None, :]          # [..., runs_x, 1, tasks]
    y = np.asarray(y, dtype=np.float64)[..., None, :, :]          # [..., 1, runs_y, tasks]
    wins = (x > y).astype(np.float64) + 0.5 * (x == y)
    return wins.mean(axis=(-3, -2, -1))


def stratified_resample(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` replicates ``[reps, runs, tasks]`` of ``scores`` ``[runs, tasks]``: each task's runs drawn
    with replacement, independently of the other tasks."""
    runs, tasks = scores.shape
    picks = rng.integers(0, runs, size=(reps, runs, tasks))
    return scores[picks, np.arange(tasks)]


def _replicates(statistic: Callable[..., np.ndarray], matrices: list[np.ndarray], reps: int,
                seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, reps, _CHUNK):
        size = min(_CHUNK, reps - start)
        out.append(statistic(*(stratified_resample(m, size, rng) for m in matrices)))
    return np.concatenate(out)


def _percentile_interval(point: float, replicates: np.ndarray, confidence: float) -> Interval:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high))


def _check(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(f"scores should be a non-empty [runs, tasks] matrix. Found shape {scores.shape}.")
    return scores


def bootstrap_interval(scores: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray] = iqm,
                       reps: int = REPS, confidence: float = 0.95, seed: int = 0) -> Interval:
    """``statistic`` (``[..., runs, tasks]`` -> ``[...]``, e.g. :func:`iqm`) of ``scores`` ``[runs, tasks]``
    and its stratified-bootstrap percentile interval; no interval for a single run."""
    scores = _check(scores)
    point = float(statistic(scores))
    if scores.shape[0] < 2:
        return Interval(point, None, None)
    return _percentile_interval(point, _replicates(statistic, [scores], reps, seed), confidence)


def improvement_interval(x: np.ndarray, y: np.ndarray, reps: int = REPS, confidence: float = 0.95,
                         seed: int = 0) -> Interval:
    """``P(X > Y)`` and its interval, ``x`` and ``y`` resampled independently (each stratified by task);
    no interval when both have a single run."""
    x, y = _check(x), _check(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y should have the same tasks. Found {x.shape[1]} and {y.shape[1]} columns.")
    point = float(probability_of_improvement(x, y))
    if x.shape[0] < 2 and y.shape[0] < 2:
        return Interval(point, None, None)
    return _percentile_interval(point, _replicates(probability_of_improvement, [x, y], reps, seed), confidence)
