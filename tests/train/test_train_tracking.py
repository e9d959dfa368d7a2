"""The trainer's bookkeeping: Δm from success rates, best/final success, update accumulation, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mtrl.experiment.checkpoint import atomic_save, atomic_write_json
from mtrl.experiment.config import merge_resumed_config
from mtrl.validation import ConfigError
from mtrl.experiment.logger import UpdateAccumulator
from mtrl.experiment.tracking import EvalHistory, PerformanceTracker


def test_delta_m_from_evaluation_success() -> None:
    tracker = PerformanceTracker("eval", np.array([1.0, 0.5, 0.8]), window=10, device=torch.device("cpu"))
    assert tracker.current().tolist() == [0.0, 0.0, 0.0]            # before the first evaluation: Δm = 0
    tracker.on_episode(0, True)                                     # training episodes do not count here
    assert tracker.current().tolist() == [0.0, 0.0, 0.0]
    tracker.on_evaluation(np.array([0.5, 0.5, 1.0]))
    # Δm_i = 100 (s_STL - s) / s_STL
    assert tracker.current().tolist() == pytest.approx([50.0, 0.0, -25.0])
    assert tracker.current().dtype == torch.float32
    tracker.on_evaluation(np.array([1.0, 0.25, 0.8]))               # refreshed after every evaluation
    assert tracker.current().tolist() == pytest.approx([0.0, 50.0, 0.0])


def test_delta_m_from_training_success() -> None:
    tracker = PerformanceTracker("train", np.ones(2), window=2, device=torch.device("cpu"))
    tracker.on_episode(0, True)
    assert tracker.current().tolist() == [0.0, 0.0]                 # task 1 has no episode yet
    tracker.on_episode(1, False)
    assert tracker.current().tolist() == pytest.approx([0.0, 100.0])
    tracker.on_episode(1, True)
    tracker.on_episode(1, True)                                     # window 2: the failure drops out
    tracker.on_evaluation(np.array([0.0, 0.0]))                     # ignored by the train source
    assert tracker.current().tolist() == pytest.approx([0.0, 0.0])
    restored = PerformanceTracker("train", np.ones(2), window=2, device=torch.device("cpu"))
    restored.load_state_dict(tracker.state_dict())
    assert restored.current().tolist() == tracker.current().tolist()
    assert [list(q) for q in restored.recent] == [[1.0], [1.0, 1.0]]


def test_eval_history_best_and_final() -> None:
    history = EvalHistory(["a", "b"])
    history.add(10, {"a": 0.2, "b": 0.4})
    history.add(20, {"a": 1.0, "b": 0.6})
    history.add(30, {"a": 0.0, "b": 0.8})
    assert history.best["step"] == 20 and history.best["mean"] == pytest.approx(0.8)
    assert history.final["step"] == 30 and history.final["mean"] == pytest.approx(0.4)
    assert history.best_per_task() == {"a": 1.0, "b": 0.8}
    copy = EvalHistory(["a", "b"])
    copy.load_state_dict(history.state_dict())
    assert copy.best == history.best and copy.final == history.final


def test_update_accumulator_means_per_window() -> None:
    accumulator = UpdateAccumulator()
    accumulator.add({"loss/critic": torch.tensor([1.0, 2.0]), "alpha": torch.tensor([0.5, 0.5])})
    accumulator.add({"loss/critic": torch.tensor([3.0, 4.0]), "alpha": torch.tensor([1.5, 0.5])})
    means = accumulator.means()
    assert means["loss/critic"].tolist() == [2.0, 3.0] and means["alpha"].tolist() == [1.0, 0.5]
    assert accumulator.means() == {} and accumulator.count == 0


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    atomic_save({"x": torch.arange(3)}, tmp_path / "checkpoint.pt")
    atomic_save({"x": torch.arange(4)}, tmp_path / "checkpoint.pt")
    atomic_write_json({"mean": 0.5}, tmp_path / "summary.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "summary.json"]
    assert torch.load(tmp_path / "checkpoint.pt")["x"].tolist() == [0, 1, 2, 3]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"mean": 0.5}


def test_atomic_writes_get_the_mode_open_would_give(tmp_path: Path) -> None:
    """Not mkstemp's 0600: a group sharing a run directory must be able to read its results."""
    import os

    mask = os.umask(0o022)
    try:
        (tmp_path / "plain.txt").write_text("x")
        atomic_write_json({"mean": 0.5}, tmp_path / "summary.json")
    finally:
        os.umask(mask)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_resume_changes_only_the_keys_typed_on_its_command_line(caplog: pytest.LogCaptureFixture) -> None:
    saved = {"seed": 3, "steps": 100, "log_every": 10, "torch_threads": 1, "agg": {"name": "pivrg", "options": {}},
             "agent": {"lr": 3e-4, "max_grad_norm": None, "hidden_dim": 32}, "device": "cpu", "resume": None}
    # The composed config carries train.yaml's defaults for everything not typed: they must not win.
    composed = OmegaConf.create({"seed": 0, "steps": 2000000, "log_every": 1000, "torch_threads": None,
                                 "agg": {"name": "ls", "options": {}},
                                 "agent": {"lr": 3e-4, "max_grad_norm": 1.0, "hidden_dim": 400},
                                 "device": "auto", "resume": "runs/x", "on_nonfinite": "stop"})
    with caplog.at_level("INFO", logger="mtrl.experiment.config"):
        merged = merge_resumed_config(saved, composed, ["resume=runs/x"])
    assert OmegaConf.to_container(merged) == {**saved, "resume": "runs/x", "on_nonfinite": "stop"}

    typed = ["resume=runs/x", "steps=2000000", "agent.max_grad_norm=1.0"]
    with caplog.at_level("INFO", logger="mtrl.experiment.config"):
        merged = merge_resumed_config(saved, composed, typed)
    assert merged.steps == 2000000 and merged.agent.max_grad_norm == 1.0        # typed: changed
    assert merged.log_every == 10 and merged.torch_threads == 1 and merged.device == "cpu"   # not typed: saved
    assert merged.seed == 3 and merged.agg.name == "pivrg" and merged.agent.hidden_dim == 32  # the experiment stays
    assert "steps=2000000 (the run had 100)" in caplog.text
    assert "agent.max_grad_norm=1.0 (the run had None)" in caplog.text
    # A typed key that defines the experiment is refused with what to do, not silently kept.
    for override, path in (("agg=ls", "agg.name"), ("seed=0", "seed"), ("agent.hidden_dim=400", "agent.hidden_dim")):
        with pytest.raises(ConfigError, match=rf"{override.split('=')[0]} would change {path} from the run's"):
            merge_resumed_config(saved, composed, ["resume=runs/x", override])
