"""Parity of the two backends on MT10: Meta-World's scripted policies on EnvPool and on the official envs.

Both backends run through :class:`envs.MultiTaskEnv` with the goal visible (the scripted policies read it;
MT10 hides it), 150-step episodes (the ``mtrl`` horizon; the scripted policies succeed within ~100 steps)
and the same per-task seeds. Goals cannot be the same (EnvPool draws its own, see
``envs/envpool_backend.py``), so the comparison is statistical, over ``EPISODES`` episodes per task:

* success rate per task: the scripted policies succeed almost always on both, so a backend that lost or
  misread ``success`` would differ by ~1 on every task. Allowed per task: three standard errors of a
  difference of two proportions with the pooled rate, plus one episode (``1 / EPISODES``) for the
  discreteness: with 8 episodes that is ~0.5 at a pooled rate of 0.8, 0.125 when both succeed always.
  Over the ten tasks (80 episodes each side) the mean success may differ by at most 0.1.
* per-step reward: the range (Meta-World v3 rewards lie in [0, 10]) and the per-task mean. The episodes
  are independent (fresh goals), so the mean of each episode's mean reward is compared by a two-sample z
  test, the standard error computed from the episodes themselves (floor 0.05): at four standard errors,
  so that the ten tasks together raise a false alarm with probability < 1e-3 (Bonferroni; at three, one
  of ten tasks would fail 2.7 % of the time, and reach-v3 did at this seed: 3.3 SE with 8 episodes,
  0.0 SE with 40). The state of the backends is not shared, so a systematic difference in reward shaping
  (e.g. a reward computed from the wrong frame) shows up as tens of standard errors: measured with 40
  episodes per task, every task's means agree within 1.5 SE and 0.1 reward (peg-insert-side: 0.3, its
  success rate being the noisiest).

Everything is seeded (EnvPool with one thread per pool is deterministic), so the test is deterministic too.
Cost: ~1200 vector steps on each backend (a few seconds on EnvPool; the official envs and building their
goals take most of the time).
"""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import metaworld
import numpy as np
import pytest

import envs
from envs.metaworld import MetaWorldTaskEnv, derive_seed, task_goals

pytestmark = pytest.mark.skipif(not envs.envpool_available(), reason="EnvPool does not import here")

SEED = 0          # the goals of the gymnasium backend are cached per (task, seed): the same seed as other tests
HORIZON = 150
EPISODES = 8
TASKS = envs.benchmark_tasks("mt10")


def visible_goal(goal: metaworld.Task) -> metaworld.Task:
    """The same Meta-World goal, with the goal position in the observation (as the scripted policies need; MT10's
    goals already are)."""
    data = pickle.loads(goal.data)
    data["partially_observable"] = False
    return metaworld.Task(env_name=goal.env_name, data=pickle.dumps(data))


def official_env() -> envs.MultiTaskEnv:
    protocol = envs.make_protocol("metaworld", max_episode_steps=HORIZON)
    fns = [lambda name=name: MetaWorldTaskEnv(name, [visible_goal(g) for g in task_goals(name, SEED)], HORIZON,
                                              derive_seed(SEED, "env", name)) for name in TASKS]
    vector = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return envs.MultiTaskEnv(vector, TASKS, protocol, one_hot=False)


def envpool_env() -> envs.MultiTaskEnv:
    protocol = envs.make_protocol("metaworld", max_episode_steps=HORIZON)
    pools = envs.EnvPoolVectorEnv(TASKS, HORIZON, [derive_seed(SEED, "env", name) for name in TASKS])
    return envs.MultiTaskEnv(pools, TASKS, protocol, one_hot=False)


def scripted_rollouts(env: envs.MultiTaskEnv) -> dict[str, np.ndarray]:
    """``EPISODES`` scripted episodes of every task: success [k, E], per-episode mean reward [k, E],
    reward min / max [k], and the first observation."""
    from metaworld.policies import ENV_POLICY_MAP

    policies = [ENV_POLICY_MAP[name]() for name in TASKS]
    k = len(TASKS)
    success = np.zeros((k, EPISODES), dtype=bool)
    episode_reward = np.zeros((k, EPISODES))
    low, high = np.full(k, np.inf), np.full(k, -np.inf)
    done = np.zeros(k, dtype=np.int64)
    with env:
        obs = first_obs = env.reset()
        for _ in range(EPISODES * HORIZON):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "Constant(s) may be too high": the env clips
                actions = np.stack([policy.get_action(row) for policy, row in zip(policies, obs)])
            result = env.step(actions)
            low, high = np.minimum(low, result.raw_reward), np.maximum(high, result.raw_reward)
            for episode in result.finished:
                task, index = episode.task, done[episode.task]
                success[task, index] = episode.success
                episode_reward[task, index] = episode.episode_return / episode.length
                done[task] += 1
            obs = result.obs
    assert np.all(done == EPISODES)   # every episode runs the full horizon on both backends
    return dict(success=success, episode_reward=episode_reward, low=low, high=high, first_obs=first_obs)


@pytest.fixture(scope="module")
def rollouts() -> dict[str, dict[str, np.ndarray]]:
    return {"gymnasium": scripted_rollouts(official_env()), "envpool": scripted_rollouts(envpool_env())}


def test_spaces_match() -> None:
    protocol = envs.make_protocol("metaworld", max_episode_steps=5)
    official = envs.make_multitask_env("mt10", protocol, SEED, backend="gymnasium", vector_strategy="sync")
    pooled = envs.make_multitask_env("mt10", protocol, SEED, backend="envpool")
    with official, pooled:
        assert pooled.backend == "envpool" and official.backend == "gymnasium"
        for attribute in ("task_names", "obs_dim", "action_dim", "max_episode_steps"):
            assert getattr(pooled, attribute) == getattr(official, attribute), attribute
        np.testing.assert_array_equal(pooled.action_low, official.action_low)
        np.testing.assert_array_equal(pooled.action_high, official.action_high)
        a, b = pooled.vector_env, official.vector_env
        assert a.single_observation_space == b.single_observation_space
        assert a.single_action_space == b.single_action_space
        obs_pooled, obs_official = pooled.reset(), official.reset()
        assert obs_pooled.dtype == obs_official.dtype == np.float32
        # The hand starts at the same place in every task (to ~1e-4: the settling steps of a reset touch the
        # objects, which are drawn per reset with the goal).
        np.testing.assert_allclose(obs_pooled[:, :4], obs_official[:, :4], atol=1e-3)
        # MT10 shows the goal on both backends (metaworld's MT benchmarks); the one-hot sits at the same place.
        assert (np.abs(obs_pooled[:, 36:39]).max(axis=1) > 0).all() and (np.abs(obs_official[:, 36:39]).max(axis=1) > 0).all()
        np.testing.assert_array_equal(obs_pooled[:, 39:], obs_official[:, 39:])


def test_scripted_success_rates_agree(rollouts) -> None:
    official, pooled = rollouts["gymnasium"]["success"], rollouts["envpool"]["success"]
    rate_official, rate_pooled = official.mean(axis=1), pooled.mean(axis=1)
    pooled_rate = (rate_official + rate_pooled) / 2
    allowed = 3 * np.sqrt(pooled_rate * (1 - pooled_rate) * 2 / EPISODES) + 1 / EPISODES
    for name, a, b, tolerance in zip(TASKS, rate_official, rate_pooled, allowed):
        assert abs(a - b) <= tolerance, f"{name}: success {a:.2f} (official) vs {b:.2f} (EnvPool)"
    assert abs(rate_official.mean() - rate_pooled.mean()) <= 0.1
    assert rate_official.mean() >= 0.8   # the scripted policies do solve MT10: the comparison means something


def test_scripted_rewards_agree_in_range_and_mean(rollouts) -> None:
    official, pooled = rollouts["gymnasium"], rollouts["envpool"]
    for side in (official, pooled):
        assert np.all(side["low"] >= 0.0) and np.all(side["high"] <= 10.0)
    # Both reach the top of the reward scale on the tasks their scripted episodes solve.
    np.testing.assert_allclose(official["high"], pooled["high"], atol=1.0)
    a, b = official["episode_reward"], pooled["episode_reward"]
    standard_error = np.sqrt(a.var(axis=1, ddof=1) / EPISODES + b.var(axis=1, ddof=1) / EPISODES)
    allowed = np.maximum(4 * standard_error, 0.05)
    for name, mean_a, mean_b, tolerance in zip(TASKS, a.mean(axis=1), b.mean(axis=1), allowed):
        assert abs(mean_a - mean_b) <= tolerance, (
            f"{name}: mean reward {mean_a:.2f} (official) vs {mean_b:.2f} (EnvPool), allowed {tolerance:.2f}")
