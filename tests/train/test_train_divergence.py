"""The divergence guard: a NaN injected into a short run stops it naming task, network and step, keeps the last
good checkpoint and says how to resume; on_nonfinite=skip drops the bad update and goes on. Also: the last,
partial log window is written."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import agents
from mtrl.experiment import TrainingDiverged, run
from mtrl.experiment.checkpoint import load_checkpoint

MT1 = ["env=mt1", "agent.batch_size=8", "agg=ls"]


def poison_targets(monkeypatch: pytest.MonkeyPatch, updates: set[int]) -> None:
    """The critic's Bellman targets are NaN at the agent's update numbers ``updates`` (1-based)."""
    original = agents.MultiTaskSAC.compute_target_q

    def compute_target_q(self, *args, **kwargs):
        target = original(self, *args, **kwargs)
        return target * math.nan if self.updates in updates else target

    monkeypatch.setattr(agents.MultiTaskSAC, "compute_target_q", compute_target_q)


@pytest.mark.slow
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              config) -> None:
    # steps 12, warm-up 4, checkpoint at 6, logs every 3: update 4 runs at step index 7; caught at the log step 9.
    with monkeypatch.context() as patch:
        poison_targets(patch, updates=set(range(4, 100)))
        with pytest.raises(TrainingDiverged) as error:
            run(config(*MT1), run_dir=tmp_path)
    message = str(error.value)
    # Found inside update 4 (step 8) by aggregators that check on the host, else at the log step 9.
    assert re.match(r"step [89]: .*critic.*non-finite.*for task\(s\) reach-v3", message, re.IGNORECASE), message
    assert f"{tmp_path / 'checkpoint.pt'} (step 6) is the last good checkpoint" in message
    assert f"python -m mtrl.train resume={tmp_path} agent.max_grad_norm=1.0" in message
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["step"] == 6
    assert all(torch.isfinite(value).all() for value in checkpoint["agent"]["critic"].values())
    assert json.loads((tmp_path / "summary.json").read_text())["finished"] is False

    # The hint works: resume from the good checkpoint with a clipped gradient, no NaN this time.
    summary = run(config(f"resume={tmp_path}", "agent.max_grad_norm=1.0"),
                  overrides=[f"resume={tmp_path}", "agent.max_grad_norm=1.0"])
    assert summary["finished"] and summary["steps"] == 12 and summary["config"]["agent"]["max_grad_norm"] == 1.0


@pytest.mark.slow
def test_q_values_beyond_the_bound_stop_the_run(tmp_path: Path, config) -> None:
    with pytest.raises(TrainingDiverged, match=r"step 6: critic Q-values beyond q_bound=1e-09 .* for task\(s\) reach-v3"):
        run(config(*MT1, "q_bound=1e-9", "log_every=100"), run_dir=tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()   # the first checkpoint (step 6) was refused


@pytest.mark.slow
@pytest.mark.parametrize("caught_by", ["agent.aggregate=[critic,actor]", "agent.aggregate=[actor]"])
def test_skip_drops_the_bad_update_and_the_last_window_is_logged(caught_by: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, config,
                                                                  tensorboard_scalars) -> None:
    """The bad critic step is dropped either where the aggregator refuses its losses or, for a critic that is
    not aggregated, by the guard's check of the gradients before the optimizer step."""
    # log_every > steps: everything logged comes from the final flush of the partial window.
    poison_targets(monkeypatch, updates={3})
    summary = run(config(*MT1, caught_by, "on_nonfinite=skip", "log_every=1000"), run_dir=tmp_path)
    assert summary["finished"] and summary["skipped_updates"] == 1      # the critic step of update 3
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    for network in ("actor", "critic", "critic_target"):
        assert all(torch.isfinite(value).all() for value in checkpoint["agent"][network].values()), network
    logged = tensorboard_scalars(tmp_path)
    assert logged["train/skipped_updates"] == [(12, 1.0)]
    assert [step for step, _ in logged["perf/env_steps_per_s"]] == [12]
    assert [step for step, _ in logged["loss/actor/reach-v3"]] == [12]
    assert logged["perf/env_restarts"] == [(12, 0.0)]
