"""Runs for the report tests: summaries built by the trainer's own ``RunSummary`` (exact numbers
chosen by the test), STL summaries in ``mtrl.stl``'s format, a random-policy baseline's summary, and
TensorBoard events with the trainer's tags."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from mtrl.experiment.checkpoint import SUMMARY_NAME
from mtrl.experiment.summary import RunCounts, RunSummary, Segments
from mtrl.experiment.tracking import EvalHistory

TASKS = ["reach-v3", "push-v3", "pick-place-v3"]
#: Meta-World's MT10, for the study-sized fixtures.
MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]


def config(agg: str, seed: int, steps: int = 1000, **extra: Any) -> dict[str, Any]:
    """A run's saved config (the keys the report reads, plus some it must ignore)."""
    cfg = {"env": {"name": "mt10", "task": None}, "protocol": {"name": "metaworld", "eval_episodes_per_task": 10},
           "agg": {"name": agg, "options": {"omega_lower": 0.5} if agg == "pivrg" else {}},
           "agent": {"hidden_dim": 400, "max_grad_norm": None}, "seed": seed, "steps": steps, "eval_every": 250,
           "eval_episodes": None, "device": "cpu", "torch_threads": 1, "progress": False, "resume": None}
    for dotted, value in extra.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return cfg


def write_summary(run_dir: Path, cfg: dict[str, Any], success: np.ndarray, finished: bool = True,
                  wall_time_s: float = 60.0, tasks: list[str] | None = None,
                  steps: list[int] | None = None) -> dict[str, Any]:
    """``summary.json`` of a run whose evaluation ``e`` had per-task success ``success[e]`` (at ``steps[e]``,
    by default every ``eval_every`` steps), written by the trainer's own :class:`RunSummary`."""
    tasks = tasks or TASKS
    steps = steps or [(e + 1) * cfg["eval_every"] for e in range(len(success))]
    history = EvalHistory(tasks)
    for step, row in zip(steps, success):
        history.add(step, dict(zip(tasks, map(float, row))))
    settings = SimpleNamespace(env_name=cfg["env"]["name"], agg_name=cfg["agg"]["name"], seed=cfg["seed"],
                               task_names=tasks, num_tasks=len(tasks), config=cfg)
    segments = Segments()
    segments.begin(0)
    step = history.last_step or 0
    counts = RunCounts(steps=step, updates=step, wall_time_s=wall_time_s, train_episodes=[0] * len(tasks),
                       skipped_updates=0, env_restarts=0)
    summary = RunSummary(run_dir, settings, history, segments, "gymnasium").build(finished, counts)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SUMMARY_NAME).write_text(json.dumps(summary))
    return summary


def write_stl_summary(run_dir: Path, success: dict[str, list[float]], eval_every: int = 250, steps: int = 1000,
                      seed: int = 0) -> None:
    """``stl_summary.json`` as ``python -m mtrl.stl`` writes it."""
    per_task = {}
    for task, values in success.items():
        evaluations = [{"step": (i + 1) * eval_every, "success": v} for i, v in enumerate(values)]
        per_task[task] = {"final": values[-1], "best": max(values), "best_step": 0, "steps": steps,
                          "wall_time_s": 10.0, "evaluations": evaluations}
    cfg = {"env": {"name": "mt10", "task": None}, "protocol": {"name": "metaworld", "eval_episodes_per_task": 10},
           "seed": seed, "steps": steps, "eval_every": eval_every, "eval_episodes": None, "tasks": None,
           "report": "best", "sac": {"hidden_dim": 400}}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "stl_summary.json").write_text(json.dumps({"report": "best", "per_task": per_task, "config": cfg}))


def write_random_summary(run_dir: Path, seed: int, success: np.ndarray, tasks: list[str] | None = None,
                         steps: list[int] | None = None) -> dict[str, Any]:
    """A random-policy baseline's ``summary.json``: a training run's format with ``"policy": "random"`` in
    the summary and its config and the aggregator named ``random`` (the agreed marker, nothing else)."""
    cfg = config("random", seed, policy="random")
    summary = write_summary(run_dir, cfg, success, tasks=tasks, steps=steps)
    summary["policy"] = "random"
    (run_dir / SUMMARY_NAME).write_text(json.dumps(summary))
    return summary


def write_events(run_dir: Path, scalars: dict[str, list[tuple[int, float]]]) -> None:
    """TensorBoard events in ``run_dir`` with the given ``{tag: [(step, value)]}`` scalars."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()
