"""A multi-task Meta-World environment: one sub-environment per task, stepped as one gymnasium vector env.

Transitions and episode ends: the vector environment runs in gymnasium's ``SAME_STEP`` autoreset mode, so a
sub-environment whose episode ends is reset within the same ``step`` call: the step returns the reset
observation to act on next, and the episode's true last observation and last ``info`` come in
``info["final_obs"]`` / ``info["final_info"]``. ``MultiTaskEnv.step`` puts the true last observation into
``StepResult.next_obs`` (what the replay buffer stores) and the reset observation into ``StepResult.obs``
(what the policy acts on), so no transition from a last observation to a reset observation ever exists, and
every vector step is a real transition of every task (``NEXT_STEP`` mode would spend one step per episode
on a reset that ignores the action).

Success: an episode succeeds when ``info["success"]`` is true at any of its steps (Meta-World's and mtrl's
convention); on the last step that flag is read from ``info["final_info"]``, as the top-level ``info`` of that
sub-environment then belongs to the reset. Success does not end an episode: episodes always run the
protocol's full horizon and end by truncation, never by termination (Meta-World's
``AutoTerminateOnSuccessWrapper`` is off in its training environments, too; it is switched on only in its
evaluation to save steps, which gives the same success rate).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import gymnasium as gym
import numpy as np

from envs.metaworld import MetaWorldTaskEnv, benchmark_tasks, derive_seed, task_env_kwargs
from envs.normalization import RewardNormalizer
from envs.protocols import ProtocolConfig

ASYNC_MIN_CPUS = 8
"""``vector_strategy="auto"`` uses worker processes from this many usable CPUs on. Measured on a 2-core machine,
the in-process (sync) vector env was faster for MT10; worker processes pay off once each sub-environment can
have a core of its own."""

EVAL_SEED_OFFSET = 10_000
"""The evaluation environment's generators use ``seed + EVAL_SEED_OFFSET`` (its goals stay those of ``seed``)."""

VECTOR_STRATEGIES = ("auto", "sync", "async")

BACKENDS = ("auto", "envpool", "gymnasium")
"""``env.backend``: ``envpool`` (EnvPool's C++ Meta-World, :mod:`envs.envpool_backend`), ``gymnasium``
(the official Meta-World environments in a gymnasium vector env) or ``auto`` (see :func:`resolve_backend`)."""


@dataclass
class EpisodeRecord:
    """One finished episode of one task."""

    task: int
    """Index of the task (row of the vector environment, position of its one-hot)."""
    success: bool
    """``info["success"]`` was true at some step of the episode."""
    episode_return: float
    """Sum of the raw (never normalised) rewards."""
    length: int


@dataclass
class StepResult:
    """One vector step: row ``i`` is task ``i``."""

    next_obs: np.ndarray
    """[k, obs_dim] float32: the true next observation of each transition (the last one where an episode
    ended). Store this one in the replay buffer."""
    reward: np.ndarray
    """[k] float32, normalised when the protocol says so."""
    terminated: np.ndarray
    """[k] bool: true termination (bootstrapping stops). Time-limit truncation is not termination."""
    truncated: np.ndarray
    """[k] bool: the episode hit the time limit."""
    obs: np.ndarray
    """[k, obs_dim] float32: the observation to act on next (a reset observation where an episode ended)."""
    finished: list[EpisodeRecord]
    """Episodes that ended at this step."""
    raw_reward: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """[k] float32: the environment's reward before any normalisation."""
    success: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """[k] bool: ``info["success"]`` of this transition (read from ``final_info`` on episode ends)."""


def resolve_vector_strategy(vector_strategy: str, num_tasks: int) -> str:
    """``"sync"`` or ``"async"``; ``"auto"`` is async with several tasks and at least ``ASYNC_MIN_CPUS`` CPUs."""
    if vector_strategy not in VECTOR_STRATEGIES:
        raise ValueError(
            f"Unknown vector_strategy `{vector_strategy}`. Valid strategies: {', '.join(VECTOR_STRATEGIES)}."
        )
    if vector_strategy != "auto":
        return vector_strategy
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return "async" if num_tasks > 1 and cpus >= ASYNC_MIN_CPUS else "sync"


def resolve_backend(backend: str, protocol: ProtocolConfig) -> str:
    """``"envpool"`` or ``"gymnasium"``.

    ``"auto"`` is EnvPool where it imports, unless the protocol holds each task to one goal (``mtrl``), which
    EnvPool cannot do (its resets always draw a fresh goal). ``"envpool"`` refuses what EnvPool cannot run:
    a missing install and Meta-World's v1 reward; under a fixed-goal protocol it trains on fresh goals.
    """
    from envs.envpool_backend import envpool_available

    if backend not in BACKENDS:
        raise ValueError(f"Unknown env backend `{backend}`. Valid backends: {', '.join(BACKENDS)}.")
    if backend == "auto":
        usable = envpool_available() and not protocol.fixed_goal and protocol.reward_function_version == "v2"
        return "envpool" if usable else "gymnasium"
    if backend == "envpool":
        if not envpool_available():
            raise ValueError("env.backend=envpool but EnvPool does not import here (pip install envpool==1.2.5, "
                             "Linux x86-64 only); use env.backend=gymnasium or auto.")
        if protocol.reward_function_version != "v2":
            raise ValueError("EnvPool computes Meta-World's v2 reward only; use env.backend=gymnasium with "
                             f"reward_function_version={protocol.reward_function_version}.")
    return backend


class MultiTaskEnv:
    """One sub-environment per task, row ``i`` = task ``i`` = ``task_names[i]``, task one-hot appended.

    Wraps a gymnasium vector environment in ``SAME_STEP`` autoreset mode (see the module docstring for how
    episode ends, final observations and success are handled). Build it with :func:`make_multitask_env`;
    the constructor takes any such vector environment (the tests pass a small fake one).

    Observations are float32 ``[k, obs_dim]`` with ``obs_dim`` = the sub-environment's observation size
    plus ``k`` when ``one_hot``. Rewards are normalised per task when ``protocol.normalize_reward``; the
    normaliser's state is in :meth:`state_dict`.
    """

    def __init__(
        self,
        vector_env: gym.vector.VectorEnv,
        task_names: Sequence[str],
        protocol: ProtocolConfig,
        *,
        one_hot: bool = True,
    ) -> None:
        autoreset_mode = vector_env.metadata.get("autoreset_mode")
        if autoreset_mode != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError(f"MultiTaskEnv needs a vector env in SAME_STEP autoreset mode, got {autoreset_mode}.")
        if vector_env.num_envs != len(task_names):
            raise ValueError(f"{vector_env.num_envs} sub-environments for {len(task_names)} task names.")
        self.vector_env = vector_env
        self.task_names = list(task_names)
        self.num_tasks = len(self.task_names)
        self.protocol = protocol
        self.max_episode_steps = protocol.max_episode_steps
        (raw_obs_dim,) = vector_env.single_observation_space.shape
        self.obs_dim = raw_obs_dim + (self.num_tasks if one_hot else 0)
        (self.action_dim,) = vector_env.single_action_space.shape
        self.action_low = np.asarray(vector_env.single_action_space.low, dtype=np.float32)
        self.action_high = np.asarray(vector_env.single_action_space.high, dtype=np.float32)
        self._one_hot = np.eye(self.num_tasks, dtype=np.float32) if one_hot else None
        self.reward_normalizer = (
            RewardNormalizer(self.num_tasks, alpha=protocol.reward_normalizer_alpha)
            if protocol.normalize_reward
            else None
        )
        self._episode_return = np.zeros(self.num_tasks, dtype=np.float64)
        self._episode_length = np.zeros(self.num_tasks, dtype=np.int64)
        self._episode_success = np.zeros(self.num_tasks, dtype=bool)
        self._needs_reset = True
        self._pending_actions: np.ndarray | None = None
        # Async gymnasium vector envs and EnvPool step between step_async and step_wait; a sync one in step_wait.
        self._steps_in_background = callable(getattr(vector_env, "step_async", None))

    @property
    def backend(self) -> str:
        """``"envpool"`` or ``"gymnasium"``: what steps the simulations."""
        from envs.envpool_backend import EnvPoolVectorEnv

        return "envpool" if isinstance(self.vector_env, EnvPoolVectorEnv) else "gymnasium"

    def _observation(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float32)
        if self._one_hot is None:
            return raw.copy()
        return np.concatenate([raw, self._one_hot], axis=1)

    def reset(self) -> np.ndarray:
        """Starts a new episode in every task (episodes in flight are dropped): obs [k, obs_dim] float32."""
        if self._pending_actions is not None and self._steps_in_background:
            self.vector_env.step_wait()  # drain the step in flight before resetting
        self._pending_actions = None
        obs, _ = self.vector_env.reset()
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        self._episode_success[:] = False
        self._needs_reset = False
        return self._observation(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        """Steps every task once with ``actions`` [k, action_dim] (clipped to the action bounds)."""
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        """Sends ``actions`` to the sub-environments; :meth:`step_wait` collects the result.

        With EnvPool's threads or worker processes (``async``) the environments step while the caller does
        other work (e.g. a gradient update); in one process (``sync``) the step happens in :meth:`step_wait`.
        """
        if self._needs_reset:
            raise RuntimeError("Call reset() before step().")
        if self._pending_actions is not None:
            raise RuntimeError("step_async() called twice without step_wait().")
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_tasks, self.action_dim):
            raise ValueError(f"Expected actions of shape ({self.num_tasks}, {self.action_dim}), got {actions.shape}.")
        actions = np.clip(actions, self.action_low, self.action_high)
        if self._steps_in_background:
            self.vector_env.step_async(actions)
        self._pending_actions = actions

    def step_wait(self) -> StepResult:
        """The :class:`StepResult` of the actions sent by :meth:`step_async`."""
        if self._pending_actions is None:
            raise RuntimeError("step_wait() without step_async().")
        actions, self._pending_actions = self._pending_actions, None
        if self._steps_in_background:
            raw_obs, raw_reward, terminated, truncated, info = self.vector_env.step_wait()
        else:
            raw_obs, raw_reward, terminated, truncated, info = self.vector_env.step(actions)

        obs = self._observation(raw_obs)
        next_obs = obs.copy()
        terminated = np.asarray(terminated, dtype=bool).copy()
        truncated = np.asarray(truncated, dtype=bool).copy()
        raw_reward = np.asarray(raw_reward, dtype=np.float64)
        done = terminated | truncated

        success = np.zeros(self.num_tasks, dtype=bool)
        if "success" in info:
            success |= np.asarray(info["success"], dtype=bool) & np.asarray(info["_success"], dtype=bool)
        if done.any():
            final_obs, final_info = info["final_obs"], info["final_info"]
            for i in np.flatnonzero(done):
                last = np.asarray(final_obs[i], dtype=np.float32)
                next_obs[i] = last if self._one_hot is None else np.concatenate([last, self._one_hot[i]])
                success[i] = bool(final_info["success"][i]) if "success" in final_info else False

        self._episode_return += raw_reward
        self._episode_length += 1
        self._episode_success |= success
        finished = []
        for i in np.flatnonzero(done):
            finished.append(
                EpisodeRecord(
                    task=int(i),
                    success=bool(self._episode_success[i]),
                    episode_return=float(self._episode_return[i]),
                    length=int(self._episode_length[i]),
                )
            )
            self._episode_return[i] = 0.0
            self._episode_length[i] = 0
            self._episode_success[i] = False

        reward = raw_reward if self.reward_normalizer is None else self.reward_normalizer(raw_reward)
        return StepResult(
            next_obs=next_obs,
            reward=reward.astype(np.float32),
            terminated=terminated,
            truncated=truncated,
            obs=obs,
            finished=finished,
            raw_reward=raw_reward.astype(np.float32),
            success=success,
        )

    def state_dict(self) -> dict:
        """The reward normaliser and the sub-environments' generators (episodes in flight are not saved)."""
        if self._pending_actions is not None:
            raise RuntimeError("state_dict() while a step is in flight: call step_wait() first.")
        return {
            "task_names": list(self.task_names),
            "reward_normalizer": None if self.reward_normalizer is None else self.reward_normalizer.state_dict(),
            "rng_state": list(self.vector_env.get_attr("rng_state")),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`; call :meth:`reset` afterwards."""
        if list(state["task_names"]) != self.task_names:
            raise ValueError(f"Environment state is for tasks {state['task_names']}, this env has {self.task_names}.")
        if (state["reward_normalizer"] is None) != (self.reward_normalizer is None):
            raise ValueError("Environment state and this env disagree on reward normalisation (different protocol?).")
        if self.reward_normalizer is not None:
            self.reward_normalizer.load_state_dict(state["reward_normalizer"])
        self.vector_env.set_attr("rng_state", list(state["rng_state"]))
        self._needs_reset = True

    def close(self) -> None:
        self.vector_env.close()

    def __enter__(self) -> MultiTaskEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MultiTaskEnv(tasks={self.num_tasks}, protocol={self.protocol.name!r}, backend={self.backend!r}, "
            f"vector_env={type(self.vector_env).__name__})"
        )


def make_multitask_env(
    benchmark: str,
    protocol: ProtocolConfig,
    seed: int,
    task: str | Sequence[str] | None = None,
    vector_strategy: str = "auto",
    *,
    goal_seed: int | None = None,
    one_hot: bool = True,
    backend: str = "gymnasium",
    stop_on_success: bool = False,
) -> MultiTaskEnv:
    """The environment of ``benchmark`` (``"mt10"``, ``"mt50"`` or a subset ``task`` of their task names, ``"mt1"``
    with one ``task``) under ``protocol``.

    Args:
        seed: seeds every generator of the environments (goal choice per reset, Meta-World's own); the same
            seed gives the same goals, resets and, given the same actions, observations.
        vector_strategy: ``"sync"`` (one process), ``"async"`` (one worker process per task) or ``"auto"``
            (see :func:`resolve_vector_strategy`).
        goal_seed: the seed of the tasks' goals, default ``seed`` (gymnasium backend; EnvPool draws its own).
        one_hot: append the task one-hot to observations.
        backend: ``"gymnasium"``, ``"envpool"`` or ``"auto"`` (see :func:`resolve_backend`); the vector
            strategy applies to gymnasium only (EnvPool steps every task on its own thread).
        stop_on_success: end an episode at its first success (evaluation; gymnasium backend only).

    Raises:
        ValueError: unknown benchmark, task, vector strategy, backend, or a negative seed; before anything
            is built.
    """
    task_names = benchmark_tasks(benchmark, task)
    strategy = resolve_vector_strategy(vector_strategy, len(task_names))
    if resolve_backend(backend, protocol) == "envpool":
        if stop_on_success:
            raise ValueError("stop_on_success is for evaluation, which runs on the gymnasium backend.")
        from envs.envpool_backend import EnvPoolVectorEnv

        seeds = [derive_seed(seed, "env", name) for name in task_names]
        pools = EnvPoolVectorEnv(task_names, protocol.max_episode_steps, seeds)
        return MultiTaskEnv(pools, task_names, protocol, one_hot=one_hot)
    # The goals are built here, once, and shipped to async workers with the constructor arguments.
    env_fns = [partial(MetaWorldTaskEnv, **task_env_kwargs(name, protocol, seed, goal_seed),
                       stop_on_success=stop_on_success) for name in task_names]
    kwargs = dict(autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    if strategy == "async":
        # gymnasium's default start method (fork on Linux): fast, and works from scripts without a
        # `__main__` guard. The workers only run Meta-World (never torch or CUDA), so what fork copies of
        # the parent (e.g. an initialised CUDA context) is never touched.
        vector_env = gym.vector.AsyncVectorEnv(env_fns, **kwargs)
    else:
        vector_env = gym.vector.SyncVectorEnv(env_fns, **kwargs)
    return MultiTaskEnv(vector_env, task_names, protocol, one_hot=one_hot)


def make_eval_env(
    benchmark: str,
    protocol: ProtocolConfig,
    seed: int,
    task: str | Sequence[str] | None = None,
    vector_strategy: str = "auto",
    *,
    one_hot: bool = True,
) -> MultiTaskEnv:
    """The evaluation environment of a run with ``seed``: the official Meta-World environments (whatever the
    training backend, so that success rates mean the same on both), the goals of the gymnasium training
    environment of ``seed``, other generator streams (``seed + EVAL_SEED_OFFSET``), so that under random goals
    evaluation episodes draw their goals independently of training. An episode ends at its first success
    (as in Meta-World's own evaluation): the success rate is the same, the steps after it are saved."""
    return make_multitask_env(
        benchmark,
        protocol,
        seed + EVAL_SEED_OFFSET,
        task,
        vector_strategy,
        goal_seed=seed,
        one_hot=one_hot,
        backend="gymnasium",
        stop_on_success=True,
    )
