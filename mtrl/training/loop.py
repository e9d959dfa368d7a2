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
generators). The replay buffer comes back from its incremental chunks (``checkpoint_buffer=true``,
the default); with ``checkpoint_buffer=false`` it is re-filled with ``warmup_steps`` steps of the
current policy before updates resume. So a resumed run is not bit-identical to an uninterrupted one,
but two resumes of the same checkpoint are (on the CPU).

A run stops cleanly on ctrl-C (checkpoint, exit 130), on divergence (:mod:`mtrl.training.divergence`:
no checkpoint of the diverged state, exit 3) and on a failed checkpoint write (full disk: the previous
checkpoint stays, exit 2); ``kill -9`` loses at most the steps since the last checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
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

from envs.restarts import EnvironmentRestarted, retry_on_restart, with_restarts
from mtrl.training.checkpoint import (CHECKPOINT_NAME, CHECKPOINT_VERSION, SUMMARY_NAME, BufferCheckpoint,
                                      CheckpointError, atomic_save, atomic_write_json, derive_seed,
                                      remove_partial_writes, rng_state, seed_everything, set_rng_state)
from mtrl.training.config import TrainSettings
from mtrl.training.divergence import DivergenceGuard, TrainingDiverged
from mtrl.training.logger import TrainLogger
from mtrl.training.tracking import EvalHistory, PerformanceTracker

__all__ = ["Trainer", "TrainingInterrupted", "TrainingDiverged", "CheckpointWriteError"]

log = logging.getLogger("mtrl.train")

_WARMUP_STREAM, _BUFFER_STREAM, _GUARD_STREAM, _RESTART_STREAM = 2, 3, 4, 5


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


class CheckpointWriteError(OSError):
    """``checkpoint.pt`` (or ``summary.json``) could not be written (e.g. a full disk); the previous one is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


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
        # Worker crashes restart the environments (envs.restarts); a restart draws fresh generator streams.
        self.env = with_restarts(lambda restart: envs.make_multitask_env(
            settings.benchmark, settings.protocol, derive_seed(settings.seed, _RESTART_STREAM, restart) if restart
            else settings.seed, goal_seed=settings.seed, backend=settings.backend, **env_args))
        try:
            self.eval_env = with_restarts(lambda restart: envs.make_eval_env(
                settings.benchmark, settings.protocol, settings.seed, **env_args))
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
        self.evaluations = Evaluations(retry_on_restart(envs.evaluate), self.eval_env, settings.eval_episodes,
                                       settings.eval_async)
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

        self.buffer_checkpoint = BufferCheckpoint(self.run_dir, self.buffer) if settings.checkpoint_buffer else None
        self.guard = DivergenceGuard(self.agent, self.aggregators, settings.task_names, settings.on_nonfinite,
                                     settings.q_bound, derive_seed(settings.seed, _GUARD_STREAM))
        # Which steps ran in which process: [{start, end, pid, started}], one entry per (re)start.
        self.segments: list[dict[str, Any]] = []
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
        self.segments.append({"start": self.step, "end": self.step, "pid": os.getpid(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

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
                self._flush_logs()
                self.save_checkpoint()
                self.write_summary(finished=False)
                log.info("Interrupted at step %d; checkpoint saved. Continue with: python -m mtrl.train resume=%s",
                         self.step, self.run_dir)
                raise TrainingInterrupted(self.step, self.run_dir)
            self._finish_evaluations()
            self._flush_logs()
            if self._checkpoint_step != self.step or self._recorded_since_checkpoint:
                self.save_checkpoint()
            return self.write_summary(finished=True)
        except TrainingDiverged as error:
            self._stop_diverged(error)
            raise   # not reached: _stop_diverged raises
        finally:
            bar.close()
            self._restore_sigint_handler(previous_handler)
            self.logger.close()
            self.close()

    def _iteration(self, obs: np.ndarray) -> np.ndarray:
        action = self._act(obs)
        try:
            self.env.step_async(action)    # the environments step (EnvPool threads, async workers) ...
            self._update()                 # ... while the update runs
            result = self.env.step_wait()
        except EnvironmentRestarted as restart:   # a worker crashed: this step's transitions are dropped
            self.step += 1
            self.logger.count_step()
            return restart.obs
        self._store(obs, action, result)
        return result.obs

    def _act(self, obs: np.ndarray) -> np.ndarray:
        if self.step < self.s.warmup_steps:
            return self.warmup_rng.uniform(self.action_low, self.action_high).astype(np.float32)
        return self.agent.act(obs)

    def _update(self) -> None:
        if self.step >= self.learn_from:
            outputs = self._guarded_update()
            if outputs is not None:
                self.logger.updates.add(outputs)

    def _guarded_update(self) -> dict[str, Any] | None:
        """``agent.update`` (sampling inside it); non-finite inputs an aggregator refuses become a skip or a stop."""
        try:
            return self.agent.update(self.buffer, self.performance.current())
        except ValueError as error:
            diverged = self.guard.from_update_error(self.step + 1, error)
            if diverged is None:
                raise
            if self.s.on_nonfinite == "stop":
                raise diverged from error
            self.guard.skipped += 1   # the rest of this update is dropped; the next one zeroes the gradients
            return None

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
            self._flush_logs()
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
        """Write ``checkpoint.pt`` (and the buffer's new chunk) atomically, once the state passed the guard.

        Raises:
            TrainingDiverged: the state is not sane; nothing is written, the last checkpoint stays.
            CheckpointWriteError: the disk refused the write; the previous checkpoint is intact.
        """
        started = time.perf_counter()
        self.guard.check(self.step, self.logger.updates.peek() if hasattr(self, "logger") else {}, self.buffer)
        path = self.run_dir / CHECKPOINT_NAME
        pending = self.evaluations.pending
        self.segments[-1]["end"] = self.step
        try:
            buffer_manifest = None if self.buffer_checkpoint is None else self.buffer_checkpoint.save()
        except OSError as error:
            raise CheckpointWriteError(error.errno, self._write_failure(self.run_dir / "buffer", error)) from error
        state = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "learn_from": self.learn_from,
            "wall_time_s": self.wall_time(),
            "config": self.s.config,
            "task_names": self.s.task_names,
            "agent": self.agent.state_dict(),
            "aggregators": {role: agg.state_dict() for role, agg in self.aggregators.items()},
            "buffer": self.buffer.state_dict(include_data=False),
            "buffer_chunks": buffer_manifest,
            "guard": self.guard.state_dict(),
            "segments": self.segments,
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
        try:
            atomic_save(state, path)
        except OSError as error:
            raise CheckpointWriteError(error.errno, self._write_failure(path, error)) from error
        if self.buffer_checkpoint is not None:
            self.buffer_checkpoint.commit(buffer_manifest)
        remove_partial_writes(self.run_dir)   # left by a run killed while writing
        self._checkpoint_step = self.step
        self._recorded_since_checkpoint = False
        if hasattr(self, "logger"):
            self.logger.exclude_time(time.perf_counter() - started)
        log.debug("checkpoint at step %d: %s", self.step, path)
        return path

    def _write_failure(self, path: Path, error: OSError) -> str:
        previous = ("no earlier checkpoint exists" if self._checkpoint_step is None else
                    f"the previous checkpoint (step {self._checkpoint_step}) is intact")
        return (f"cannot write {path} at step {self.step} ({error.strerror or error}); {previous}. Free some space "
                f"and continue with: python -m mtrl.train resume={self.run_dir}")

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"Checkpoint version {checkpoint.get('version')} is not {CHECKPOINT_VERSION}.")
        if checkpoint["task_names"] != self.s.task_names:
            raise CheckpointError(f"The checkpoint's tasks {checkpoint['task_names']} differ from {self.s.task_names}.")
        self.agent.load_state_dict(checkpoint["agent"])
        for role, aggregator in self.aggregators.items():
            aggregator.load_state_dict(checkpoint["aggregators"][role])
        self.buffer.load_state_dict(checkpoint["buffer"])
        manifest = checkpoint.get("buffer_chunks")
        if manifest is not None and self.buffer_checkpoint is not None:
            self.buffer_checkpoint.load(manifest)
        if "guard" in checkpoint:
            self.guard.load_state_dict(checkpoint["guard"])
        self.segments = list(checkpoint.get("segments", []))
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
        self.segments[-1]["end"] = self.step
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
            "segments": self.segments,                       # which steps ran in which process
            "skipped_updates": self.guard.skipped,
            "env_restarts": self._env_restarts(),
            "config": self.s.config,
        }

    def write_summary(self, finished: bool) -> dict[str, Any]:
        summary = self.summary(finished)
        try:
            atomic_write_json(summary, self.run_dir / SUMMARY_NAME)
        except OSError as error:
            raise CheckpointWriteError(error.errno, self._write_failure(self.run_dir / SUMMARY_NAME, error)) from error
        return summary

    # ----------------------------------------------------------------------------- stops and logs
    def _flush_logs(self) -> None:
        """Check the window's state for divergence, then write it (also the last, partial window)."""
        if not self.logger.window_open and not self.logger.updates.count:
            return
        problem = None
        try:
            self.guard.check(self.step, self.logger.updates.peek(), self.buffer)
        except TrainingDiverged as error:
            problem = error
        self.logger.log_window(self.step, self.aggregators)
        self.logger.scalar("train/skipped_updates", self.guard.skipped, self.step)
        self.logger.scalar("perf/env_restarts", self._env_restarts(), self.step)
        self.logger.flush()
        if problem is not None:
            raise problem

    def _env_restarts(self) -> int:
        """Environment restarts after worker crashes (training and evaluation environments)."""
        return sum(getattr(env, "restarts", 0) for env in (self.env, self.eval_env))

    def _stop_diverged(self, error: TrainingDiverged) -> None:
        """No checkpoint of a diverged state: say which checkpoint is good and how to go on from it."""
        self.write_summary(finished=False)
        clip = self.agent.config.max_grad_norm   # suggest clipping, or clipping harder than now
        change = f"agent.max_grad_norm={1.0 if clip is None else clip / 2}"
        if self._checkpoint_step is None:
            hint = f"No checkpoint was written before; start again with e.g. {change} or a lower agent.lr."
        else:
            hint = (f"{self.run_dir / CHECKPOINT_NAME} (step {self._checkpoint_step}) is the last good checkpoint. "
                    f"Resume from it with e.g.: python -m mtrl.train resume={self.run_dir} {change} "
                    f"(or on_nonfinite=skip to drop non-finite updates).")
        raise TrainingDiverged(error.step, f"{error.problem}. The run stopped. {hint}") from error

    # ------------------------------------------------------------------------------------ plumbing
    def _install_sigint_handler(self) -> Any:
        """First ctrl-C (or SIGTERM, what schedulers send before preempting a job): finish the current step,
        checkpoint and stop. A second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            name = "ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            log.warning("%s: stopping after this step and saving a checkpoint (press again to stop mid-step).", name)

        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        for signum in previous:
            signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_sigint_handler(previous: Any) -> None:
        if previous is not None and threading.current_thread() is threading.main_thread():
            for signum, handler in previous.items():
                signal.signal(signum, handler)

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
