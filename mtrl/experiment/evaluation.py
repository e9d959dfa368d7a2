"""The run's evaluations: the deterministic policy of one step, on the official Meta-World environments.

An evaluation runs ``eval_episodes`` episodes per task (:func:`envs.run_episodes`) with ``tanh(μ)`` of a
copy of the actor taken at the evaluation step, on the CPU, and gives each task's success rate and mean
episode return (:class:`EvaluationResult`). Its environment (:func:`envs.make_eval_env`, the run's goals,
its own generator streams) carries its generators from one evaluation to the next; their state goes into
every checkpoint, so a resumed run evaluates on the episodes the stopped one would have.

:class:`Evaluations` runs them one at a time, inline (``eval_async=false``: at once, in the training
process) or, by default, in a worker process of its own: stepping Meta-World is Python work, and on a
thread it would hold the interpreter lock against the training loop, whose update calls many small
operators. The worker starts with the run (building its environments while training starts), takes one
:class:`EvaluationRequest` at a time and answers with its result; both routes run the same
:class:`Evaluator` on the CPU, so they give the same numbers. A worker that dies is started again and
the evaluation run again (counted with the environment restarts); it dies with the training process.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from torch import Tensor

__all__ = ["EvaluationSpec", "EvaluationRequest", "EvaluationResult", "Evaluator", "Evaluations",
           "EvaluationWorkerError"]

_WORKER_ATTEMPTS = 3
"""Starts of the worker for one evaluation before the run gives up on it."""


@dataclass(frozen=True)
class EvaluationSpec:
    """What an evaluation environment and policy are built from (picklable: the worker builds its own)."""

    benchmark: str
    task: Any                     # None, one task name (mt1) or a task subset
    protocol: Any                 # envs.ProtocolConfig
    seed: int                     # the run's seed: its goals; the evaluation's own generator streams
    obs_dim: int
    action_dim: int
    num_tasks: int
    agent: Any                    # agents.SACConfig: the actor's shape
    episodes: int                 # per task and evaluation


@dataclass(frozen=True)
class EvaluationRequest:
    """One evaluation to run."""

    step: int
    """The training step whose policy it evaluates (its TensorBoard step)."""
    actor: dict[str, Tensor]
    """The actor's parameters at that step, on the CPU."""
    env_state: dict[str, Any] | None
    """The evaluation environment's generators at its start (None: from the run's seed)."""


@dataclass(frozen=True)
class EvaluationResult:
    step: int
    success: dict[str, float]
    """Success rate per task."""
    returns: dict[str, float]
    """Mean episode return (raw rewards) per task."""
    env_state: dict[str, Any]
    """The evaluation environment's generators after it: the next evaluation starts there."""


class EvaluationWorkerError(RuntimeError):
    """The evaluation worker kept dying, or raised (the message holds its traceback)."""


class Evaluator:
    """The evaluation environment and a CPU agent whose actor takes each request's parameters."""

    def __init__(self, spec: EvaluationSpec) -> None:
        import agents
        import envs
        import torch

        self.spec = spec
        self.env = envs.make_eval_env(spec.benchmark, spec.protocol, spec.seed, task=spec.task, vector_strategy="sync")
        try:
            # Only the actor is used: no aggregator, eager, on the CPU (the same numbers in both routes). Its
            # initial weights are overwritten by every request: drawing them leaves the run's generator alone.
            config = dataclasses.replace(spec.agent, aggregate=(), compile="none")
            with torch.random.fork_rng(devices=[]):
                self.agent = agents.MultiTaskSAC(spec.obs_dim, spec.action_dim, spec.num_tasks, config, device="cpu")
        except BaseException:
            self.env.close()
            raise

    def __call__(self, request: EvaluationRequest) -> EvaluationResult:
        import envs

        if request.env_state is not None:
            self.env.load_state_dict(request.env_state)
        self.agent.actor.load_state_dict(request.actor)
        records = envs.run_episodes(lambda obs: self.agent.act(obs, deterministic=True), self.env, self.spec.episodes)
        k, episodes = self.env.num_tasks, self.spec.episodes
        success, returns = np.zeros(k), np.zeros(k)
        for record in records:
            success[record.task] += record.success
            returns[record.task] += record.episode_return
        names = self.env.task_names
        return EvaluationResult(request.step, dict(zip(names, (success / episodes).tolist())),
                                dict(zip(names, (returns / episodes).tolist())), self.env.state_dict())

    def close(self) -> None:
        self.env.close()


@dataclass
class PendingEvaluation:
    """An evaluation started and not yet collected."""

    request: EvaluationRequest
    result: EvaluationResult | None = None   # known at once inline; from the worker when collected


class Evaluations:
    """The run's evaluations, at most one pending: inline (``asynchronous=False``) or in a worker process.

    :meth:`start` hands over an evaluation, :meth:`collect` waits for it; a resumed run starts the one its
    checkpoint left pending again (:meth:`state_dict`, :meth:`load_state_dict`).
    """

    def __init__(self, spec: EvaluationSpec, asynchronous: bool) -> None:
        self.spec = spec
        self.env_state: dict[str, Any] | None = None
        """The evaluation environment's generators after the last collected evaluation (None: from the seed)."""
        self.pending: PendingEvaluation | None = None
        self.restarts = 0
        """Times the worker died and was started again."""
        self._worker = _Worker(spec) if asynchronous else None
        self._evaluator = None if asynchronous else Evaluator(spec)

    def start(self, step: int, actor: dict[str, Tensor]) -> None:
        """Evaluate the actor parameters ``actor`` (host copies) of ``step``, from the environment's current state."""
        assert self.pending is None, "collect the pending evaluation first"
        self._start(EvaluationRequest(step, actor, self.env_state))

    def _start(self, request: EvaluationRequest) -> None:
        self.pending = PendingEvaluation(request)
        if self._evaluator is not None:
            self.pending.result = self._evaluator(request)
        else:
            assert self._worker is not None
            self._worker.send(request)

    def collect(self) -> EvaluationResult:
        """Wait for the pending evaluation; the next one starts from the environment state it left."""
        assert self.pending is not None
        pending = self.pending
        attempts = 1
        while pending.result is None:
            assert self._worker is not None
            try:
                pending.result = self._worker.receive()
            except _WorkerDied as died:
                if attempts == _WORKER_ATTEMPTS:
                    raise EvaluationWorkerError(f"the evaluation worker died {attempts} times during the evaluation "
                                                f"of step {pending.request.step} ({died}).") from died
                attempts += 1
                self.restarts += 1
                self._worker.send(pending.request)   # a fresh worker, the same evaluation
        self.pending, self.env_state = None, pending.result.env_state
        return pending.result

    def wait_ready(self) -> None:
        """Wait until the worker has built its environments (inline: at once); for timing what follows."""
        if self._worker is not None:
            self._worker.wait_ready()

    def state_dict(self) -> dict[str, Any]:
        """The environment's generators (where the pending evaluation, if any, starts) and the pending evaluation
        (a resume runs it again, with the same result)."""
        pending = self.pending
        return {"eval_env": self.env_state,
                "pending_evaluation": None if pending is None else {
                    "step": pending.request.step, "actor": pending.request.actor,
                    "eval_env": pending.request.env_state}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` and start the evaluation it left pending."""
        self.env_state = state.get("eval_env")
        saved = state.get("pending_evaluation")
        if saved is not None:
            self._start(EvaluationRequest(int(saved["step"]), saved["actor"], saved["eval_env"]))

    def cancel(self) -> None:
        """Stop the evaluation in flight, ending the worker (it stays :attr:`pending`, for a checkpoint)."""
        if self._worker is not None:
            self._worker.stop()

    def close(self) -> None:
        self.cancel()
        if self._evaluator is not None:
            self._evaluator.close()


# ------------------------------------------------------------------------------------- the worker
class _WorkerDied(Exception):
    """The worker process ended (or its pipe broke) before answering."""


class _Worker:
    """One Python process running an :class:`Evaluator`; requests and results cross its stdin/stdout as pickles.

    Started at once (its environments take a while to build) and again after it died; :meth:`send` does not
    wait for the worker (a thread writes the request), :meth:`receive` does.
    """

    def __init__(self, spec: EvaluationSpec) -> None:
        self.spec = spec
        self.process: subprocess.Popen | None = None
        self.ready = False
        """The worker has built its environments (it says so once, before its first result)."""
        self._sender: threading.Thread | None = None
        self._send_error: BaseException | None = None
        self._launch()

    def _launch(self) -> None:
        # The parent's import path, so that the worker imports the same code (an editable install, a PYTHONPATH).
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path or os.getcwd() for path in sys.path)}
        self.process = subprocess.Popen([sys.executable, "-c", f"from {__name__} import _serve; _serve()"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment)
        self.ready = False
        self._write(pickle.dumps(self.spec))

    def send(self, request: EvaluationRequest) -> None:
        if self.process is None or self.process.poll() is not None:
            self._launch()
        self._write(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))

    def _write(self, payload: bytes) -> None:
        if self._sender is not None:
            self._sender.join()
        process = self.process
        assert process is not None and process.stdin is not None

        def write() -> None:
            try:
                process.stdin.write(payload)   # type: ignore[union-attr]
                process.stdin.flush()          # type: ignore[union-attr]
            except (OSError, ValueError) as error:   # the worker is gone: receive() says so
                self._send_error = error

        self._send_error = None
        self._sender = threading.Thread(target=write, name="mtrl-eval-send", daemon=True)
        self._sender.start()

    def wait_ready(self) -> None:
        if not self.ready:
            self._read()

    def receive(self) -> EvaluationResult:
        self.wait_ready()
        return self._read()

    def _read(self) -> Any:
        process = self.process
        assert process is not None and process.stdout is not None
        try:
            kind, value = pickle.load(process.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as error:
            self.stop()
            raise _WorkerDied(f"exit code {process.returncode}" if process.returncode is not None
                              else type(error).__name__) from error
        if kind == "error":
            raise EvaluationWorkerError(f"the evaluation worker failed:\n{value}")
        self.ready = True
        return value

    def stop(self) -> None:
        """End the worker at once (an evaluation in flight is dropped)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()   # type: ignore[union-attr]
            except OSError:
                pass
        if self._sender is not None:
            self._sender.join()
            self._sender = None


def _serve() -> None:
    """The worker's main: build an :class:`Evaluator` from the spec on stdin, then answer requests until EOF."""
    import warnings

    warnings.simplefilter("ignore")   # the training process has shown its warnings
    for signum in (signal.SIGINT, signal.SIGTERM):   # the training process decides when this one stops
        signal.signal(signum, signal.SIG_IGN)
    _die_with_parent()
    # Results go through the original stdout; anything printed goes to stderr.
    results: BinaryIO = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer

    import torch

    torch.set_num_threads(1)
    spec = pickle.load(requests)
    try:
        evaluator = Evaluator(spec)
        answer: tuple[str, Any] = ("ready", None)
    except Exception:  # noqa: BLE001 - reported to the training process, which raises it
        answer = ("error", traceback.format_exc())
    pickle.dump(answer, results)
    results.flush()
    if answer[0] == "error":
        return
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        try:
            answer = ("result", evaluator(request))
        except Exception:  # noqa: BLE001 - reported to the training process, which raises it
            answer = ("error", traceback.format_exc())
        pickle.dump(answer, results, protocol=pickle.HIGHEST_PROTOCOL)
        results.flush()


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (kill -9 included)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass   # elsewhere the worker ends at the next read, when its stdin closes
