"""Running reward normalisation of the mtrl codebase, one estimate per task, with a state_dict for resuming."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class RewardNormalizer:
    """Divides each task's reward by a running estimate of its standard deviation.

    For every task ``i`` and every new reward ``r`` (in this order)::

        mean_i <- (1 - alpha) * mean_i + alpha * r
        var_i  <- (1 - alpha) * var_i  + alpha * (r - mean_i)**2      # with the updated mean
        r_normalised = r / (sqrt(var_i) + eps)

    starting from ``mean = 0``, ``var = 1``. This is garage's ``NormalizedEnvWrapper(normalize_reward=True)``
    (``reward_alpha = 0.001``), which mtenv wraps around every Meta-World environment for the mtrl codebase.
    The mean is tracked but not subtracted, so the sign of the reward is kept.

    .. note::
        metaworld 3.x's ``NormalizeRewardsExponential`` updates the estimate twice per step; this class
        updates it once, as garage and mtrl do.
    """

    def __init__(self, num_tasks: int, alpha: float = 0.001, eps: float = 1e-8) -> None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks <= 0:
            raise ValueError(f"Parameter `num_tasks` should be a positive integer. Found `num_tasks = {num_tasks!r}`.")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Parameter `alpha` should be in (0, 1]. Found `alpha = {alpha!r}`.")
        if not eps > 0.0:
            raise ValueError(f"Parameter `eps` should be positive. Found `eps = {eps!r}`.")
        self.num_tasks = num_tasks
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.mean = np.zeros(num_tasks, dtype=np.float64)
        self.var = np.ones(num_tasks, dtype=np.float64)

    def __call__(self, reward: np.ndarray) -> np.ndarray:
        """Updates the estimates with ``reward`` [num_tasks] and returns the normalised rewards (float64)."""
        reward = np.asarray(reward, dtype=np.float64)
        if reward.shape != (self.num_tasks,):
            raise ValueError(f"Expected rewards of shape ({self.num_tasks},), got {reward.shape}.")
        self.mean = (1.0 - self.alpha) * self.mean + self.alpha * reward
        self.var = (1.0 - self.alpha) * self.var + self.alpha * np.square(reward - self.mean)
        return reward / (np.sqrt(self.var) + self.eps)

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "alpha": self.alpha, "eps": self.eps}

    def load_state_dict(self, state: dict) -> None:
        mean = np.asarray(state["mean"], dtype=np.float64)
        var = np.asarray(state["var"], dtype=np.float64)
        if mean.shape != (self.num_tasks,) or var.shape != (self.num_tasks,):
            raise ValueError(
                f"Reward normaliser state is for {mean.shape[0] if mean.ndim else '?'} tasks, this one has {self.num_tasks}."
            )
        self.mean, self.var = mean.copy(), var.copy()
        self.alpha, self.eps = float(state["alpha"]), float(state["eps"])

    def __repr__(self) -> str:
        return f"RewardNormalizer(num_tasks={self.num_tasks}, alpha={self.alpha}, eps={self.eps})"


class NormalizeRewardWrapper(gym.Wrapper):
    """A single-task gymnasium environment whose rewards go through a :class:`RewardNormalizer`.

    ``info["raw_reward"]`` keeps the environment's reward.
    """

    def __init__(self, env: gym.Env, alpha: float = 0.001) -> None:
        super().__init__(env)
        self.reward_normalizer = RewardNormalizer(1, alpha=alpha)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        normalised = float(self.reward_normalizer(np.array([reward]))[0])
        return obs, normalised, terminated, truncated, {**info, "raw_reward": float(reward)}
