"""Environment worker crashes: restart the environments, drop the episodes in flight, count, give up on a repeat.

With worker processes (gymnasium's ``AsyncVectorEnv``), a sub-environment can die (killed, out of memory,
a segfault in the simulator) or raise. Gymnasium then loses the whole vector step: its ``step_wait``
consumes the other workers' results before it raises, and it has no way to restart one worker. So
:class:`RestartingEnv` rebuilds the vector environment (every worker, from the same constructor, the
reward normaliser carried over), drops the episodes in flight (their partial step is not stored) and
raises :class:`EnvironmentRestarted` with the new first observation; the trainer counts the step and
acts on it (``perf/env_restarts``). A task whose worker crashes ``max_crashes`` times within ``window``
vector steps stops the run with :class:`EnvironmentCrashed`, naming the task.

Only worker processes are guarded; in one process (``sync``) an environment error is an ordinary exception.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["EnvironmentRestarted", "EnvironmentCrashed", "RestartingEnv", "with_restarts", "retry_on_restart"]

log = logging.getLogger("mtrl.train")


class EnvironmentRestarted(RuntimeError):
    """The environments were rebuilt after a worker crash; act on :attr:`obs` (every task starts a new episode)."""

    def __init__(self, obs: np.ndarray, tasks: list[str]) -> None:
        super().__init__(f"environment worker(s) of {', '.join(tasks)} crashed; environments restarted")
        self.obs, self.tasks = obs, tasks


class EnvironmentCrashed(RuntimeError):
    """A task's worker keeps crashing; the run stops."""


def _crashed_workers(env: Any) -> list[int]:
    """Indices of the sub-environments whose worker process is gone (dead, or its pipe closed after an error)."""
    vector_env = env.vector_env
    pipes = getattr(vector_env, "parent_pipes", [])
    processes = getattr(vector_env, "processes", [])
    return [index for index in range(env.num_tasks)
            if (index < len(pipes) and pipes[index] is None)
            or (index < len(processes) and not processes[index].is_alive())]


class RestartingEnv:
    """A :class:`~envs.MultiTaskEnv` with worker processes that survives worker crashes (see the module docstring).

    Args:
        make_env: builds the environment; called again (with the restart count) for each restart.
        max_crashes: crashes of one task's worker within ``window`` vector steps that stop the run.
        window: vector steps.
    """

    def __init__(self, make_env: Callable[[int], Any], max_crashes: int = 3, window: int = 1000) -> None:
        self.make_env, self.max_crashes, self.window = make_env, max_crashes, window
        self.env = make_env(0)
        self.restarts = 0
        self.steps = 0
        self._crashes: dict[int, deque[int]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)   # task_names, obs_dim, state_dict, ...

    def reset(self) -> np.ndarray:
        try:
            return self._guarded(self.env.reset)
        except EnvironmentRestarted as restart:   # nothing in flight to drop: the new environments are reset
            return restart.obs

    def step(self, actions: np.ndarray) -> Any:
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        self._guarded(self.env.step_async, actions)

    def step_wait(self) -> Any:
        self.steps += 1
        return self._guarded(self.env.step_wait)

    def _guarded(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as error:  # noqa: BLE001 - a crashed worker surfaces as EOFError, BrokenPipeError, or its own error
            crashed = _crashed_workers(self.env)
            if not crashed:
                raise
            raise self._restart(crashed, error) from error

    def _restart(self, crashed: list[int], error: Exception) -> EnvironmentRestarted:
        names = [self.env.task_names[index] for index in crashed]
        for index, name in zip(crashed, names):
            recent = self._crashes.setdefault(index, deque())
            recent.append(self.steps)
            while recent and recent[0] <= self.steps - self.window:
                recent.popleft()
            if len(recent) >= self.max_crashes:
                self._close_quietly()
                return EnvironmentCrashed(
                    f"the environment worker of task {name} crashed {len(recent)} times within {self.window} steps "
                    f"(last: {type(error).__name__}: {error}); the run stops. Check that task's environment "
                    f"(memory, simulator errors); resume from the last checkpoint once fixed.")
        log.warning("Environment worker(s) of %s crashed at vector step %d (%s: %s); restarting the environments "
                    "(episodes in flight dropped).", ", ".join(names), self.steps, type(error).__name__, error)
        normalizer = getattr(self.env, "reward_normalizer", None)
        self._close_quietly()
        self.restarts += 1
        self.env = self.make_env(self.restarts)
        if normalizer is not None and self.env.reward_normalizer is not None:
            self.env.reward_normalizer.load_state_dict(normalizer.state_dict())
        return EnvironmentRestarted(self.env.reset(), names)

    def _close_quietly(self) -> None:
        try:
            self.env.vector_env.close(terminate=True)
        except Exception:  # noqa: BLE001 - its workers are partly gone
            log.debug("closing the crashed environment failed", exc_info=True)

    def close(self) -> None:
        self.env.close()


def with_restarts(make_env: Callable[[int], Any], max_crashes: int = 3, window: int = 1000) -> Any:
    """``make_env(0)``, wrapped in :class:`RestartingEnv` when it runs worker processes (else returned as is)."""
    wrapped = RestartingEnv(make_env, max_crashes, window)
    if isinstance(getattr(wrapped.env, "vector_env", None), gym.vector.AsyncVectorEnv):
        return wrapped
    return wrapped.env


def retry_on_restart(evaluate: Callable[..., Any], attempts: int = 3) -> Callable[..., Any]:
    """``evaluate`` (e.g. :func:`envs.evaluate`), started over when its environment restarts mid-way."""

    def evaluate_with_retries(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(attempts):
            try:
                return evaluate(*args, **kwargs)
            except EnvironmentRestarted:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    return evaluate_with_retries
