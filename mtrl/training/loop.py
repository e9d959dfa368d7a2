"""The training loop: multi-task SAC on a vector of Meta-World tasks, one update per vector step.

One iteration (``step`` counts vector steps done so far)::

    act      action = uniform random (step < warmup_steps) or π(obs), sampled    (host <- device)
    send     envs.step_async(action)                                            (EnvPool threads / workers start)
    update   batch = buffer.sample(128 per task); agent.update(batch, Δm)        (while the environments step)
    receive  result = envs.step_wait()                                          (sync gymnasium steps here)
    store    buffer.add(obs, action, reward, next_obs, terminated)              (host -> device)

The environments step while the update runs: EnvPool's C++ threads (``env.backend=envpool``) or
gymnasium's worker processes (``vector_strategy=async``) use the other cores; a sync gymnasium vector
env steps in ``step_wait``, as before. The update samples the buffer before this step's transition is
stored, exactly as when it ran before the step, so the order of random draws (and the result) is the
same on every backend. On a GPU the update's kernels are queued, and its outputs stay on the device until
a log step (every ``log_every`` steps).

Evaluation (deterministic policy, the official Meta-World environments whatever ``env.backend``) runs
every ``eval_every`` steps and at the end. With ``eval_async=true`` (default) it runs on a thread, on
its own environments, from a copy of the actor taken at the evaluation step, while training goes on.
Its result is recorded at a fixed point, the next evaluation step or the end of the run (waiting for it
if needed), and logged at its own step: so ``best``/``final``, Δm and every checkpoint are the same
however fast the thread was, and a run is as reproducible as with ``eval_async=false`` (inline:
recorded at once). Δm (PIVRG) therefore follows an evaluation one ``eval_every`` later than inline.
Checkpoints every ``checkpoint_every`` steps, at the end and on ctrl-C; an evaluation still in flight
is saved as its actor copy and the evaluation environment's generators at its start, and a resume runs
it again (same policy, same episodes, same result).

Resume (``resume=<run dir>``) restores exactly: the networks, target critics, optimizers, temperatures,
both aggregators' state, every random generator (Python, NumPy, torch CPU/CUDA, the agent's, the replay
sampler's, the warm-up actions', the environments' goal and Meta-World generators), the environments'
reward normaliser, the step and update counters, the evaluation history (best / final) and the Δm
source. Not restored: episodes in flight (both environments start new episodes from the restored
generators) and, unless ``checkpoint_buffer=true``, the replay buffer, which is then re-filled with
``warmup_steps`` steps of the current policy before updates resume. So a resumed run is not
bit-identical to an uninterrupted one, but two resumes of the same checkpoint are (on the CPU).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mtrl.training.checkpoint import (CHECKPOINT_NAME, SUMMARY_NAME, atomic_save, atomic_write_json, derive_seed,
                                      rng_state, seed_everything, set_rng_state)
from mtrl.training.config import TrainSettings
from mtrl.training.logger import TrainLogger
from mtrl.training.tracking import EvalHistory, PerformanceTracker

__all__ = ["Trainer", "TrainingInterrupted"]

log = logging.getLogger("mtrl.train")

CHECKPOINT_VERSION = 1
_WARMUP_STREAM, _BUFFER_STREAM = 2, 3


def _env_state(env: Any) -> dict[str, Any] | None:
    """The environment's generators and reward normaliser; None when its workers are gone (after ctrl-C):
    a resume then starts the environment from its seed."""
    try:
        return env.state_dict()
    except Exception:  # noqa: BLE001
        log.warning("Could not read the environment's state; a resume will re-seed it.", exc_info=True)
        return None


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def policy_snapshot(agent: Any) -> Any:
    """A copy of ``agent`` whose ``act`` uses a frozen copy of the actor, for evaluating while training goes
    on (the rest is shared: deterministic acting reads only the actor)."""
    snapshot = copy.copy(agent)
    snapshot.actor = copy.deepcopy(agent.actor)
    return snapshot


@dataclass
class PendingEvaluation:
    """An evaluation started and not yet recorded."""

    step: int
    """The step it evaluates (its TensorBoard step)."""
    snapshot: Any
    """The agent with the actor of that step (:func:`policy_snapshot`)."""
    eval_env_state: dict[str, Any] | None
    """The evaluation environment's state when it started: a resume runs it again from there."""
    future: Future


class Evaluations:
    """Runs evaluations inline or on one worker thread; at most one is pending at a time."""

    def __init__(self, evaluate_fn: Callable[..., dict[str, float]], eval_env: Any, episodes: int,
                 asynchronous: bool) -> None:
        self.evaluate_fn, self.eval_env, self.episodes = evaluate_fn, eval_env, episodes
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mtrl-eval") if asynchronous else None
        self._cancelled = threading.Event()
        self.pending: PendingEvaluation | None = None

    def start(self, step: int, snapshot: Any, eval_env_state: dict[str, Any] | None) -> None:
        assert self.pending is None, "collect the pending evaluation first"
        if self._executor is None:
            future: Future = Future()
            future.set_result(self._run(snapshot))
        else:
            future = self._executor.submit(self._run, snapshot)
        self.pending = PendingEvaluation(step, snapshot, eval_env_state, future)

    def _run(self, snapshot: Any) -> dict[str, float]:
        return self.evaluate_fn(lambda obs: snapshot.act(obs, deterministic=True), self.eval_env, self.episodes,
                                self._cancelled.is_set)

    def collect(self) -> tuple[int, dict[str, float]]:
        """Waits for the pending evaluation; returns its step and per-task success."""
        assert self.pending is not None
        success = self.pending.future.result()
        step, self.pending = self.pending.step, None
        return step, success

    def cancel(self) -> None:
        """Stops the evaluation in flight (it stays ``pending``, for the checkpoint) and the thread."""
        self._cancelled.set()
        if self.pending is not None:
            with contextlib.suppress(BaseException):
                self.pending.future.result()
        if self._executor is not None:
            self._executor.shutdown(wait=True)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :meth:`Trainer.train` after ctrl-C, once the checkpoint is saved."""

    def __init__(self, step: int, run_dir: Path) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved in {run_dir}")
        self.step, self.run_dir = step, run_dir


class Trainer:
    """Builds the environments, agent and logs of one run, and trains it. See the module docstring."""

    def __init__(self, settings: TrainSettings, run_dir: str | Path) -> None:
        import envs

        self.s = settings
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = settings.checkpoint
        self.step = 0 if checkpoint is None else int(checkpoint["step"])
        self.elapsed_before = 0.0 if checkpoint is None else float(checkpoint.get("wall_time_s", 0.0))

        seed_everything(settings.seed)
        # One aggregator instance per network (they keep separate state); none for a loss that is not aggregated.
        aggregated = settings.agent.aggregate
        self.aggregators = {role: settings.make_aggregator() for role in ("critic", "actor") if role in aggregated}

        # Environments: the run's seed fixes the goals; the evaluation environment has the same goals and
        # its own generator streams. A resume restores the generators' states (envs' state_dict).
        k = settings.num_tasks
        log.info("Building %s (%d tasks, protocol %s, env backend %s) on %s ...", settings.env_name, k,
                 settings.protocol.name, settings.backend, settings.device)
        env_args = dict(task=settings.task, vector_strategy=settings.vector_strategy)
        self.env = envs.make_multitask_env(settings.benchmark, settings.protocol, settings.seed,
                                           backend=settings.backend, **env_args)
        try:
            self.eval_env = envs.make_eval_env(settings.benchmark, settings.protocol, settings.seed, **env_args)
        except BaseException:
            self.env.close()
            raise
        try:
            self._build(settings, checkpoint)
        except BaseException:
            self.close()
            raise

    def _build(self, settings: TrainSettings, checkpoint: dict[str, Any] | None) -> None:
        """Everything after the environments (closed by the caller if this fails)."""
        import agents
        import envs

        k = settings.num_tasks
        if list(self.env.task_names) != settings.task_names:
            raise RuntimeError(f"The environment's tasks {self.env.task_names} differ from {settings.task_names}.")
        self.evaluations = Evaluations(envs.evaluate, self.eval_env, settings.eval_episodes, settings.eval_async)
        self._resume_evaluation: dict[str, Any] | None = None

        self.agent = agents.MultiTaskSAC(
            self.env.obs_dim, self.env.action_dim, k, settings.agent,
            critic_aggregator=self.aggregators.get("critic"), actor_aggregator=self.aggregators.get("actor"),
            device=settings.device, seed=settings.seed)
        self.buffer = agents.ReplayBuffer(k, self.env.obs_dim, self.env.action_dim, settings.buffer_size,
                                          device=settings.device, seed=derive_seed(settings.seed, _BUFFER_STREAM))
        self.warmup_rng = np.random.default_rng(derive_seed(settings.seed, _WARMUP_STREAM))
        self.action_low = np.broadcast_to(np.asarray(self.env.action_low, dtype=np.float32), (k, self.env.action_dim))
        self.action_high = np.broadcast_to(np.asarray(self.env.action_high, dtype=np.float32), (k, self.env.action_dim))

        self.history = EvalHistory(settings.task_names)
        self.performance = PerformanceTracker(settings.performance_source, settings.stl_reference,
                                              settings.train_success_window, settings.device)
        self.episodes_done = np.zeros(k, dtype=np.int64)
        # Updates start once the buffer holds `warmup_steps` vector steps of this run (re-filled after a
        # resume without a saved buffer, with the current policy).
        self.learn_from = settings.warmup_steps
        if checkpoint is not None:
            self._restore(checkpoint)
        settings.checkpoint = None  # free the loaded copy

        # On resume, TensorBoard drops what the stopped run logged after its checkpoint (steps > step).
        self.logger = TrainLogger(self.run_dir, settings.task_names,
                                  purge_step=self.step + 1 if checkpoint is not None else None)
        self._stop_requested = False
        self._checkpoint_step: int | None = self.step if checkpoint is not None else None
        self._recorded_since_checkpoint = False

    # ------------------------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        """Train until ``steps``; returns the summary (also written to ``summary.json``)."""
        s = self.s
        self._started = time.perf_counter()
        previous_handler = self._install_sigint_handler()
        bar = tqdm(total=s.steps, initial=min(self.step, s.steps), unit="step", dynamic_ncols=True,
                   disable=not s.progress, desc=f"{s.env_name}/{s.agg_name}/seed{s.seed}", smoothing=0.05)
        self._bar = bar
        if self.history.final is not None:
            self._set_postfix()
        try:
            self._start_resumed_evaluation()
            obs = self.env.reset()
            try:
                with logging_redirect_tqdm() if s.progress else _nothing():   # log lines above the bar
                    while self.step < s.steps and not self._stop_requested:
                        obs = self._iteration(obs)
                        bar.update(1)
                        self._after_step()
            except BaseException as error:
                if not (isinstance(error, KeyboardInterrupt) or self._stop_requested):
                    raise
                self._stop_requested = True   # the interrupt may have broken the env workers: no more env calls
            if self._stop_requested:
                self.evaluations.cancel()   # saved as pending: a resume runs it again
                self.save_checkpoint()
                self.write_summary(finished=False)
                log.info("Interrupted at step %d; checkpoint saved. Continue with: python -m mtrl.train resume=%s",
                         self.step, self.run_dir)
                raise TrainingInterrupted(self.step, self.run_dir)
            self._finish_evaluations()
            if self._checkpoint_step != self.step or self._recorded_since_checkpoint:
                self.save_checkpoint()
            return self.write_summary(finished=True)
        finally:
            bar.close()
            self._restore_sigint_handler(previous_handler)
            self.logger.close()
            self.close()

    def _iteration(self, obs: np.ndarray) -> np.ndarray:
        action = self._act(obs)
        self.env.step_async(action)    # the environments step (EnvPool threads, async workers) ...
        self._update()                 # ... while the update runs
        result = self.env.step_wait()
        self._store(obs, action, result)
        return result.obs

    def _act(self, obs: np.ndarray) -> np.ndarray:
        if self.step < self.s.warmup_steps:
            return self.warmup_rng.uniform(self.action_low, self.action_high).astype(np.float32)
        return self.agent.act(obs)

    def _update(self) -> None:
        if self.step >= self.learn_from:
            batch = self.buffer.sample(self.s.batch_per_task)
            outputs = self.agent.update(batch, self.performance.current())
            self.logger.updates.add(outputs)

    def _store(self, obs: np.ndarray, action: np.ndarray, result: Any) -> None:
        self.buffer.add(obs, action, result.reward, result.next_obs, result.terminated)
        for episode in result.finished:
            self.episodes_done[episode.task] += 1
            self.logger.episodes.add(episode.task, episode.success, episode.episode_return)
            self.performance.on_episode(episode.task, episode.success)
        self.step += 1
        self.logger.count_step()

    def _after_step(self) -> None:
        s, step = self.s, self.step
        if step % s.log_every == 0:
            self.logger.log_window(step, self.aggregators)
        if step % s.eval_every == 0:
            self.evaluate()
        if step % s.checkpoint_every == 0:
            self.save_checkpoint()

    # ---------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> None:
        """Records the pending evaluation (waiting for it), then evaluates this step's policy: on the
        evaluation thread (``eval_async``) or inline, recorded at once."""
        started = time.perf_counter()
        if self.evaluations.pending is not None:
            self._record_evaluation(*self.evaluations.collect())
        self.evaluations.start(self.step, policy_snapshot(self.agent), _env_state(self.eval_env))
        if not self.s.eval_async:
            self._record_evaluation(*self.evaluations.collect())
        self.logger.exclude_time(time.perf_counter() - started)   # inline evaluation, or waiting for one

    def _finish_evaluations(self) -> None:
        """The end of the run: record the pending evaluation and evaluate the last step if not done yet."""
        if self.evaluations.pending is not None:
            self._record_evaluation(*self.evaluations.collect())
        if self.history.last_step != self.step:
            self.evaluations.start(self.step, policy_snapshot(self.agent), _env_state(self.eval_env))
            self._record_evaluation(*self.evaluations.collect())

    def _start_resumed_evaluation(self) -> None:
        """A resume runs the evaluation its checkpoint left in flight again, from the saved actor."""
        saved, self._resume_evaluation = self._resume_evaluation, None
        if saved is not None:
            snapshot = policy_snapshot(self.agent)
            snapshot.actor.load_state_dict(saved["actor"])
            self.evaluations.start(int(saved["step"]), snapshot, saved["eval_env"])

    def _record_evaluation(self, step: int, success: dict[str, float]) -> dict[str, Any]:
        record = self.history.add(step, success)
        self.performance.on_evaluation(np.asarray([record["per_task"][name] for name in self.s.task_names]))
        self.logger.log_evaluation(step, record, self.history.best["mean"])
        self.logger.per_task("agg/delta_m", self.performance.values, step)
        self.logger.flush()
        self._set_postfix()
        self.write_summary(finished=False)
        self._recorded_since_checkpoint = True
        log.info("step %d: eval success mean %.3f (best %.3f at step %d)", step, record["mean"],
                 self.history.best["mean"], self.history.best["step"])
        return record

    def _set_postfix(self) -> None:
        final, best = self.history.final, self.history.best
        if final is not None and best is not None:
            self._bar.set_postfix(success=f"{final['mean']:.2f}", best=f"{best['mean']:.2f}", refresh=False)

    # --------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        started = time.perf_counter()
        path = self.run_dir / CHECKPOINT_NAME
        pending = self.evaluations.pending
        state = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "learn_from": self.learn_from,
            "wall_time_s": self.wall_time(),
            "config": self.s.config,
            "task_names": self.s.task_names,
            "agent": self.agent.state_dict(),
            "aggregators": {role: agg.state_dict() for role, agg in self.aggregators.items()},
            "buffer": self.buffer.state_dict(include_data=self.s.checkpoint_buffer),
            "env": _env_state(self.env),
            # With an evaluation in flight, the evaluation env is busy: save its state at the evaluation's start.
            "eval_env": _env_state(self.eval_env) if pending is None else pending.eval_env_state,
            "pending_evaluation": None if pending is None else {
                "step": pending.step, "actor": pending.snapshot.actor.state_dict(),
                "eval_env": pending.eval_env_state},
            "backend": self.env.backend,
            "rng": rng_state({"warmup": self.warmup_rng.bit_generator.state}),
            "history": self.history.state_dict(),
            "performance": self.performance.state_dict(),
            "episodes_done": self.episodes_done.tolist(),
        }
        atomic_save(state, path)
        self._checkpoint_step = self.step
        self._recorded_since_checkpoint = False
        if hasattr(self, "logger"):
            self.logger.exclude_time(time.perf_counter() - started)
        log.debug("checkpoint at step %d: %s", self.step, path)
        return path

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"Checkpoint version {checkpoint.get('version')} is not {CHECKPOINT_VERSION}.")
        if checkpoint["task_names"] != self.s.task_names:
            raise ValueError(f"The checkpoint's tasks {checkpoint['task_names']} differ from {self.s.task_names}.")
        self.agent.load_state_dict(checkpoint["agent"])
        for role, aggregator in self.aggregators.items():
            aggregator.load_state_dict(checkpoint["aggregators"][role])
        self.buffer.load_state_dict(checkpoint["buffer"])
        for name, env in (("env", self.env), ("eval_env", self.eval_env)):
            if checkpoint.get(name) is not None:
                try:
                    env.load_state_dict(checkpoint[name])   # generators and reward normaliser; episodes restart
                except ValueError as error:   # e.g. env.backend=auto picked another backend on this machine
                    log.warning("Could not restore the %s's state (%s); it starts from its seed.", name, error)
        self._resume_evaluation = checkpoint.get("pending_evaluation")
        rng = checkpoint["rng"]
        set_rng_state(rng)
        self.warmup_rng.bit_generator.state = rng["warmup"]
        self.history.load_state_dict(checkpoint["history"])
        self.performance.load_state_dict(checkpoint["performance"])
        self.episodes_done = np.asarray(checkpoint["episodes_done"], dtype=np.int64)
        if len(self.buffer) > 0:      # the buffer came back: learning goes on at once
            self.learn_from = int(checkpoint["learn_from"])
        else:                         # re-fill it first (policy actions once past the initial warm-up)
            self.learn_from = max(self.s.warmup_steps, self.step + self.s.warmup_steps)
        log.info("Resumed %s at step %d (%d updates so far; replay buffer %s).", self.run_dir, self.step,
                 self.agent.updates, "restored" if len(self.buffer) else f"re-filled over {self.s.warmup_steps} steps")

    # ------------------------------------------------------------------------------------- summary
    def wall_time(self) -> float:
        started = getattr(self, "_started", None)
        return self.elapsed_before + (0.0 if started is None else time.perf_counter() - started)

    def summary(self, finished: bool) -> dict[str, Any]:
        final, best = self.history.final, self.history.best
        return {
            "env": self.s.env_name,
            "agg": self.s.agg_name,
            "seed": self.s.seed,
            "tasks": self.s.task_names,
            "finished": finished,
            "steps": self.step,
            "transitions": self.step * self.s.num_tasks,
            "updates": self.agent.updates,
            "wall_time_s": round(self.wall_time(), 3),
            "env_backend": self.env.backend,                 # what stepped the training environments
            "final": final,                                  # {step, mean, per_task} of the last evaluation
            "best": best,                                    # the evaluation with the highest mean success
            "best_mean_success": None if best is None else best["mean"],
            "final_mean_success": None if final is None else final["mean"],
            "best_per_task": self.history.best_per_task(),   # each task's maximum over evaluations
            "train_episodes": dict(zip(self.s.task_names, self.episodes_done.tolist())),
            "evaluations": self.history.history,
            "config": self.s.config,
        }

    def write_summary(self, finished: bool) -> dict[str, Any]:
        summary = self.summary(finished)
        atomic_write_json(summary, self.run_dir / SUMMARY_NAME)
        return summary

    # ------------------------------------------------------------------------------------ plumbing
    def _install_sigint_handler(self) -> Any:
        """First ctrl-C: finish the current step, checkpoint and stop. A second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            log.warning("ctrl-C: stopping after this step and saving a checkpoint (press again to stop mid-step).")

        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, handler)
        return previous

    @staticmethod
    def _restore_sigint_handler(previous: Any) -> None:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)

    def close(self) -> None:
        evaluations = getattr(self, "evaluations", None)
        if evaluations is not None:
            evaluations.cancel()
        for env in (getattr(self, "env", None), getattr(self, "eval_env", None)):
            if env is not None:
                try:
                    env.close()
                except Exception:  # noqa: BLE001 - workers may already be gone after ctrl-C
                    pass
