"""Evaluation off the critical path: a copy of the policy at the evaluation step, evaluated in a worker process,
recorded at a fixed step and logged at its own; the same numbers as inline; an evaluation in flight at ctrl-C is
re-run on resume; a worker that dies is started again; env.backend is checked with the config."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import agents
import envs
from mtrl.experiment import TrainingInterrupted, run
from mtrl.experiment.checkpoint import load_checkpoint

MT1 = ["env=mt1", "agg=ls"]


@pytest.mark.slow
def test_async_evaluation_records_what_inline_evaluation_records(tmp_path: Path, config, tensorboard_scalars) -> None:
    inline = run(config(*MT1, "eval_async=false"), run_dir=tmp_path / "inline")
    threaded = run(config(*MT1, "eval_async=true"), run_dir=tmp_path / "async")
    assert [record["step"] for record in threaded["evaluations"]] == [6, 12]
    # The same numbers, returns included: the worker evaluated the actor of step 6 and 12, not a later one.
    assert threaded["evaluations"] == inline["evaluations"]
    assert threaded["best"] == inline["best"] and threaded["final"] == inline["final"]
    returns = [record["return_per_task"]["reach-v3"] for record in threaded["evaluations"]]
    assert returns[0] != returns[1]   # the policy changed between the two evaluations
    logged = tensorboard_scalars(tmp_path / "async")
    assert [step for step, _ in logged["eval/success_mean"]] == [6, 12]
    assert [value for _, value in logged["eval/return/reach-v3"]] == pytest.approx(returns)
    assert threaded["env_backend"] == ("envpool" if envs.envpool_available() else "gymnasium")


def interrupt_at_update(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    original = agents.MultiTaskSAC.update
    calls = {"n": 0}

    def update(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(agents.MultiTaskSAC, "update", update)


@pytest.mark.slow
def test_evaluation_in_flight_at_ctrl_c_is_rerun_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           config) -> None:
    reference = run(config(*MT1, "eval_async=false"), run_dir=tmp_path / "reference")["evaluations"]
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        interrupt_at_update(patch, call=3)   # step index 6: after the evaluation of step 6 started
        with pytest.raises(TrainingInterrupted):
            run(config(*MT1, "eval_async=true"), run_dir=stopped)
    checkpoint = load_checkpoint(stopped / "checkpoint.pt")
    assert checkpoint["step"] == 7 and checkpoint["pending_evaluation"]["step"] == 6
    assert checkpoint["history"]["history"] == []          # not collected, so not recorded

    resumed = run(config(f"resume={stopped}"))
    assert [record["step"] for record in resumed["evaluations"]] == [6, 12]
    assert resumed["evaluations"][0] == reference[0]       # the saved actor of step 6, evaluated again


@pytest.mark.slow
def test_a_dead_evaluation_worker_is_started_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config) -> None:
    """SIGKILL the worker while it evaluates step 6: a new worker runs the same evaluation (same numbers as
    inline), counted among the restarts."""
    from mtrl.experiment import evaluation

    reference = run(config(*MT1, "eval_async=false"), run_dir=tmp_path / "reference")["evaluations"]
    original, kills = evaluation._Worker.receive, []

    def receive(self):
        if not kills:
            kills.append(self.process.pid)
            os.kill(self.process.pid, signal.SIGKILL)
        return original(self)

    monkeypatch.setattr(evaluation._Worker, "receive", receive)
    summary = run(config(*MT1, "eval_async=true"), run_dir=tmp_path / "run")
    assert len(kills) == 1 and summary["env_restarts"] == 1
    assert summary["evaluations"] == reference


def test_bad_env_backend_is_refused_before_any_env(config, no_envs) -> None:
    from mtrl.experiment import ConfigError, prepare

    with pytest.raises(ConfigError, match="env.backend should be one of auto, envpool, gymnasium"):
        prepare(config("env.backend=cuda"))
    with pytest.raises(ConfigError, match="v2 reward" if envs.envpool_available() else "does not import"):
        prepare(config("env.backend=envpool", "protocol.reward_function_version=v1"))
    assert prepare(config("env.backend=auto", "protocol=mtrl")).backend == "gymnasium"   # one goal per task
