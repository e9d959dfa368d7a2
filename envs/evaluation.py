"""Evaluation of a (deterministic) multi-task policy: success rate per task, all tasks stepped in parallel."""

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
    """Runs ``episodes_per_task`` complete episodes of every task, from a fresh :meth:`MultiTaskEnv.reset`.

    All tasks step together, at most ``episodes_per_task * env.max_episode_steps`` vector steps (fewer when
    the evaluation environment ends episodes at their first success). Returns the first
    ``episodes_per_task`` episodes of each task, grouped by task: a fixed count, chosen before their
    outcomes are known, so the early end of successful episodes biases nothing. ``cancelled()`` is asked
    before every step; true raises :class:`EvaluationCancelled`.
    """
    if isinstance(episodes_per_task, bool) or not isinstance(episodes_per_task, int) or episodes_per_task <= 0:
        raise ValueError(f"Parameter `episodes_per_task` should be a positive integer. Found `{episodes_per_task!r}`.")
    records: list[list[EpisodeRecord]] = [[] for _ in range(env.num_tasks)]
    obs = env.reset()
    while min(len(task_records) for task_records in records) < episodes_per_task:
        if cancelled is not None and cancelled():
            raise EvaluationCancelled
        result = env.step(np.asarray(policy(obs)))
        for record in result.finished:
            if len(records[record.task]) < episodes_per_task:
                records[record.task].append(record)
        obs = result.obs
    return [record for task_records in records for record in task_records]


def evaluate(policy: Policy, env: MultiTaskEnv, episodes_per_task: int,
             cancelled: Callable[[], bool] | None = None) -> dict[str, float]:
    """Success rate of ``policy`` per task name (episode success = ``info["success"]`` at any step).

    Pass the deterministic policy (e.g. ``lambda obs: agent.act(obs, deterministic=True)``) and a separate
    evaluation environment (:func:`envs.make_eval_env`); the environment is reset first.
    """
    successes = np.zeros(env.num_tasks)
    for record in run_episodes(policy, env, episodes_per_task, cancelled):
        successes[record.task] += record.success
    return {name: float(successes[i] / episodes_per_task) for i, name in enumerate(env.task_names)}
