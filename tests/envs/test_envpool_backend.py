"""The EnvPool backend keeps MultiTaskEnv's guarantees: SAME_STEP episode ends, truncation at the protocol's
horizon, row i = task i, seeding and state_dict, send/recv overlap; and backend selection."""

from __future__ import annotations

import numpy as np
import pytest

import envs

needs_envpool = pytest.mark.skipif(not envs.envpool_available(), reason="EnvPool does not import here")

TASKS = ["reach-v3", "push-v3"]


def make(horizon: int = 3, seed: int = 0, protocol: str = "metaworld") -> envs.MultiTaskEnv:
    p = envs.make_protocol(protocol, max_episode_steps=horizon)
    pools = envs.EnvPoolVectorEnv(TASKS, horizon, [seed * 100 + i for i in range(len(TASKS))])
    return envs.MultiTaskEnv(pools, TASKS, p)


def actions(steps: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(steps, len(TASKS), 4)).astype(np.float32)


@needs_envpool
def test_both_backends_show_the_goal_as_metaworlds_multitask_benchmarks_do() -> None:
    """Meta-World's MT benchmarks put the goal position in the observation (dims 36-38); the evaluation runs
    the official environments, so training on EnvPool with the goal hidden would train on observations that
    evaluation never shows. Goals differ between backends (EnvPool draws its own), but both lie in the
    task's goal space."""
    protocol = envs.make_protocol("metaworld", max_episode_steps=3)
    observations = {}
    for backend in ("envpool", "gymnasium"):
        with envs.make_multitask_env("mt10", protocol, 0, backend=backend, vector_strategy="sync", task=TASKS) as env:
            observations[backend] = env.reset()[:, 36:39]
    with envs.make_eval_env("mt10", protocol, 0, vector_strategy="sync", task=TASKS) as official:
        spaces = [env._env.goal_space for env in official.vector_env.envs]
    for backend, goals in observations.items():
        for goal, space in zip(goals, spaces):
            assert np.abs(goal).max() > 0, f"{backend} hides the goal"
            assert np.all(goal >= space.low - 1e-6) and np.all(goal <= space.high + 1e-6), backend


@needs_envpool
def test_every_step_is_a_transition_and_episodes_end_by_truncation() -> None:
    horizon, episodes = 3, 4
    with make(horizon) as env:
        obs = env.reset()
        assert obs.shape == (2, 39 + 2) and obs.dtype == np.float32
        np.testing.assert_array_equal(obs[:, 39:], np.eye(2))
        records = []
        for t, action in enumerate(actions(horizon * episodes), start=1):
            result = env.step(action)
            ends = t % horizon == 0
            # NEXT_STEP (EnvPool's own autoreset) would spend a step on each reset: episodes of 3 steps every 4.
            assert result.truncated.tolist() == [ends, ends] and not result.terminated.any()
            if ends:
                # the buffer gets the true last observation; the policy acts on the reset one
                assert not np.allclose(result.next_obs[:, :18], result.obs[:, :18])
            else:
                np.testing.assert_array_equal(result.next_obs, result.obs)
            np.testing.assert_array_equal(result.obs[:, 39:], np.eye(2))
            records += result.finished
        assert sorted((r.task, r.length) for r in records) == sorted([(0, horizon)] * episodes +
                                                                     [(1, horizon)] * episodes)
        assert all(np.isfinite(r.episode_return) and r.episode_return > 0 for r in records)


@needs_envpool
def test_same_seed_same_rollout_and_send_receive_equals_step() -> None:
    def rollout(env: envs.MultiTaskEnv, split: bool) -> np.ndarray:
        out = [env.reset()]
        for action in actions(7):
            if split:
                env.step_async(action)
                sum(range(1000))                       # the caller works while the pools step
                result = env.step_wait()
            else:
                result = env.step(action)
            out += [result.next_obs, result.obs, np.repeat(result.reward[:, None], out[0].shape[1], axis=1)]
        return np.concatenate(out)

    with make(seed=0) as a, make(seed=0) as b, make(seed=1) as c:
        np.testing.assert_array_equal(rollout(a, split=False), rollout(b, split=True))
        assert not np.array_equal(rollout(a, split=False)[:2], rollout(c, split=False)[:2])


@needs_envpool
def test_state_dict_restores_the_same_streams_twice() -> None:
    with make() as env, make() as other:
        env.reset()
        for action in actions(5):
            env.step(action)
        state = env.state_dict()
        assert [s["resets"] for s in state["rng_state"]] == [2, 2]   # the first reset, one autoreset

        def after_restore(target: envs.MultiTaskEnv) -> np.ndarray:
            target.load_state_dict(state)
            with pytest.raises(RuntimeError, match="reset"):
                target.step(actions(1)[0])
            return np.concatenate([target.reset()] + [target.step(a).obs for a in actions(4)])

        np.testing.assert_array_equal(after_restore(env), after_restore(other))
        gymnasium_state = {**state, "rng_state": [{"goal_rng": {}, "env": {}}] * 2}
        with pytest.raises(ValueError, match="gymnasium"):
            env.load_state_dict(gymnasium_state)


@needs_envpool
def test_reward_normaliser_and_horizon_of_the_mtrl_protocol() -> None:
    with make(horizon=150, protocol="mtrl") as env:
        env.reset()
        result = None
        for action in actions(150):
            result = env.step(action)
        assert result is not None and result.truncated.all() and [r.length for r in result.finished] == [150, 150]
        assert env.reward_normalizer is not None
        expected = result.raw_reward / (np.sqrt(env.reward_normalizer.var) + env.reward_normalizer.eps)
        np.testing.assert_allclose(result.reward, expected, rtol=1e-5)


def test_backend_selection() -> None:
    metaworld, mtrl = envs.make_protocol("metaworld"), envs.make_protocol("mtrl")
    with pytest.raises(ValueError, match="envpool, gymnasium"):
        envs.resolve_backend("cuda", metaworld)
    assert envs.resolve_backend("gymnasium", metaworld) == "gymnasium"
    # EnvPool cannot hold a task to one goal: auto keeps the official envs under the mtrl protocol.
    assert envs.resolve_backend("auto", mtrl) == "gymnasium"
    assert envs.resolve_backend("auto", metaworld) == ("envpool" if envs.envpool_available() else "gymnasium")
    if envs.envpool_available():
        with pytest.raises(ValueError, match="v2 reward"):
            envs.resolve_backend("envpool", envs.make_protocol("metaworld", reward_function_version="v1"))
    else:
        with pytest.raises(ValueError, match="does not import"):
            envs.resolve_backend("envpool", metaworld)


def test_envpool_task_ids() -> None:
    from envs.envpool_backend import envpool_task_id

    assert envpool_task_id("pick-place-v3") == "MetaWorld/PickPlace-v3"
    assert envpool_task_id("button-press-topdown-v3") == "MetaWorld/ButtonPressTopdown-v3"
    if envs.envpool_available():   # MT1 / MT10 / MT50: every Meta-World v3 task has its pool
        import envpool

        registered = set(envpool.list_all_envs())
        assert [name for name in envs.BENCHMARKS["mt50"] if envpool_task_id(name) not in registered] == []


@needs_envpool
def test_evaluation_env_is_official_whatever_the_training_backend() -> None:
    protocol = envs.make_protocol("mtrl")
    with envs.make_eval_env("mt1", protocol, 0, task="reach-v3", vector_strategy="sync") as env:
        assert env.backend == "gymnasium"
        assert all(sub.stop_on_success for sub in env.vector_env.envs)


def test_evaluation_episodes_end_at_their_first_success() -> None:
    import warnings

    from metaworld.policies import SawyerReachV3Policy

    policy = SawyerReachV3Policy()

    def scripted_reach(obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the fixed goal of the mtrl protocol is hidden in the observation: reach for it from the env
            return np.stack([policy.get_action(np.concatenate([row[:36], goal])) for row in obs])

    protocol = envs.make_protocol("mtrl")
    with envs.make_eval_env("mt1", protocol, 0, task="reach-v3", vector_strategy="sync") as env:
        env.reset()
        goal = env.vector_env.envs[0]._env._target_pos
        records = envs.run_episodes(scripted_reach, env, episodes_per_task=2)
        assert [r.success for r in records] == [True, True]
        assert all(r.length < protocol.max_episode_steps for r in records)   # stopped at the first success
        assert envs.evaluate(scripted_reach, env, 2) == {"reach-v3": 1.0}
        with pytest.raises(envs.EvaluationCancelled):
            envs.evaluate(scripted_reach, env, 2, cancelled=lambda: True)
