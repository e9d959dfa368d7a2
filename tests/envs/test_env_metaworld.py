"""MultiTaskEnv on real Meta-World tasks: shapes, one-hot order, success, final observations, seeding."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

import envs
from envs.metaworld import task_goals

SEED = 0  # one seed everywhere: goals are cached per (task, seed), so each task's goals are built once


def scripted_reach(obs: np.ndarray) -> np.ndarray:
    """Meta-World's scripted reach policy, one row per sub-environment (one-hot ignored)."""
    from metaworld.policies import SawyerReachV3Policy

    policy = SawyerReachV3Policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.stack([policy.get_action(row[:39]) for row in obs]).astype(np.float32)


def zeros(obs: np.ndarray) -> np.ndarray:
    return np.zeros((obs.shape[0], 4), dtype=np.float32)


@pytest.fixture(scope="module")
def mt10():
    env = envs.make_multitask_env("mt10", envs.make_protocol("metaworld"), seed=SEED, vector_strategy="sync")
    env.initial_state = env.state_dict()
    yield env
    env.close()


@pytest.fixture(scope="module")
def reach_mtrl():
    env = envs.make_multitask_env("mt1", envs.make_protocol("mtrl"), seed=SEED, task="reach-v3", vector_strategy="sync")
    yield env
    env.close()


def test_mt10_shapes_and_one_hot_order(mt10) -> None:
    assert mt10.task_names == envs.benchmark_tasks("mt10")
    assert (mt10.num_tasks, mt10.obs_dim, mt10.action_dim, mt10.max_episode_steps) == (10, 49, 4, 500)
    np.testing.assert_array_equal(mt10.action_low, -np.ones(4))
    np.testing.assert_array_equal(mt10.action_high, np.ones(4))
    obs = mt10.reset()
    assert obs.shape == (10, 49) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[:, 39:], np.eye(10))
    result = mt10.step(np.random.default_rng(0).uniform(-1, 1, (10, 4)))
    for array in (result.obs, result.next_obs):
        assert array.shape == (10, 49) and array.dtype == np.float32
        np.testing.assert_array_equal(array[:, 39:], np.eye(10))
    assert result.reward.shape == (10,) and result.reward.dtype == np.float32
    assert result.terminated.dtype == result.truncated.dtype == bool and not result.finished


def test_success_is_recorded_on_the_autoreset_step(reach_mtrl) -> None:
    """The scripted policy reaches the goal and stays: the flag of the last step comes from final_info."""
    obs = reach_mtrl.reset()
    for step in range(reach_mtrl.max_episode_steps):
        result = reach_mtrl.step(scripted_reach(obs))
        obs = result.obs
        if step < reach_mtrl.max_episode_steps - 1:
            assert not result.finished
    assert result.truncated[0] and not result.terminated[0]
    assert result.success[0]
    [record] = result.finished
    assert record.success and record.length == 150 and record.task == 0


def test_no_success_without_reaching(reach_mtrl) -> None:
    [record] = envs.run_episodes(zeros, reach_mtrl, 1)
    assert not record.success and record.length == 150


def test_true_final_observation_on_truncation(reach_mtrl) -> None:
    """next_obs on the truncation step is the 150th observation of the episode (checked against a plain
    single environment stepped with the same actions); obs is the next episode's reset observation."""
    single = envs.make_task_env("reach-v3", envs.make_protocol("mtrl"), seed=SEED)
    single_obs, _ = single.reset()
    obs = reach_mtrl.reset()
    np.testing.assert_array_equal(obs[0, :39], single_obs)
    first_obs = obs.copy()
    rng = np.random.default_rng(3)
    for _ in range(150):
        action = rng.uniform(-1, 1, (1, 4)).astype(np.float32)
        result = reach_mtrl.step(action)
        single_obs, _, _, truncated, _ = single.step(action[0])
        np.testing.assert_array_equal(result.next_obs[0, :39], single_obs)
    assert truncated and result.truncated[0]
    assert np.abs(result.next_obs - result.obs).max() > 1e-3
    np.testing.assert_array_equal(result.obs, first_obs)  # fixed goal: every reset is the same state


def test_mtrl_protocol_fixed_goal_and_150_steps() -> None:
    protocol = envs.make_protocol("mtrl")
    with envs.make_multitask_env("mt10", protocol, seed=SEED, vector_strategy="sync") as env:
        first = env.reset()
        lengths = []
        for _ in range(2 * 150):
            result = env.step(np.random.default_rng(0).uniform(-1, 1, (10, 4)))
            lengths += [record.length for record in result.finished]
            if result.finished:
                np.testing.assert_array_equal(result.obs, first)   # same goal (and state) every reset
        assert lengths == [150] * 20
    with envs.make_eval_env("mt10", protocol, seed=SEED, vector_strategy="sync") as eval_env:
        np.testing.assert_array_equal(eval_env.reset(), first)     # evaluation uses the training goals


def test_random_goals_change_between_resets() -> None:
    protocol = envs.make_protocol("metaworld", max_episode_steps=2)
    with envs.make_multitask_env("mt1", protocol, seed=SEED, task="reach-v3", vector_strategy="sync") as env:
        goals = [env.reset()[0, 36:39]]
        for _ in range(10):
            goals.append(env.step(np.zeros((1, 4))).obs[0, 36:39])
    assert len({tuple(goal) for goal in goals}) > 3


def _rollout(env: envs.MultiTaskEnv, steps: int, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = [env.reset()]
    for _ in range(steps):
        result = env.step(rng.uniform(-1, 1, (env.num_tasks, env.action_dim)))
        out += [result.next_obs, result.obs]
    return np.stack(out)


def test_same_seed_same_goals_resets_and_observations() -> None:
    protocol = envs.make_protocol("metaworld", max_episode_steps=3)
    make = lambda seed: envs.make_multitask_env("mt1", protocol, seed=seed, task="push-v3", vector_strategy="sync")
    with make(SEED) as a, make(SEED) as b, make(SEED + 1) as c:
        first, second, other = _rollout(a, 12), _rollout(b, 12), _rollout(c, 12)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)
    # the goals themselves, rebuilt without the cache
    fresh = [pickle.loads(goal.data)["rand_vec"] for goal in task_goals.__wrapped__("push-v3", SEED)]
    cached = [pickle.loads(goal.data)["rand_vec"] for goal in task_goals("push-v3", SEED)]
    np.testing.assert_array_equal(fresh, cached)


def test_mt10_same_seed_same_observations_and_row_i_is_task_i(mt10) -> None:
    protocol = envs.make_protocol("metaworld")
    mt10.load_state_dict(mt10.initial_state)  # the fixture as it was built (other tests stepped it)
    with envs.make_multitask_env("mt10", protocol, seed=SEED, vector_strategy="sync") as twin:
        first = _rollout(twin, 5)
        np.testing.assert_array_equal(first, _rollout(mt10, 5))
    # row i is task_names[i]: the same reset as that task's own environment with the same seed
    for i, name in enumerate(envs.benchmark_tasks("mt10")):
        single = envs.make_task_env(name, protocol, seed=SEED)
        np.testing.assert_array_equal(first[0, i, :39], single.reset()[0])
        single.close()


def test_async_matches_sync_and_state_dict_round_trip() -> None:
    protocol = envs.make_protocol("mtrl", fixed_goal=False, max_episode_steps=2)
    make = lambda strategy: envs.make_multitask_env("mt1", protocol, seed=SEED, task="reach-v3", vector_strategy=strategy)
    with make("sync") as sync_env, make("async") as async_env:
        assert type(async_env.vector_env).__name__ == "AsyncVectorEnv"
        np.testing.assert_array_equal(_rollout(sync_env, 6), _rollout(async_env, 6))
        state = sync_env.state_dict()
        expected = _rollout(sync_env, 6)
        async_env.load_state_dict(state)   # rngs of another instance, through the worker processes
        np.testing.assert_array_equal(_rollout(async_env, 6), expected)
    assert state["reward_normalizer"] is not None


def test_evaluate(reach_mtrl) -> None:
    assert envs.evaluate(scripted_reach, reach_mtrl, 2) == {"reach-v3": 1.0}
    assert envs.evaluate(zeros, reach_mtrl, 1) == {"reach-v3": 0.0}
    assert len(envs.run_episodes(zeros, reach_mtrl, 2)) == 2
    with pytest.raises(ValueError, match="episodes_per_task"):
        envs.evaluate(zeros, reach_mtrl, 0)


def test_single_task_env_for_sb3() -> None:
    env = envs.make_single_task_env("reach-v3", envs.make_protocol("mtrl"), seed=SEED)
    obs, _ = env.reset()
    assert obs.shape == (39,) and obs.dtype == np.float32
    _, reward, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
    assert isinstance(reward, float) and "raw_reward" in info and not terminated and not truncated
    env.close()
