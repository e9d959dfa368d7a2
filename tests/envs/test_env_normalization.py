"""The mtrl codebase's running reward normalisation, against a plain numpy loop."""

from __future__ import annotations

import numpy as np
import pytest

from envs import RewardNormalizer


def _reference(rewards: np.ndarray, alpha: float, eps: float = 1e-8) -> np.ndarray:
    """garage's NormalizedEnvWrapper._apply_normalize_reward, written out for one task."""
    mean, var, out = 0.0, 1.0, []
    for r in rewards:
        mean = (1 - alpha) * mean + alpha * r
        var = (1 - alpha) * var + alpha * (r - mean) ** 2
        out.append(r / (np.sqrt(var) + eps))
    return np.asarray(out)


def test_matches_the_reference_per_task() -> None:
    rng = np.random.default_rng(0)
    rewards = rng.normal([0.0, 5.0, -3.0], [1.0, 10.0, 0.1], size=(400, 3))
    normalizer = RewardNormalizer(3, alpha=0.01)
    out = np.stack([normalizer(row) for row in rewards])
    for task in range(3):
        np.testing.assert_allclose(out[:, task], _reference(rewards[:, task], 0.01), rtol=1e-12)
    # the estimate tracks the reward scale: late normalised rewards of the wide task have a std near 1
    assert 0.5 < out[-100:, 1].std() < 2.0


def test_state_dict_resumes_exactly() -> None:
    rng = np.random.default_rng(1)
    rewards = rng.uniform(0, 10, size=(50, 2))
    straight = RewardNormalizer(2)
    expected = [straight(row) for row in rewards]
    first = RewardNormalizer(2)
    for row in rewards[:20]:
        first(row)
    resumed = RewardNormalizer(2)
    resumed.load_state_dict(first.state_dict())
    for row, want in zip(rewards[20:], expected[20:]):
        np.testing.assert_array_equal(resumed(row), want)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_tasks"):
        RewardNormalizer(0)
    with pytest.raises(ValueError, match="alpha"):
        RewardNormalizer(2, alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        RewardNormalizer(2)(np.zeros(3))
    with pytest.raises(ValueError, match="tasks"):
        RewardNormalizer(2).load_state_dict(RewardNormalizer(3).state_dict())
