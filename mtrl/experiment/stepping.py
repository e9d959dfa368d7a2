"""One vector step of training: act, send, update, receive, store (``step`` counts vector steps done so far)::

    act      action = uniform random (step < warmup_steps) or π(obs), sampled    (host <- device)
    send     env.step_async(action)                                             (EnvPool threads / workers start)
    update   agent.update(buffer, Δm): samples batch_size / k rows per task      (while the environments step)
    receive  result = env.step_wait()                                           (sync gymnasium steps here)
    store    buffer.add(obs, action, reward, next_obs, terminated)              (host -> device)

The environments step while the update runs: EnvPool's C++ threads (``env.backend=envpool``) or
gymnasium's worker processes (``vector_strategy=async``) use the other cores; a sync gymnasium vector
env steps in ``step_wait``. The update samples the buffer before this step's transition is stored,
exactly as when it ran before the step, so the order of random draws (and the result) is the same on
every backend. On a GPU the update's kernels are queued, and its outputs stay on the device, summed in
an :class:`~mtrl.experiment.logger.UpdateAccumulator` until a log step.

Steps before ``learn_from`` are the warm-up: no update (the replay buffer fills). That is the run's first
``warmup_steps`` steps (uniform random actions), and after a resume without a saved buffer another
``warmup_steps`` steps of the policy's actions that refill it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.restarts import EnvironmentRestarted
from mtrl.experiment.divergence import DivergenceGuard
from mtrl.experiment.logger import EpisodeWindow, UpdateAccumulator
from mtrl.experiment.tracking import PerformanceTracker

__all__ = ["StepLoop"]


class StepLoop:
    """The training steps of a run (see the module docstring); :meth:`iteration` takes one.

    Args:
        env, agent, buffer: the run's training environment, :class:`~agents.MultiTaskSAC` and replay buffer.
        guard: turns an aggregator's refusal of non-finite inputs into a skip or a stop.
        performance: Δm for the updates; told of every finished training episode.
        updates, episodes: where the update outputs and the finished episodes of a logging window go.
        warmup_steps: steps of random actions (and no update) at the start of the run.
        on_nonfinite: ``stop`` or ``skip`` (see :mod:`mtrl.experiment.divergence`).
        warmup_seed: the generator of the random actions.
    """

    def __init__(self, env: Any, agent: Any, buffer: Any, guard: DivergenceGuard, performance: PerformanceTracker,
                 updates: UpdateAccumulator, episodes: EpisodeWindow, warmup_steps: int, on_nonfinite: str,
                 warmup_seed: int) -> None:
        self.env, self.agent, self.buffer, self.guard, self.performance = env, agent, buffer, guard, performance
        self.updates, self.episodes = updates, episodes
        self.warmup_steps, self.on_nonfinite = warmup_steps, on_nonfinite
        self.step = 0
        """Vector steps done."""
        self.learn_from = warmup_steps
        """The first step that updates (the warm-up ends there)."""
        self.warmup_rng = np.random.default_rng(warmup_seed)
        k = env.num_tasks
        self.episodes_done = np.zeros(k, dtype=np.int64)
        """Training episodes finished per task."""
        self.action_low = np.broadcast_to(np.asarray(env.action_low, dtype=np.float32), (k, env.action_dim))
        self.action_high = np.broadcast_to(np.asarray(env.action_high, dtype=np.float32), (k, env.action_dim))

    @property
    def updating(self) -> bool:
        """The next step holds an update (the warm-up is over)."""
        return self.step >= self.learn_from

    def iteration(self, obs: np.ndarray) -> np.ndarray:
        """One vector step from ``obs`` [k, obs_dim]; returns the observation to act on next.

        A crashed environment worker (:class:`~envs.restarts.EnvironmentRestarted`) drops this step's
        transitions; the step still counts.
        """
        action = self.act(obs)
        try:
            self.env.step_async(action)    # the environments step (EnvPool threads, async workers) ...
            self.update()                  # ... while the update runs
            result = self.env.step_wait()
        except EnvironmentRestarted as restart:
            self.step += 1
            return restart.obs
        self.store(obs, action, result)
        return result.obs

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.step < self.warmup_steps:
            return self.warmup_rng.uniform(self.action_low, self.action_high).astype(np.float32)
        return self.agent.act(obs)

    def update(self) -> None:
        """``agent.update`` (sampling inside it) once the warm-up is over; non-finite inputs an aggregator
        refuses become a skip (``on_nonfinite=skip``) or a stop."""
        if self.step < self.learn_from:
            return
        try:
            outputs = self.agent.update(self.buffer, self.performance.current())
        except ValueError as error:
            diverged = self.guard.from_update_error(self.step + 1, error)
            if diverged is None:
                raise
            if self.on_nonfinite == "stop":
                raise diverged from error
            self.guard.skipped += 1   # the rest of this update is dropped; the next one zeroes the gradients
            return
        self.updates.add(outputs)

    def store(self, obs: np.ndarray, action: np.ndarray, result: Any) -> None:
        self.buffer.add(obs, action, result.reward, result.next_obs, result.terminated)
        for episode in result.finished:
            self.episodes_done[episode.task] += 1
            self.episodes.add(episode.task, episode.success, episode.episode_return)
            self.performance.on_episode(episode.task, episode.success)
        self.step += 1

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "learn_from": self.learn_from, "episodes_done": self.episodes_done.tolist(),
                "warmup_rng": self.warmup_rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any], buffer_restored: bool) -> None:
        """Restore :meth:`state_dict`; without the saved replay buffer the warm-up starts again (policy actions
        once past the initial warm-up), to refill it."""
        self.step = int(state["step"])
        self.episodes_done = np.asarray(state["episodes_done"], dtype=np.int64)
        self.warmup_rng.bit_generator.state = state["warmup_rng"]
        self.learn_from = (int(state["learn_from"]) if buffer_restored
                           else max(self.warmup_steps, self.step + self.warmup_steps))
