"""Building a run: what one training run is made of (:class:`Run`), built from its checked settings and, on
resume, restored from its checkpoint.

Resume (``resume=<run dir>``) restores exactly: the networks, target critics, optimizers, temperatures,
both aggregators' state, every random generator (Python, NumPy, torch CPU/CUDA, the agent's, the replay
sampler's, the warm-up actions', the environments' goal and Meta-World generators), the environments'
reward normaliser, the step and update counters, the evaluation history (best / final), the evaluation
left pending and the Δm source. Not restored: episodes in flight (both environments start new episodes
from the restored generators). The replay buffer comes back from its incremental chunks
(``checkpoint_buffer=true``, the default); with ``checkpoint_buffer=false`` it is re-filled with
``warmup_steps`` steps of the current policy before updates resume. So a resumed run is not
bit-identical to an uninterrupted one, but two resumes of the same checkpoint are (on the CPU).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtrl.experiment.checkpoint import (CHECKPOINT_VERSION, CheckpointError, Checkpointer, derive_seed, rng_state,
                                      seed_everything, set_rng_state)
from mtrl.experiment.config import TrainSettings
from mtrl.experiment.divergence import DivergenceGuard
from mtrl.experiment.evaluation import Evaluations, EvaluationSpec
from mtrl.experiment.logger import EpisodeWindow, TrainLogger, UpdateAccumulator
from mtrl.experiment.stepping import StepLoop
from mtrl.experiment.summary import RunSummary, Segments
from mtrl.experiment.tracking import EvalHistory, PerformanceTracker

__all__ = ["Run", "build_run"]

log = logging.getLogger("mtrl.train")

#: Generator streams derived from the run's seed (:func:`derive_seed`), one per purpose.
_WARMUP_STREAM, _BUFFER_STREAM, _GUARD_STREAM, _RESTART_STREAM = 2, 3, 4, 5


@dataclass
class Run:
    """The parts of one training run; :func:`build_run` builds them, :meth:`close` releases them."""

    settings: TrainSettings
    run_dir: Path
    env: Any                       # envs.MultiTaskEnv, restarted when a worker crashes (envs.restarts)
    agent: Any                     # agents.MultiTaskSAC
    aggregators: dict[str, Any]    # {"critic": ..., "actor": ...}: one instance per aggregated network
    buffer: Any                    # agents.ReplayBuffer
    guard: DivergenceGuard
    history: EvalHistory
    performance: PerformanceTracker
    steps: StepLoop
    evaluations: Evaluations
    logger: TrainLogger
    checkpoints: Checkpointer
    segments: Segments
    summary: RunSummary
    wall_time_before: float = 0.0  # seconds the run trained before this process (a resumed run's)
    closers: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def env_restarts(self) -> int:
        """Restarts of crashed environment workers (training) and of the evaluation worker."""
        return getattr(self.env, "restarts", 0) + self.evaluations.restarts

    # ------------------------------------------------------------------------------------ state
    def state_dict(self, wall_time_s: float) -> dict[str, Any]:
        """Everything a resume restores (see the module docstring), as ``checkpoint.pt`` holds it."""
        steps = self.steps.state_dict()
        return {
            "version": CHECKPOINT_VERSION,
            "step": steps["step"],
            "learn_from": steps["learn_from"],
            "wall_time_s": wall_time_s,
            "config": self.settings.config,
            "task_names": self.settings.task_names,
            "agent": self.agent.state_dict(),
            "aggregators": {role: aggregator.state_dict() for role, aggregator in self.aggregators.items()},
            "buffer": self.buffer.state_dict(include_data=False),
            "guard": self.guard.state_dict(),
            "segments": self.segments.reach(steps["step"]),
            "env": _env_state(self.env),
            **self.evaluations.state_dict(),   # eval_env, pending_evaluation
            "backend": self.env.backend,
            "rng": rng_state({"warmup": steps["warmup_rng"]}),
            "history": self.history.state_dict(),
            "performance": self.performance.state_dict(),
            "episodes_done": steps["episodes_done"],
        }

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"Checkpoint version {checkpoint.get('version')} is not {CHECKPOINT_VERSION}.")
        if checkpoint["task_names"] != self.settings.task_names:
            raise CheckpointError(f"The checkpoint's tasks {checkpoint['task_names']} differ from "
                                  f"{self.settings.task_names}.")
        self.agent.load_state_dict(checkpoint["agent"])
        for role, aggregator in self.aggregators.items():
            aggregator.load_state_dict(checkpoint["aggregators"][role])
        self.buffer.load_state_dict(checkpoint["buffer"])
        self.checkpoints.restore_buffer(checkpoint.get("buffer_chunks"))
        if "guard" in checkpoint:
            self.guard.load_state_dict(checkpoint["guard"])
        self.segments.load_state_dict(checkpoint.get("segments", []))
        if checkpoint.get("env") is not None:
            try:
                self.env.load_state_dict(checkpoint["env"])   # generators and reward normaliser; episodes restart
            except ValueError as error:   # e.g. env.backend=auto picked another backend on this machine
                log.warning("Could not restore the training environment's state (%s); it starts from its seed.", error)
        rng = checkpoint["rng"]
        set_rng_state(rng)
        self.steps.load_state_dict({"step": checkpoint["step"], "learn_from": checkpoint["learn_from"],
                                    "episodes_done": checkpoint["episodes_done"], "warmup_rng": rng["warmup"]},
                                   buffer_restored=len(self.buffer) > 0)
        self.history.load_state_dict(checkpoint["history"])
        self.performance.load_state_dict(checkpoint["performance"])
        self.wall_time_before = float(checkpoint.get("wall_time_s", 0.0))
        self.evaluations.load_state_dict(checkpoint)   # starts the evaluation it left pending
        log.info("Resumed %s at step %d (%d updates so far; replay buffer %s).", self.run_dir, self.steps.step,
                 self.agent.updates, "restored" if len(self.buffer) else
                 f"re-filled over {self.settings.warmup_steps} steps")

    def close(self) -> None:
        """Stop the evaluation worker, close the environments and the event file (what was built, in reverse)."""
        self.closers.close()


def _env_state(env: Any) -> dict[str, Any] | None:
    """The environment's generators and reward normaliser; None when its workers are gone (after ctrl-C):
    a resume then starts the environment from its seed."""
    try:
        return env.state_dict()
    except Exception:  # noqa: BLE001
        log.warning("Could not read the environment's state; a resume will re-seed it.", exc_info=True)
        return None


def _close_quietly(env: Any) -> None:
    try:
        env.close()
    except Exception:  # noqa: BLE001 - workers may already be gone after ctrl-C
        pass


def build_run(settings: TrainSettings, run_dir: str | Path) -> Run:
    """Build the run of ``settings`` in ``run_dir`` (restored from ``settings.checkpoint`` when resuming).

    The training environment (EnvPool or gymnasium) gets the run's seed for its goals; the evaluation
    worker starts building its own environments (:mod:`mtrl.experiment.evaluation`) while the rest is built.
    """
    import agents
    import envs
    from envs.restarts import with_restarts

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = settings.checkpoint
    resumed_step = None if checkpoint is None else int(checkpoint["step"])
    seed_everything(settings.seed)
    k = settings.num_tasks
    # One aggregator instance per network (they keep separate state); none for a loss that is not aggregated.
    aggregators = {role: settings.make_aggregator() for role in ("critic", "actor") if role in settings.agent.aggregate}
    closers = contextlib.ExitStack()
    try:
        log.info("Building %s (%d tasks, protocol %s, env backend %s) on %s ...", settings.env_name, k,
                 settings.protocol.name, settings.backend, settings.device)
        # A worker crash restarts the environments (envs.restarts); a restart draws fresh generator streams.
        env = with_restarts(lambda restart: envs.make_multitask_env(
            settings.benchmark, settings.protocol, derive_seed(settings.seed, _RESTART_STREAM, restart) if restart
            else settings.seed, goal_seed=settings.seed, backend=settings.backend, task=settings.task,
            vector_strategy=settings.vector_strategy))
        closers.callback(_close_quietly, env)
        if list(env.task_names) != settings.task_names:
            raise RuntimeError(f"The environment's tasks {env.task_names} differ from {settings.task_names}.")
        spec = EvaluationSpec(settings.benchmark, settings.task, settings.protocol, settings.seed, env.obs_dim,
                              env.action_dim, k, settings.agent, settings.eval_episodes)
        evaluations = Evaluations(spec, settings.eval_async)
        closers.callback(evaluations.close)

        agent = agents.MultiTaskSAC(env.obs_dim, env.action_dim, k, settings.agent,
                                    critic_aggregator=aggregators.get("critic"),
                                    actor_aggregator=aggregators.get("actor"), device=settings.device, seed=settings.seed)
        buffer = agents.ReplayBuffer(k, env.obs_dim, env.action_dim, settings.buffer_size, device=settings.device,
                                     seed=derive_seed(settings.seed, _BUFFER_STREAM))
        guard = DivergenceGuard(agent, aggregators, settings.task_names, settings.on_nonfinite, settings.q_bound,
                                derive_seed(settings.seed, _GUARD_STREAM))
        history = EvalHistory(settings.task_names)
        performance = PerformanceTracker(settings.performance_source, settings.stl_reference,
                                         settings.train_success_window, settings.device)
        updates, episodes = UpdateAccumulator(), EpisodeWindow(k)
        steps = StepLoop(env, agent, buffer, guard, performance, updates, episodes, settings.warmup_steps,
                         settings.on_nonfinite, derive_seed(settings.seed, _WARMUP_STREAM))
        # On resume, TensorBoard drops what the stopped run logged after its checkpoint (steps > step).
        logger = TrainLogger(run_dir, settings.task_names, updates, episodes,
                             purge_step=None if resumed_step is None else resumed_step + 1)
        closers.callback(logger.close)
        segments = Segments()
        run = Run(settings, run_dir, env, agent, aggregators, buffer, guard, history, performance, steps, evaluations,
                  logger, Checkpointer(run_dir, buffer if settings.checkpoint_buffer else None, resumed_step),
                  segments, RunSummary(run_dir, settings, history, segments, env.backend), closers=closers)
        if checkpoint is not None:
            run.load_state_dict(checkpoint)
        settings.checkpoint = None   # free the loaded copy
        segments.begin(steps.step)
        return run
    except BaseException:
        closers.close()
        raise
