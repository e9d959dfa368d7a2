"""Episode bookkeeping of MultiTaskEnv on scripted sub-environments (deterministic, no Meta-World).

The sub-environments run inside gymnasium's real SyncVectorEnv in SAME_STEP autoreset mode, so the
``final_obs`` / ``final_info`` layout is the one MultiTaskEnv meets with Meta-World.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from envs import MultiTaskEnv, make_protocol


class ScriptedEnv(gym.Env):
    """Observation ``[episode, t]``; reward ``10 * task + t``; success at the steps in ``success_steps``."""

    metadata: dict = {}

    def __init__(self, task: int, length: int, success_steps: tuple[int, ...], terminate_at: int | None = None):
        self.task, self.length, self.success_steps, self.terminate_at = task, length, success_steps, terminate_at
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.episode, self.t = -1, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.episode, self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        terminated = self.t == self.terminate_at
        truncated = self.t >= self.length and not terminated
        return self._obs(), 10.0 * self.task + self.t, terminated, truncated, {"success": self.t in self.success_steps}


TASKS = ("last-step-success", "early-success", "terminates-no-success")


def make_env(autoreset=gym.vector.AutoresetMode.SAME_STEP, normalize_reward=False) -> MultiTaskEnv:
    fns = [
        lambda: ScriptedEnv(0, length=4, success_steps=(4,)),          # success only on the autoreset step
        lambda: ScriptedEnv(1, length=3, success_steps=(1,)),          # success early, not at the end
        lambda: ScriptedEnv(2, length=5, success_steps=(), terminate_at=2),
    ]
    protocol = make_protocol("metaworld", normalize_reward=normalize_reward)
    return MultiTaskEnv(gym.vector.SyncVectorEnv(fns, autoreset_mode=autoreset), TASKS, protocol)


def run(env: MultiTaskEnv, steps: int):
    obs = env.reset()
    results = []
    for _ in range(steps):
        result = env.step(np.zeros((3, 1), dtype=np.float32))
        results.append((obs, result))
        obs = result.obs
    return results


def test_episode_records() -> None:
    env = make_env()
    records = [record for _, result in run(env, 12) for record in result.finished]
    by_task = {task: [r for r in records if r.task == task] for task in range(3)}
    assert [r.length for r in by_task[0]] == [4, 4, 4]
    assert [r.length for r in by_task[1]] == [3, 3, 3, 3]
    assert [r.length for r in by_task[2]] == [2] * 6
    assert all(r.success for r in by_task[0])          # read from final_info on the autoreset step
    assert all(r.success for r in by_task[1])          # success at any step counts
    assert not any(r.success for r in by_task[2])
    assert by_task[0][0].episode_return == sum(range(1, 5))
    assert by_task[1][0].episode_return == sum(10 + t for t in range(1, 4))
    assert by_task[2][0].episode_return == 20 + 1 + 20 + 2


def test_true_final_observation_and_flags() -> None:
    env = make_env()
    results = run(env, 4)
    # step 2: task 2 terminates (t=2); step 3: task 1 truncates (t=3); step 4: task 0 truncates (t=4)
    obs, result = results[1]
    np.testing.assert_array_equal(result.terminated, [False, False, True])
    np.testing.assert_array_equal(result.truncated, [False, False, False])
    np.testing.assert_array_equal(result.next_obs[2, :2], [0, 2])   # true last observation
    np.testing.assert_array_equal(result.obs[2, :2], [1, 0])        # reset observation
    obs, result = results[3]
    np.testing.assert_array_equal(result.truncated, [True, False, False])
    np.testing.assert_array_equal(result.next_obs[0, :2], [0, 4])
    np.testing.assert_array_equal(result.obs[0, :2], [1, 0])
    assert result.success[0]                                         # the success flag of the last step
    # every stored transition continues its own episode: next_obs[:, 0] (episode) == obs[:, 0], t + 1
    for obs, result in results:
        np.testing.assert_array_equal(result.next_obs[:, 0], obs[:, 0])
        np.testing.assert_array_equal(result.next_obs[:, 1], obs[:, 1] + 1)
        np.testing.assert_array_equal(result.next_obs[:, 2:], np.eye(3))   # one-hot kept on final obs
        assert result.obs.dtype == result.next_obs.dtype == np.float32


def test_rewards_raw_and_normalised() -> None:
    raw = [result for _, result in run(make_env(), 5)]
    normalised = [result for _, result in run(make_env(normalize_reward=True), 5)]
    for plain, scaled in zip(raw, normalised):
        np.testing.assert_array_equal(plain.reward, plain.raw_reward)
        np.testing.assert_array_equal(scaled.raw_reward, plain.raw_reward)
    assert not np.allclose(normalised[-1].reward, normalised[-1].raw_reward)
    # episode returns are always raw
    assert normalised[3].finished[0].episode_return == raw[3].finished[0].episode_return


def test_misuse_raises() -> None:
    env = make_env()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((3, 1)))
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((2, 1)))
    with pytest.raises(RuntimeError, match="without step_async"):
        env.step_wait()
    env.step_async(np.zeros((3, 1)))
    with pytest.raises(RuntimeError, match="twice"):
        env.step_async(np.zeros((3, 1)))
    assert env.step_wait().obs.shape == (3, 5)
    with pytest.raises(ValueError, match="SAME_STEP"):
        make_env(autoreset=gym.vector.AutoresetMode.NEXT_STEP)
