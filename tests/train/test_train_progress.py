"""What a user sees while a run goes: the progress bar's phase, its rate and ETA over training steps only, the last
evaluation; the log line where the warm-up ends; throughput tags that keep warm-up and training steps apart."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import pytest

import agents
from mtrl.experiment import run
from mtrl.experiment.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_count_training_steps_only() -> None:
    clock = FakeClock()
    progress = Progress(total=100, initial=0, learn_from=10, description="run", enabled=False, clock=clock,
                        refresh_s=0.0)
    for step in range(1, 11):          # warm-up: 100 steps/s
        clock.now += 0.01
        progress.advance(step, updating=False)
    fields = progress.fields()
    assert fields["phase"] == "warm-up" and fields["rate"] == pytest.approx(100.0)
    assert fields["eta"] is None and fields["success"] is None   # no training step yet: no ETA
    for step in range(11, 31):         # training: 10 steps/s, whatever the warm-up's speed
        clock.now += 0.1
        progress.advance(step, updating=True)
    fields = progress.fields()
    assert fields["phase"] == "training" and fields["rate"] == pytest.approx(10.0)
    assert fields["eta"] == pytest.approx((100 - 30) / 10.0)
    assert "training, 10 steps/s, ETA 00:07" in progress.text()

    progress.evaluation(running=True)
    assert progress.fields()["phase"] == "training + eval"
    progress.set_phase("evaluating")
    progress.evaluated(0.25, 0.5)
    assert progress.fields()["phase"] == "evaluating" and progress.fields()["success"] == (0.25, 0.5)
    assert progress.text().endswith("eval 0.25 (best 0.50)")


def test_training_rate_follows_the_last_window_of_training() -> None:
    clock = FakeClock()
    progress = Progress(total=10_000, initial=0, learn_from=0, description="run", enabled=False, clock=clock,
                        refresh_s=1.0)
    for step in range(1, 1001):        # 5 steps/s for 200 s, then 20 steps/s for 200 s
        clock.now += 0.2
        progress.advance(step, updating=True)
    for step in range(1001, 5001):
        clock.now += 0.05
        progress.advance(step, updating=True)
    assert progress.rate(True) == pytest.approx(20.0, rel=0.02)   # over the last window_s = 120 s
    assert progress.eta() == pytest.approx(5000 / 20.0, rel=0.02)


def test_a_resumed_run_in_its_refill_has_no_eta_until_it_trains() -> None:
    clock = FakeClock()
    progress = Progress(total=100, initial=50, learn_from=60, description="run", enabled=False, clock=clock,
                        refresh_s=0.0)
    for step in range(51, 56):
        clock.now += 0.01
        progress.advance(step, updating=False)
    assert progress.fields()["phase"] == "warm-up" and progress.eta() is None
    for step in range(56, 61):
        clock.now += 0.01
        progress.advance(step, updating=False)
    for step in range(61, 71):
        clock.now += 0.1
        progress.advance(step, updating=True)
    assert progress.eta() == pytest.approx(30 / 10.0)


def test_the_bar_shows_phase_rate_and_last_evaluation(tmp_path: Path) -> None:
    output = io.StringIO()
    clock = FakeClock()
    progress = Progress(total=20, initial=0, learn_from=5, description="mt1/ls/seed0", enabled=True, clock=clock,
                        refresh_s=0.0, file=output)
    for step in range(1, 21):
        clock.now += 0.01 if step <= 5 else 0.5
        progress.advance(step, updating=step > 5)
        if step == 10:
            progress.evaluated(0.3, 0.3)
    progress.close()
    text = output.getvalue()
    assert "mt1/ls/seed0" in text and "warm-up, 100 steps/s" in text
    assert "training, 2 steps/s, ETA 00:05, eval 0.30 (best 0.30)" in text


@pytest.mark.slow
def test_warm_up_end_is_logged_and_throughput_keeps_phases_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture, config,
                                                                  tensorboard_scalars) -> None:
    """Every update sleeps 0.1 s, so a training step takes at least that: the training throughput of the window
    3..6 (warm-up step 4, training steps 5 and 6) is at most 10 steps/s only if the fast warm-up step is left out."""
    original = agents.MultiTaskSAC.update

    def slow_update(self, *args, **kwargs):
        time.sleep(0.1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(agents.MultiTaskSAC, "update", slow_update)
    with caplog.at_level(logging.INFO, logger="mtrl.train"):
        run(config("env=mt1", "agent.batch_size=8", "agg=ls"), run_dir=tmp_path)
    assert "step 4: warm-up done (4 steps of random actions filled the replay buffer); updates begin" in caplog.text
    logged = tensorboard_scalars(tmp_path)
    training = dict(logged["perf/env_steps_per_s"])
    assert sorted(training) == [6, 9, 12] and all(0 < rate <= 10.0 for rate in training.values())
    assert sorted(dict(logged["perf/warmup_env_steps_per_s"])) == [3, 6]
    assert all(0 < rate <= 10.0 for _, rate in logged["perf/updates_per_s"])
