"""ctrl-C saves a checkpoint; `resume=<run dir>` continues the run; resuming is deterministic on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import agents
from mtrl.experiment import ConfigError, TrainingInterrupted, run
from mtrl.experiment.checkpoint import load_checkpoint



def interrupt_at_update(monkeypatch: pytest.MonkeyPatch, call: int, signum: int = signal.SIGINT) -> None:
    """Send ourselves ``signum`` (SIGINT: ctrl-C) during the agent's ``call``-th update."""
    original = agents.MultiTaskSAC.update
    calls = {"n": 0}

    def update(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(agents.MultiTaskSAC, "update", update)


@pytest.mark.slow
def test_interrupt_then_resume_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config,
                                     tensorboard_scalars) -> None:
    first = tmp_path / "run"
    # Warm-up 4 steps; the 3rd update happens at step index 6, so the run stops after 7 steps.
    with monkeypatch.context() as patch:
        interrupt_at_update(patch, call=3)
        with pytest.raises(TrainingInterrupted) as stopped:
            run(config("agg=rlw"), run_dir=first)
    assert stopped.value.step == 7
    checkpoint = load_checkpoint(first / "checkpoint.pt")
    assert checkpoint["step"] == 7 and checkpoint["agent"]["updates"] == 3
    assert json.loads((first / "summary.json").read_text())["finished"] is False

    # Resume two copies of the stopped run. Another agg on the command line is refused (it defines the
    # experiment), the run's own is fine (a requeued sweep job types it again).
    with pytest.raises(ConfigError, match="agg would change agg.name from the run's 'rlw' to 'ls'"):
        run(config(f"resume={first}", "agg=ls"), overrides=[f"resume={first}", "agg=ls"])
    copies = []
    for name in ("a", "b"):
        copy = tmp_path / name
        shutil.copytree(first, copy)
        summary = run(config(f"resume={copy}", "agg=rlw"), overrides=[f"resume={copy}", "agg=rlw"])
        assert summary["steps"] == 12 and summary["agg"] == "rlw" and summary["finished"]
        # The buffer came back from its chunks: learning goes on at once, one update per step 7 ... 11.
        assert summary["updates"] == 3 + 5
        assert [(segment["start"], segment["end"]) for segment in summary["segments"]] == [(0, 7), (7, 12)]
        copies.append(copy)

    # The curves continue in the same directory: evaluations before and after the stop, one event stream.
    logged = tensorboard_scalars(copies[0])
    assert [step for step, _ in logged["eval/success_mean"]] == [6, 12]
    # ctrl-C at step 7 flushed the partial window 7 (kept: the checkpoint is at 7). Throughput: training steps
    # (from step 5 on) apart from the warm-up's 4, which the window 3..6 shares with training steps.
    assert [step for step, _ in logged["perf/env_steps_per_s"]] == [6, 7, 9, 12]
    assert [step for step, _ in logged["perf/warmup_env_steps_per_s"]] == [3, 6]
    evaluations = json.loads((copies[0] / "summary.json").read_text())["evaluations"]
    assert [record["step"] for record in evaluations] == [6, 12]

    # Same checkpoint, same steps: identical parameters and optimizer state.
    state_a = load_checkpoint(copies[0] / "checkpoint.pt")["agent"]
    state_b = load_checkpoint(copies[1] / "checkpoint.pt")["agent"]
    for network in ("actor", "critic", "critic_target"):
        for key, value in state_a[network].items():
            assert torch.equal(value, state_b[network][key]), f"{network}.{key}"
    assert torch.equal(state_a["log_alpha"], state_b["log_alpha"])
    assert not torch.equal(state_a["log_alpha"], checkpoint["agent"]["log_alpha"])  # it did train on


@pytest.mark.slow
def test_resume_is_the_same_experiment(tmp_path: Path, config, tensorboard_scalars) -> None:
    """`resume=<dir>` alone keeps every saved value (train.yaml's defaults do not creep back); a typed key extends."""
    run(config("env=mt1", "agent.batch_size=8", "agg=ls", "steps=6", "log_every=2", "torch_threads=1",
               "checkpoint_buffer=false"), run_dir=tmp_path)
    torch.set_num_threads(2)
    # Composed with other values for steps / log_every / torch_threads / checkpoint_buffer, none of them typed:
    summary = run(config(f"resume={tmp_path}", "steps=500", "log_every=1000", "checkpoint_buffer=true"),
                  overrides=[f"resume={tmp_path}"])
    assert summary["steps"] == 6 and summary["config"]["log_every"] == 2 and torch.get_num_threads() == 1
    assert summary["config"]["checkpoint_buffer"] is False
    # Typed on the command line: the run goes on to 9 steps, still logging every 2.
    summary = run(config(f"resume={tmp_path}", "steps=9"), overrides=[f"resume={tmp_path}", "steps=9"])
    assert summary["steps"] == 9 and summary["config"]["steps"] == 9
    # (The resume that had nothing left to do wrote no checkpoint, so no segment of its own.)
    assert [(segment["start"], segment["end"]) for segment in summary["segments"]] == [(0, 6), (6, 9)]
    # No buffer saved: 4 steps refill it before updates resume (steps 10.. would be the first), so the steps
    # after the resume count as warm-up steps in the throughput.
    logged = tensorboard_scalars(tmp_path)
    assert [step for step, _ in logged["perf/env_steps_per_s"]] == [6]
    assert [step for step, _ in logged["perf/warmup_env_steps_per_s"]] == [2, 4, 8, 9]
    assert summary["updates"] == 6 - 4


@pytest.mark.slow
def test_resume_with_saved_buffer_learns_at_once(tmp_path: Path, config, tensorboard_scalars) -> None:
    run(config("agg=ls", "steps=6"), run_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "buffer").iterdir()) == ["rows_000000000000_000000000006.pt"]
    summary = run(config(f"resume={tmp_path}", "steps=9"), overrides=[f"resume={tmp_path}", "steps=9"])
    assert summary["steps"] == 9 and summary["updates"] == (6 - 4) + 3
    # The evaluation logged at the checkpoint's own step survives the resume.
    assert [step for step, _ in tensorboard_scalars(tmp_path)["eval/success_mean"]] == [6, 9]
    # The second checkpoint wrote only the 3 new rows; the first chunk is still needed.
    assert sorted(p.name for p in (tmp_path / "buffer").iterdir()) == [
        "rows_000000000000_000000000006.pt", "rows_000000000006_000000000009.pt"]


def test_sigterm_checkpoints_like_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config,
                                        tensorboard_scalars) -> None:
    """A scheduler's SIGTERM before preemption: the step finishes, the partial log window and a checkpoint are written."""
    interrupt_at_update(monkeypatch, call=2, signum=signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stopped:
        run(config("env=mt1", "agent.batch_size=8", "agg=ls", "log_every=100"), run_dir=tmp_path)
    assert stopped.value.step == 6 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 6
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handler is given back
    assert [step for step, _ in tensorboard_scalars(tmp_path)["loss/critic/reach-v3"]] == [6]
