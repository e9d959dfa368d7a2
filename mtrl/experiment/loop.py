"""The training loop: multi-task SAC on a vector of Meta-World tasks, one update per vector step.

:class:`Trainer` composes the parts of a run, each its own unit:

* building it, and restoring it on resume: :mod:`mtrl.experiment.build` (:class:`~mtrl.experiment.build.Run`);
* the steps (act → send → update → receive → store): :mod:`mtrl.experiment.stepping`;
* evaluations (in a worker process, or inline): :mod:`mtrl.experiment.evaluation`;
* checkpoints and what a failed write leaves intact: :mod:`mtrl.experiment.checkpoint`;
* TensorBoard and the run's log file: :mod:`mtrl.experiment.logger`; ``summary.json``: :mod:`mtrl.experiment.summary`;
* the progress bar: :mod:`mtrl.experiment.progress`.

The trainer runs the steps and, on their cadences, logs (every ``log_every`` steps), evaluates (every
``eval_every`` steps and at the end) and checkpoints (every ``checkpoint_every`` steps, at the end and on
ctrl-C). With ``eval_async=true`` (default) an evaluation runs while training goes on; its result is
recorded at a fixed point, the next evaluation step or the end of the run (waiting for it if needed),
and logged at its own step: so ``best``/``final``, Δm and every checkpoint are the same however fast the
worker was, and a run is as reproducible as with ``eval_async=false`` (inline: recorded at once). Δm
(PIVRG) therefore follows an evaluation one ``eval_every`` later than inline. A checkpoint taken while
an evaluation is pending saves its actor copy and the evaluation environment's generators at its start;
a resume runs it again (same policy, same episodes, same result).

A run stops cleanly on ctrl-C or SIGTERM (checkpoint, exit 130), on divergence
(:mod:`mtrl.experiment.divergence`: no checkpoint of the diverged state, exit 3) and when the disk refuses
a write of any of its files (``checkpoint.pt``, a replay-buffer chunk, the TensorBoard events,
``summary.json``, ``train.log``: :class:`RunWriteError`, exit 2, nothing more is written and the last
complete checkpoint stays); ``kill -9`` loses at most the steps since the last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from mtrl.experiment.build import build_run
from mtrl.experiment.checkpoint import CHECKPOINT_NAME, RunWriteError
from mtrl.experiment.config import TrainSettings
from mtrl.experiment.divergence import TrainingDiverged
from mtrl.experiment.evaluation import EvaluationResult
from mtrl.experiment.logger import LogFileWatch
from mtrl.experiment.progress import Progress
from mtrl.experiment.summary import RunCounts

__all__ = ["Trainer", "TrainingInterrupted", "TrainingDiverged", "RunWriteError", "CheckpointWriteError"]

log = logging.getLogger("mtrl.train")

CheckpointWriteError = RunWriteError
"""The name ``mtrl.train`` catches (exit 2): a write of the run refused, the last checkpoint intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :meth:`Trainer.train` after ctrl-C, once the checkpoint is saved."""

    def __init__(self, step: int, run_dir: Path) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved in {run_dir}")
        self.step, self.run_dir = step, run_dir


class Trainer:
    """Builds one run (:func:`~mtrl.experiment.build.build_run`) and trains it. See the module docstring."""

    def __init__(self, settings: TrainSettings, run_dir: str | Path) -> None:
        self.settings = settings
        self.run = build_run(settings, run_dir)
        self.run_dir = self.run.run_dir
        self.progress = Progress(settings.steps, self.run.steps.step, self.run.steps.learn_from,
                                 f"{settings.env_name}/{settings.agg_name}/seed{settings.seed}", settings.progress)
        self._log_watch = LogFileWatch(self.run_dir)
        self._started = time.perf_counter()
        self._stop_requested = False
        self._recorded_since_checkpoint = False

    # ------------------------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        """Train until ``steps``; returns the summary (also written to ``summary.json``).

        Raises:
            TrainingInterrupted: after ctrl-C / SIGTERM, once the checkpoint is written.
            TrainingDiverged: non-finite state; the last good checkpoint is kept.
            RunWriteError: a file of the run could not be written; nothing more was, the last checkpoint is intact.
        """
        s, run = self.settings, self.run
        self._started = time.perf_counter()
        previous_handlers = self._install_signal_handlers()
        if run.history.final is not None:
            self.progress.evaluated(run.history.final["mean"], run.history.best["mean"])
        self.progress.evaluation(run.evaluations.pending is not None)
        try:
            with logging_redirect_tqdm() if s.progress else contextlib.nullcontext():   # log lines above the bar
                try:
                    self._take_steps()
                    if self._stop_requested:
                        self._stop_interrupted()
                    return self._finish()
                except TrainingDiverged as error:
                    self._stop_diverged(error)
                    raise   # not reached: _stop_diverged raises
        finally:
            self.progress.close()
            self._restore_signal_handlers(previous_handlers)
            self.close()

    def _take_steps(self) -> None:
        """Steps until the run is done or a stop is requested (ctrl-C, SIGTERM)."""
        run = self.run
        obs = run.env.reset()
        try:
            while run.steps.step < self.settings.steps and not self._stop_requested:
                updating = run.steps.updating
                obs = run.steps.iteration(obs)
                run.logger.count_step(updating)
                self.progress.advance(run.steps.step, updating)
                self.after_step()
        except BaseException as error:
            if not (isinstance(error, KeyboardInterrupt) or self._stop_requested):
                raise
            self._stop_requested = True   # the interrupt may have broken the env workers: no more env calls

    def after_step(self) -> None:
        """What falls due after a step: the warm-up's end, a log window, an evaluation, a checkpoint."""
        s, step = self.settings, self.run.steps.step
        if step == self.run.steps.learn_from:
            self._warmup_done()
        if step % s.log_every == 0:
            self._flush_logs()
        if step % s.eval_every == 0:
            self.evaluate()
        if step % s.checkpoint_every == 0:
            self.save_checkpoint()
        if self._log_watch.error is not None:
            raise self._write_failure(self._log_watch.error)

    def _warmup_done(self) -> None:
        steps = self.run.steps
        if steps.step == self.settings.warmup_steps:
            log.info("step %d: warm-up done (%d steps of random actions filled the replay buffer); updates begin, "
                     "one per step.", steps.step, steps.step)
        else:
            log.info("step %d: replay buffer refilled (%d steps of the policy's actions); updates begin again.",
                     steps.step, self.settings.warmup_steps)

    def _finish(self) -> dict[str, Any]:
        """The end of the run: the last evaluation, the last log window, the last checkpoint, the summary."""
        run, step = self.run, self.run.steps.step
        if run.evaluations.pending is not None:
            self._record_evaluation(self._collect_evaluation())
        if run.history.last_step != step:
            self.progress.set_phase("evaluating")
            run.evaluations.start(step, _actor_copy(run.agent))
            self._record_evaluation(self._collect_evaluation())
        self._flush_logs()
        if run.checkpoints.last_step != step or self._recorded_since_checkpoint:
            self.save_checkpoint()
        return self.write_summary(finished=True)

    # ---------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> None:
        """Records the pending evaluation (waiting for it), then evaluates this step's policy: in the
        evaluation worker (``eval_async``) or inline, recorded at once."""
        run = self.run
        if run.evaluations.pending is not None:
            self._record_evaluation(self._collect_evaluation())
        if not self.settings.eval_async:
            self.progress.set_phase("evaluating")
        run.evaluations.start(run.steps.step, _actor_copy(run.agent))
        self.progress.evaluation(running=True)
        if not self.settings.eval_async:
            self._record_evaluation(self._collect_evaluation())
        run.logger.exclude_time()   # an inline evaluation, or waiting for one

    def _collect_evaluation(self) -> EvaluationResult:
        phase = self.progress.phase
        self.progress.set_phase("evaluating")
        result = self.run.evaluations.collect()
        self.progress.evaluation(running=False)
        self.progress.set_phase(phase)
        return result

    def _record_evaluation(self, result: EvaluationResult) -> None:
        run = self.run
        record = run.history.add(result.step, result.success, result.returns)
        best = run.history.best
        assert best is not None
        run.performance.on_evaluation(np.asarray([record["per_task"][name] for name in self.settings.task_names]))
        run.logger.log_evaluation(result.step, record, best["mean"])
        run.logger.per_task("agg/delta_m", run.performance.values, result.step)
        with self._writes():
            run.logger.flush()
        self.progress.evaluated(record["mean"], best["mean"])
        self.write_summary(finished=False)
        self._recorded_since_checkpoint = True
        log.info("step %d: eval success mean %.3f (best %.3f at step %d)", result.step, record["mean"],
                 best["mean"], best["step"])

    # --------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoint.pt`` (and the buffer's new chunk) atomically, once the state passed the guard.

        Raises:
            TrainingDiverged: the state is not sane; nothing is written, the last checkpoint stays.
            RunWriteError: the disk refused the write; the previous checkpoint is intact.
        """
        run, step = self.run, self.run.steps.step
        run.guard.check(step, run.logger.updates.peek(), run.buffer)
        path = run.checkpoints.save(step, run.state_dict(self.wall_time()))
        self._recorded_since_checkpoint = False
        run.logger.exclude_time()
        log.debug("checkpoint at step %d: %s", step, path)
        return path

    # ------------------------------------------------------------------------------------- summary
    def wall_time(self) -> float:
        """Seconds of training so far, over every process of the run."""
        return self.run.wall_time_before + time.perf_counter() - self._started

    def write_summary(self, finished: bool) -> dict[str, Any]:
        run = self.run
        counts = RunCounts(run.steps.step, run.agent.updates, self.wall_time(), run.steps.episodes_done.tolist(),
                           run.guard.skipped, run.env_restarts)
        with self._writes():
            return run.summary.write(finished, counts)

    # ----------------------------------------------------------------------------- stops and logs
    def _flush_logs(self) -> None:
        """Check the window's state for divergence, then write it (also the last, partial window)."""
        run, step = self.run, self.run.steps.step
        if not run.logger.window_open and not run.logger.updates.count:
            return
        problem = None
        try:
            run.guard.check(step, run.logger.updates.peek(), run.buffer)
        except TrainingDiverged as error:
            problem = error
        run.logger.log_window(step, run.aggregators)
        run.logger.scalar("train/skipped_updates", run.guard.skipped, step)
        run.logger.scalar("perf/env_restarts", run.env_restarts, step)
        with self._writes():
            run.logger.flush()
        if problem is not None:
            raise problem

    @contextlib.contextmanager
    def _writes(self) -> Iterator[None]:
        """A write of the run's files: a refusal of the disk becomes a :class:`RunWriteError`."""
        try:
            yield
        except RunWriteError:
            raise
        except OSError as error:
            raise self._write_failure(error) from error

    def _write_failure(self, error: OSError) -> RunWriteError:
        return self.run.checkpoints.failure(error.filename or self.run_dir, error, self.run.steps.step)

    def _stop_interrupted(self) -> None:
        """ctrl-C / SIGTERM: the evaluation in flight stays pending (a resume runs it again); checkpoint and stop."""
        run = self.run
        run.evaluations.cancel()
        self._flush_logs()
        self.save_checkpoint()
        self.write_summary(finished=False)
        log.info("Interrupted at step %d; checkpoint saved. Continue with: python -m mtrl.train resume=%s",
                 run.steps.step, self.run_dir)
        raise TrainingInterrupted(run.steps.step, self.run_dir)

    def _stop_diverged(self, error: TrainingDiverged) -> None:
        """No checkpoint of a diverged state: say which checkpoint is good and how to go on from it."""
        self.write_summary(finished=False)
        clip = self.run.agent.config.max_grad_norm   # suggest clipping, or clipping harder than now
        change = f"agent.max_grad_norm={1.0 if clip is None else clip / 2}"
        last = self.run.checkpoints.last_step
        if last is None:
            hint = f"No checkpoint was written before; start again with e.g. {change} or a lower agent.lr."
        else:
            hint = (f"{self.run_dir / CHECKPOINT_NAME} (step {last}) is the last good checkpoint. "
                    f"Resume from it with e.g.: python -m mtrl.train resume={self.run_dir} {change} "
                    f"(or on_nonfinite=skip to drop non-finite updates).")
        raise TrainingDiverged(error.step, f"{error.problem}. The run stopped. {hint}") from error

    # ------------------------------------------------------------------------------------ plumbing
    def _install_signal_handlers(self) -> Any:
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
    def _restore_signal_handlers(previous: Any) -> None:
        if previous is not None and threading.current_thread() is threading.main_thread():
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def close(self) -> None:
        """Stop the evaluation worker, close the environments and the event file."""
        self.run.close()


def _actor_copy(agent: Any) -> dict[str, Any]:
    """The actor's parameters as host copies: the evaluation of this step reads them while training goes on."""
    return {name: value.detach().to("cpu", copy=True) for name, value in agent.actor.state_dict().items()}
