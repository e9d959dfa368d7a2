"""DWA: softmax of loss ratios between two windows of steps, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _references_a import dwa_by_hand

import mtrl.aggregation as agg
from mtrl.aggregation import DWA, TaskStats


def run(method: DWA, sequence: np.ndarray) -> list[np.ndarray]:
    return [method(None, TaskStats(torch.from_numpy(row))).numpy() for row in sequence]


def test_flags() -> None:
    assert DWA.needs_jacobian is False and DWA.loss_weighting is True


def test_equal_weights_until_two_windows_then_the_ratio_formula() -> None:
    window, k = 3, 4
    rng = np.random.default_rng(0)
    sequence = rng.uniform(0.5, 2.0, size=(12, k))
    weights = run(DWA(window=window), sequence)
    for t in range(2 * window - 1):
        np.testing.assert_array_equal(weights[t], np.full(k, 1 / k))
    for t in range(2 * window - 1, len(sequence)):  # call t sees rows t-2W+1 .. t
        newer = sequence[t - window + 1:t + 1].mean(axis=0)
        older = sequence[t - 2 * window + 1:t - window + 1].mean(axis=0)
        np.testing.assert_allclose(weights[t], dwa_by_hand(newer, older, 2.0), rtol=1e-12)


def test_two_disjoint_windows_give_mtan_epoch_weights_over_k() -> None:
    """At call 2W the windows are two 'epochs'; the paper's weights K·softmax(r/T) are ours × K."""
    k, window, temperature = 3, 5, 2.0
    epoch1 = np.array([2.0, 1.0, 4.0])
    epoch2 = np.array([1.0, 0.9, 1.0])  # task 1 barely improved
    sequence = np.vstack([np.tile(epoch1, (window, 1)), np.tile(epoch2, (window, 1))])
    weights = run(DWA(temperature=temperature, window=window), sequence)[-1]
    ratio = epoch2 / epoch1
    paper = k * np.exp(ratio / temperature) / np.exp(ratio / temperature).sum()
    np.testing.assert_allclose(weights * k, paper, rtol=1e-12)
    assert weights.argmax() == 1  # the slowest-improving task gets the most weight
    assert abs(weights.sum() - 1) <= 1e-12


def test_temperature_controls_the_spread() -> None:
    sequence = np.vstack([np.tile([1.0, 1.0], (2, 1)), np.tile([0.2, 1.0], (2, 1))])
    sharp = run(DWA(temperature=0.1, window=2), sequence)[-1]
    soft = run(DWA(temperature=100.0, window=2), sequence)[-1]
    assert np.ptp(sharp) > 0.9 and np.ptp(soft) < 0.01


def test_non_positive_losses_take_ratios_above_a_lowered_floor() -> None:
    """Task 1's losses 0 and −1 lower its floor to −1 (0 − (0 + 1)), then to −3 (−1 − (1 + 1)); the
    ratio is taken above the final floor, no fallback. Task 0 (positive) keeps floor 0: the paper's ratio."""
    sequence = np.array([[1.0, 0.0], [1.0, -1.0], [0.5, 2.0], [0.5, 3.0]])
    method = DWA(window=2)
    weights = run(method, sequence)[-1]
    assert method.fallbacks == 0
    floor = np.array([0.0, -3.0])
    np.testing.assert_allclose(weights, dwa_by_hand(np.array([0.5, 2.5]) - floor, np.array([1.0, -0.5]) - floor, 2.0))


def test_negative_losses_weight_the_stagnating_task() -> None:
    """SAC-actor-like losses, all negative: task 0 keeps falling, task 1 stagnates around −20.
    Every step is defined (no fallback) and the stagnating task gets the larger weight, as DWA
    gives a task whose positive loss falls more slowly."""
    rng = np.random.default_rng(2)
    steps = np.arange(200)
    sequence = np.stack([-10.0 - 0.5 * steps, -20.0 + 0.1 * rng.standard_normal(200)], axis=1)
    method = DWA(window=10)
    weights = run(method, sequence)
    assert method.fallbacks == 0
    assert all(np.isfinite(w).all() and abs(w.sum() - 1) <= 1e-12 for w in weights)
    assert all(w[1] > w[0] for w in weights[20:])


def test_state_round_trip_mid_window() -> None:
    rng = np.random.default_rng(1)
    sequence = rng.uniform(0.5, 2.0, size=(11, 3))
    method = DWA(window=2)
    run(method, sequence[:5])
    saved = method.state_dict()
    rest = run(method, sequence[5:])
    fresh = DWA(window=2)
    fresh.load_state_dict(saved)
    for a, b in zip(rest, run(fresh, sequence[5:])):
        np.testing.assert_array_equal(a, b)


def test_a_different_number_of_tasks_is_an_error() -> None:
    method = DWA()
    method(None, TaskStats(torch.ones(3)))
    with pytest.raises(ValueError, match="3 tasks.*2 tasks"):
        method(None, TaskStats(torch.ones(2)))


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0}, "temperature = 0"),
    ({"window": 0}, "window = 0"),
    ({"window": 2.5}, "window = 2.5"),
])
def test_bad_options_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agg.make("dwa", **kwargs)
