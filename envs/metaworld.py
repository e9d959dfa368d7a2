"""Meta-World (metaworld 3.x, v3 tasks) as single-task gymnasium environments with seeded goals.

Goals: Meta-World pre-samples 50 goals ("tasks" in its API: object and target positions) per environment
class. Here the 50 goals of a task come from ``metaworld.MT1(task_name, seed=s)`` with ``s`` derived from
the run's seed and the task's name, so a task's goals depend only on ``(seed, task_name)``: the same in MT10,
MT50, MT1 and the single-task (STL) baseline, and the same for the training and the evaluation environment.
This uses metaworld's public benchmark classes only; no module-level state of metaworld is changed
(``MT1`` seeds numpy's global generator and restores it). Under a fixed-goal protocol every task uses the
first of its 50 goals.

.. note::
    The goals therefore differ from those of ``gym.make_vec("Meta-World/MT10", seed=s)``, which samples all
    tasks' goals from one stream (a task's goals there depend on the tasks before it).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import metaworld
import metaworld.env_dict as _env_dict
import numpy as np

from envs.normalization import NormalizeRewardWrapper
from envs.protocols import ProtocolConfig

BENCHMARKS: dict[str, list[str]] = {
    "mt10": list(_env_dict.MT10_V3.keys()),
    "mt50": list(_env_dict.MT50_V3.keys()),
    "mt1": list(_env_dict.ALL_V3_ENVIRONMENTS.keys()),
}
"""Task names of each benchmark, in one-hot order (Meta-World's order). For ``mt1``: the valid task names."""

NUM_GOALS = 50
"""Goals Meta-World pre-samples per task (``metaworld._N_GOALS``)."""

OBS_DIM = 39
"""Meta-World's observation size without the one-hot (hand, gripper, two objects, previous frame, goal)."""


def benchmark_tasks(benchmark: str, task: str | Sequence[str] | None = None) -> list[str]:
    """Task names of ``benchmark`` in one-hot order: ``"mt10"``/``"mt50"`` (all tasks, or the subset ``task``
    lists, in the listed order: ``env.tasks=[reach-v3,window-open-v3]`` for an MT2 on a laptop) or ``"mt1"``
    with one ``task``.

    Raises:
        ValueError: unknown benchmark, unknown task name, a missing task for ``mt1``, an empty or repeated
            subset, or a single task name for ``mt10``/``mt50``; the message lists the valid names.
    """
    key = benchmark.lower() if isinstance(benchmark, str) else benchmark
    if key not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark `{benchmark}`. Valid benchmarks: {', '.join(BENCHMARKS)}.")
    valid = BENCHMARKS[key]
    if key != "mt1":
        if task is None:
            return list(valid)
        if isinstance(task, str):
            raise ValueError(f"`task` selects the task of mt1 only; give `{benchmark}` a subset as a list "
                             f"(env.tasks=[{task}]) or use env=mt1 env.task={task}.")
        subset = list(task)
        unknown = [name for name in subset if name not in valid]
        if not subset or unknown or len(set(subset)) < len(subset):
            problem = f"unknown task(s) {unknown}" if unknown else "an empty or repeated task list"
            raise ValueError(f"env.tasks: {problem} for {benchmark}. Valid tasks: {', '.join(valid)}.")
        return subset
    if task is None:
        raise ValueError(f"mt1 needs a task (e.g. env.task=reach-v3). Valid tasks: {', '.join(valid)}.")
    if not isinstance(task, str) or task not in valid:
        raise ValueError(f"Unknown Meta-World task `{task}`. Valid tasks: {', '.join(valid)}.")
    return [task]


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 32-bit seed from ``seed`` and ``keys`` (ints or strings), independent streams for different keys."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Parameter `seed` should be a non-negative integer. Found `seed = {seed!r}`.")
    entropy = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@functools.lru_cache(maxsize=None)
def task_goals(task_name: str, goal_seed: int) -> tuple[metaworld.Task, ...]:
    """The 50 seeded goals of ``task_name`` (metaworld ``Task`` objects, picklable), cached per process."""
    benchmark_tasks("mt1", task_name)
    benchmark = metaworld.MT1(task_name, seed=derive_seed(goal_seed, "goals", task_name))
    goals = tuple(benchmark.train_tasks)
    assert len(goals) == NUM_GOALS and all(goal.env_name == task_name for goal in goals)
    return goals


class MetaWorldTaskEnv(gym.Env):
    """One Meta-World task as a gymnasium environment: float32 observations [39], actions in [-1, 1]^4.

    Each reset sets one of ``goals`` (drawn uniformly from this environment's own generator when there are
    several) and resets the simulation; episodes are truncated after ``max_episode_steps`` steps and never
    terminate (Meta-World has no terminal states, and success does not end an episode: the episode's success is
    ``info["success"]`` at any step). With ``stop_on_success`` (evaluation) an episode is truncated at its first
    success instead, as Meta-World's own evaluation does. ``info`` holds only ``"success"`` (bool).

    Seeding happens at construction (metaworld ignores ``reset(seed=)``); ``reset(seed=s)`` here re-seeds both
    generators as gymnasium specifies.

    .. note::
        The declared observation bounds are infinite: Meta-World's declared bounds are not the real ranges.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        task_name: str,
        goals: Sequence[metaworld.Task],
        max_episode_steps: int,
        seed: int,
        reward_function_version: str = "v2",
        stop_on_success: bool = False,
    ) -> None:
        benchmark_tasks("mt1", task_name)
        if not goals or any(goal.env_name != task_name for goal in goals):
            raise ValueError(f"`goals` should be non-empty Meta-World tasks of `{task_name}`.")
        if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps <= 0:
            raise ValueError(f"Parameter `max_episode_steps` should be a positive integer. Found `{max_episode_steps!r}`.")
        self.task_name = task_name
        self.max_episode_steps = max_episode_steps
        self.stop_on_success = bool(stop_on_success)
        self._goals = tuple(goals)
        self._env = _env_dict.ALL_V3_ENVIRONMENTS[task_name](reward_function_version=reward_function_version)
        # Meta-World raises on a step past its own horizon (500); ours is the protocol's.
        self._env.max_path_length = max_episode_steps
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self._seed(seed)
        self._elapsed_steps = 0
        self.goal_index = -1

    def _seed(self, seed: int) -> None:
        self._env.seed(seed)
        self._goal_rng = np.random.default_rng(seed)
        self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self._seed(seed)
        self.goal_index = 0 if len(self._goals) == 1 else int(self._goal_rng.integers(len(self._goals)))
        self._env.set_task(self._goals[self.goal_index])
        obs, _ = self._env.reset()
        self._elapsed_steps = 0
        return obs.astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, _, _, info = self._env.step(action)
        self._elapsed_steps += 1
        success = bool(info["success"])
        # An evaluation episode stops at its first success: a rule of the evaluation, not a terminal state of
        # the task, hence truncation.
        truncated = self._elapsed_steps >= self.max_episode_steps or (self.stop_on_success and success)
        return obs.astype(np.float32), float(reward), False, truncated, {"success": success}

    @property
    def rng_state(self) -> dict:
        """The generators' states (goal choice and Meta-World's own), for checkpoints."""
        return {"goal_rng": self._goal_rng.bit_generator.state, "env": self._env.np_random.bit_generator.state}

    @rng_state.setter
    def rng_state(self, state: dict) -> None:
        self._goal_rng.bit_generator.state = state["goal_rng"]
        self._env.np_random.bit_generator.state = state["env"]

    def close(self) -> None:
        self._env.close()


def task_env_kwargs(task_name: str, protocol: ProtocolConfig, seed: int, goal_seed: int | None = None) -> dict:
    """Constructor arguments of :class:`MetaWorldTaskEnv` for one task under ``protocol`` (picklable).

    Its goals come from ``goal_seed`` (default ``seed``), its generators from ``seed``; both streams depend on
    the task's name and not on the other tasks of the benchmark.
    """
    goals = task_goals(task_name, seed if goal_seed is None else goal_seed)
    return dict(
        task_name=task_name,
        goals=goals[:1] if protocol.fixed_goal else goals,
        max_episode_steps=protocol.max_episode_steps,
        seed=derive_seed(seed, "env", task_name),
        reward_function_version=protocol.reward_function_version,
    )


def make_task_env(
    task_name: str, protocol: ProtocolConfig, seed: int, goal_seed: int | None = None
) -> MetaWorldTaskEnv:
    """The environment of one task under ``protocol`` (see :func:`task_env_kwargs`)."""
    return MetaWorldTaskEnv(**task_env_kwargs(task_name, protocol, seed, goal_seed))


def make_single_task_env(
    task_name: str, protocol: ProtocolConfig, seed: int, goal_seed: int | None = None
) -> gym.Env:
    """One task as a plain gymnasium environment (no one-hot), rewards normalised if the protocol says so.

    The single-task (STL) baseline trains on this; the task's goals and generators are those it has in the
    multi-task environment of the same seed.
    """
    env: gym.Env = make_task_env(task_name, protocol, seed, goal_seed)
    if protocol.normalize_reward:
        env = NormalizeRewardWrapper(env, alpha=protocol.reward_normalizer_alpha)
    return env
