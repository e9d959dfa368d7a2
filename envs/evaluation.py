"""Evaluation of a (deterministic) multi-task policy: success rate per task, all tasks stepped together.

Each task's episodes run one after another on that task's own environment, and every task that still
needs an episode steps at each vector step, with one policy call for all of them. A task whose
``episodes_per_task`` episodes have ended is stepped no further, and no episode is started beyond those:
the work is the sum of the episodes' lengths, whatever the other tasks do. Episode ``j`` of a task starts
from the ``j``-th reset of its environment since :func:`run_episodes` began, so the episodes (their goals)
are those a single environment of that task would run in sequence.

Why not one environment per episode, all ``k × n`` stepped as one batch: a Meta-World environment costs
about as much to build and hold as the whole evaluation's policy calls (measured in the README), and the
simulation, not the policy, is the cost of a step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from envs.multitask import EpisodeRecord, MultiTaskEnv

Policy = Callable[[np.ndarray], np.ndarray]
"""Maps observations [k, obs_dim] to actions [k, action_dim]; row ``i`` is task ``i``."""


class EvaluationCancelled(Exception):
    """Raised by :func:`run_episodes` when its ``cancelled`` callback says so (the run is stopping)."""


def run_episodes(policy: Policy, env: MultiTaskEnv, episodes_per_task: int,
                 cancelled: Callable[[], bool] | None = None) -> list[EpisodeRecord]:
    """Runs ``episodes_per_task`` complete episodes of every task, each task's environment freshly reset.

    Returns them grouped by task, in the order they ran: a fixed count per task, chosen before any outcome is
    known, so the early end of successful episodes (the evaluation environment ends an episode at its first
    success) biases nothing. ``cancelled()`` is asked before every step; true raises :class:`EvaluationCancelled`.
    The policy sees all ``k`` rows at every step; the rows of tasks that are done repeat their last
    observation and their actions are not used.

    ``env`` must step its tasks in this process (``vector_strategy="sync"``): each task's environment is
    stepped on its own. It is left mid-episode: :meth:`MultiTaskEnv.reset` it before stepping it again.
    """
    if isinstance(episodes_per_task, bool) or not isinstance(episodes_per_task, int) or episodes_per_task <= 0:
        raise ValueError(f"Parameter `episodes_per_task` should be a positive integer. Found `{episodes_per_task!r}`.")
    task_envs = getattr(env.vector_env, "envs", None)
    if task_envs is None:
        raise ValueError("run_episodes steps each task's environment on its own: build the environment with "
                         "vector_strategy='sync'.")
    k = env.num_tasks
    one_hot = np.eye(k, dtype=np.float32) if env.obs_dim > task_envs[0].observation_space.shape[0] else None

    def observation(task: int, raw: np.ndarray) -> np.ndarray:
        return raw if one_hot is None else np.concatenate([raw, one_hot[task]])

    obs = env.reset()   # [k, obs_dim]: the first reset of every task's environment
    records: list[list[EpisodeRecord]] = [[] for _ in range(k)]
    returns, lengths, successes = np.zeros(k), np.zeros(k, dtype=np.int64), np.zeros(k, dtype=bool)
    running = list(range(k))   # tasks that still need an episode
    while running:
        if cancelled is not None and cancelled():
            raise EvaluationCancelled
        actions = np.clip(np.asarray(policy(obs), dtype=np.float32), env.action_low, env.action_high)
        for i in list(running):
            raw, reward, terminated, truncated, info = task_envs[i].step(actions[i])
            returns[i] += reward
            lengths[i] += 1
            successes[i] |= bool(info.get("success", False))
            if terminated or truncated:
                records[i].append(EpisodeRecord(task=i, success=bool(successes[i]), episode_return=float(returns[i]),
                                                length=int(lengths[i])))
                returns[i], lengths[i], successes[i] = 0.0, 0, False
                if len(records[i]) == episodes_per_task:
                    running.remove(i)
                    continue
                raw, _ = task_envs[i].reset()
            obs[i] = observation(i, raw)
    return [record for task_records in records for record in task_records]


def evaluate(policy: Policy, env: MultiTaskEnv, episodes_per_task: int,
             cancelled: Callable[[], bool] | None = None) -> dict[str, float]:
    """Success rate of ``policy`` per task name (episode success = ``info["success"]`` at any step).

    Pass the deterministic policy (e.g. ``lambda obs: agent.act(obs, deterministic=True)``) and a separate
    evaluation environment (:func:`envs.make_eval_env` with ``vector_strategy="sync"``).
    """
    successes = np.zeros(env.num_tasks)
    for record in run_episodes(policy, env, episodes_per_task, cancelled):
        successes[record.task] += record.success
    return {name: float(successes[i] / episodes_per_task) for i, name in enumerate(env.task_names)}
