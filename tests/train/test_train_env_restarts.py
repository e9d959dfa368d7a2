"""Environment worker crashes (async workers): the environments restart, the episode in flight is dropped, the
restart is counted, and a worker that keeps dying stops the run naming its task."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.restarts import EnvironmentCrashed, EnvironmentRestarted, RestartingEnv, with_restarts
from mtrl.experiment import run
from mtrl.experiment.checkpoint import load_checkpoint


def _kill_worker(env: RestartingEnv, index: int = 0) -> None:
    process = env.vector_env.processes[index]
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=10)


def test_killed_worker_is_restarted_and_a_repeat_offender_stops_the_run() -> None:
    protocol = envs.make_protocol("metaworld")
    built = []

    def make_env(restart: int) -> envs.MultiTaskEnv:
        built.append(restart)
        return envs.make_multitask_env("mt1", protocol, seed=restart, task="reach-v3", vector_strategy="async")

    env = with_restarts(make_env, max_crashes=3, window=50)
    assert isinstance(env, RestartingEnv)
    try:
        env.reset()
        action = np.zeros((1, env.action_dim), dtype=np.float32)
        for _ in range(3):
            env.step(action)
        normalizer = None if env.reward_normalizer is None else env.reward_normalizer.state_dict()
        _kill_worker(env)
        with pytest.raises(EnvironmentRestarted) as restarted:
            env.step(action)
        assert restarted.value.tasks == ["reach-v3"] and restarted.value.obs.shape == (1, env.obs_dim)
        assert env.restarts == 1 and built == [0, 1]
        if normalizer is not None:   # the reward normaliser's statistics carry over
            assert str(env.reward_normalizer.state_dict()) == str(normalizer)
        result = env.step(action)   # training goes on with the new worker
        assert result.obs.shape == (1, env.obs_dim) and np.isfinite(result.reward).all()

        _kill_worker(env)
        with pytest.raises(EnvironmentRestarted):
            env.step(action)
        _kill_worker(env)
        with pytest.raises(EnvironmentCrashed, match="worker of task reach-v3 crashed 3 times within 50 steps"):
            env.step(action)
    finally:
        if not env.env.vector_env.closed:
            env.close()


class _RaisesAt(gym.Env):
    """A tiny environment that raises at its ``fail_at``-th step (never when ``fail_at`` is 0)."""

    metadata: dict = {}

    def __init__(self, fail_at: int) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        self.fail_at, self.steps = fail_at, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError("simulator exploded")
        return np.zeros(3, dtype=np.float32), 1.0, False, False, {"success": False}


def test_worker_that_raises_is_restarted_naming_its_task() -> None:
    protocol = envs.make_protocol("metaworld")

    def make_env(restart: int) -> envs.MultiTaskEnv:
        fail_at = 2 if restart == 0 else 0   # task b's worker raises once
        vector_env = gym.vector.AsyncVectorEnv([lambda: _RaisesAt(0), lambda: _RaisesAt(fail_at)],
                                               autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        return envs.MultiTaskEnv(vector_env, ["a", "b"], protocol)

    env = with_restarts(make_env)
    try:
        env.reset()
        action = np.zeros((2, 2), dtype=np.float32)
        env.step(action)
        with pytest.raises(EnvironmentRestarted) as restarted:
            env.step(action)
        assert restarted.value.tasks == ["b"] and env.restarts == 1
        assert env.step(action).reward.shape == (2,)
    finally:
        env.close()


@pytest.mark.slow
def test_training_survives_a_killed_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config,
                                           tensorboard_scalars) -> None:
    original, calls = envs.MultiTaskEnv.step_async, {"n": 0}

    def step_async(self, actions):
        calls["n"] += 1
        if calls["n"] == 3 and isinstance(self.vector_env, gym.vector.AsyncVectorEnv):   # the 3rd training step
            os.kill(self.vector_env.processes[0].pid, signal.SIGKILL)
            time.sleep(0.2)
        return original(self, actions)

    monkeypatch.setattr(envs.MultiTaskEnv, "step_async", step_async)
    # Worker processes (gymnasium async, not EnvPool); evaluations step their own environments, never through this.
    summary = run(config("env=mt1", "agent.batch_size=8", "agg=ls", "vector_strategy=async", "env.backend=gymnasium"),
                  run_dir=tmp_path)
    assert summary["finished"] and summary["steps"] == 12 and summary["env_restarts"] == 1
    assert [record["step"] for record in summary["evaluations"]] == [6, 12]
    assert json.loads((tmp_path / "summary.json").read_text())["env_restarts"] == 1
    # The crashed training step stored nothing: 11 transitions for 12 steps.
    assert load_checkpoint(tmp_path / "checkpoint.pt")["buffer_chunks"]["added"] == 11
    assert tensorboard_scalars(tmp_path)["perf/env_restarts"][-1] == (12, 1.0)
