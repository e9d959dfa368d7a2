"""The trainer's bookkeeping: Δm from success rates, best/final success, update accumulation, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mtrl.training.checkpoint import atomic_save, atomic_write_json, load_checkpoint
from mtrl.training.config import merge_resumed_config
from mtrl.training.logger import UpdateAccumulator
from mtrl.training.tracking import EvalHistory, PerformanceTracker


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
    assert load_checkpoint(tmp_path / "checkpoint.pt")["x"].tolist() == [0, 1, 2, 3]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"mean": 0.5}


def test_resume_keeps_the_saved_experiment() -> None:
    saved = {"seed": 3, "steps": 100, "agg": {"name": "pivrg", "options": {}}, "device": "cpu", "resume": None}
    command_line = OmegaConf.create({"seed": 0, "steps": 500, "agg": {"name": "ls", "options": {}},
                                     "device": "auto", "resume": "runs/x"})
    merged = merge_resumed_config(saved, command_line)
    assert merged.seed == 3 and merged.agg.name == "pivrg"               # the experiment stays
    assert merged.steps == 500 and merged.device == "auto" and merged.resume == "runs/x"  # runtime keys follow
