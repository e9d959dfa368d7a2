"""Evaluation off the critical path: a snapshot of the policy at the evaluation step, evaluated on a thread,
recorded at a fixed step and logged at its own; an evaluation in flight at ctrl-C is re-run on resume;
env.backend is checked with the config."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import envs
from mtrl.training import TrainingInterrupted, run
from mtrl.training.checkpoint import load_checkpoint


def policy_fingerprint(policy, env, episodes, cancelled=None, block: bool = False) -> dict[str, float]:
    """Stands for envs.evaluate: a per-task number that changes with every parameter update of the actor.
    ``block``: wait until the run cancels the evaluation (it is still in flight at ctrl-C)."""
    while block:
        if cancelled():
            raise envs.EvaluationCancelled
        time.sleep(0.01)
    time.sleep(0.05)   # long enough for training to go on meanwhile
    obs = np.linspace(-1, 1, env.num_tasks * env.obs_dim, dtype=np.float32).reshape(env.num_tasks, env.obs_dim)
    action = policy(obs)
    return {name: float(np.abs(action[i]).mean()) for i, name in enumerate(env.task_names)}


def evaluations(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "summary.json").read_text())["evaluations"]


@pytest.mark.slow
def test_async_evaluation_records_what_inline_evaluation_records(tmp_path: Path, monkeypatch, config,
                                                                  tensorboard_scalars) -> None:
    monkeypatch.setattr(envs, "evaluate", policy_fingerprint)
    inline = run(config("env=mt1", "agg=ls", "eval_async=false"), run_dir=tmp_path / "inline")
    threaded = run(config("env=mt1", "agg=ls", "eval_async=true"), run_dir=tmp_path / "async")
    assert [record["step"] for record in threaded["evaluations"]] == [6, 12]
    # The same numbers: the thread evaluated the actor of step 6 and 12, not a later one.
    assert threaded["evaluations"] == inline["evaluations"]
    assert threaded["best"] == inline["best"] and threaded["final"] == inline["final"]
    assert evaluations(tmp_path / "async")[0]["per_task"] != evaluations(tmp_path / "async")[1]["per_task"]
    logged = tensorboard_scalars(tmp_path / "async")
    assert [step for step, _ in logged["eval/success_mean"]] == [6, 12]
    assert threaded["env_backend"] == ("envpool" if envs.envpool_available() else "gymnasium")


@pytest.mark.slow
def test_evaluation_in_flight_at_ctrl_c_is_rerun_on_resume(tmp_path: Path, monkeypatch, config) -> None:
    import os
    import signal

    import agents

    monkeypatch.setattr(envs, "evaluate", policy_fingerprint)
    reference = run(config("env=mt1", "agg=ls", "eval_async=false"), run_dir=tmp_path / "reference")["evaluations"]

    calls = {"evaluate": 0, "update": 0}

    def first_blocks(*args, **kwargs):
        calls["evaluate"] += 1
        return policy_fingerprint(*args, **kwargs, block=calls["evaluate"] == 1)

    original_update = agents.MultiTaskSAC.update

    def update(self, *args, **kwargs):
        calls["update"] += 1
        if calls["update"] == 3:        # step index 6: after the evaluation of step 6 started
            os.kill(os.getpid(), signal.SIGINT)
        return original_update(self, *args, **kwargs)

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(envs, "evaluate", first_blocks)
        patch.setattr(agents.MultiTaskSAC, "update", update)
        with pytest.raises(TrainingInterrupted):
            run(config("env=mt1", "agg=ls", "eval_async=true"), run_dir=stopped)
    checkpoint = load_checkpoint(stopped / "checkpoint.pt")
    assert checkpoint["step"] == 7 and checkpoint["pending_evaluation"]["step"] == 6
    assert checkpoint["history"]["history"] == []          # not finished, so not recorded

    resumed = run(config(f"resume={stopped}"))
    assert [record["step"] for record in resumed["evaluations"]] == [6, 12]
    assert resumed["evaluations"][0] == reference[0]       # the saved actor of step 6, evaluated again


def test_bad_env_backend_is_refused_before_any_env(config, no_envs) -> None:
    from mtrl.training import ConfigError, prepare

    with pytest.raises(ConfigError, match="env.backend should be one of auto, envpool, gymnasium"):
        prepare(config("env.backend=cuda"))
    with pytest.raises(ConfigError, match="v2 reward" if envs.envpool_available() else "does not import"):
        prepare(config("env.backend=envpool", "protocol.reward_function_version=v1"))
    assert prepare(config("env.backend=auto", "protocol=mtrl")).backend == "gymnasium"   # one goal per task
