"""``summary.json``: what a run has done so far, rewritten (atomically) after every evaluation and at its end.

Its keys (``python -m mtrl.report`` reads them)::

    env, agg, seed, tasks, finished, steps, transitions, updates, wall_time_s, env_backend,
    final, best                 {step, mean, per_task, return_per_task} of the last / the best evaluation
    best_mean_success, final_mean_success, best_per_task (each task's maximum over evaluations),
    train_episodes, evaluations (every evaluation), segments (which steps ran in which process),
    skipped_updates, env_restarts, config (the effective config)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtrl.experiment.checkpoint import SUMMARY_NAME, atomic_write_json
from mtrl.experiment.tracking import EvalHistory

__all__ = ["Segments", "RunCounts", "RunSummary"]


class Segments:
    """Which steps ran in which process: ``[{start, end, pid, started}]``, one entry per (re)start of the run."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def begin(self, step: int) -> None:
        """This process takes over at ``step``."""
        self.entries.append({"start": step, "end": step, "pid": os.getpid(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def reach(self, step: int) -> list[dict[str, Any]]:
        """This process has done the steps up to ``step``; returns the entries."""
        self.entries[-1]["end"] = step
        return self.entries

    def state_dict(self) -> list[dict[str, Any]]:
        return self.entries

    def load_state_dict(self, entries: list[dict[str, Any]]) -> None:
        self.entries = list(entries)


@dataclass(frozen=True)
class RunCounts:
    """The run's counters at one moment."""

    steps: int
    updates: int
    wall_time_s: float
    train_episodes: list[int]       # per task, in task order
    skipped_updates: int
    env_restarts: int


class RunSummary:
    """Builds and writes a run's ``summary.json`` (keys in the module docstring)."""

    def __init__(self, run_dir: str | Path, settings: Any, history: EvalHistory, segments: Segments,
                 env_backend: str) -> None:
        self.path = Path(run_dir) / SUMMARY_NAME
        self.settings, self.history, self.segments, self.env_backend = settings, history, segments, env_backend

    def build(self, finished: bool, counts: RunCounts) -> dict[str, Any]:
        s, final, best = self.settings, self.history.final, self.history.best
        return {
            "env": s.env_name,
            "agg": s.agg_name,
            "seed": s.seed,
            "tasks": s.task_names,
            "finished": finished,
            "steps": counts.steps,
            "transitions": counts.steps * s.num_tasks,
            "updates": counts.updates,
            "wall_time_s": round(counts.wall_time_s, 3),
            "env_backend": self.env_backend,                 # what stepped the training environments
            "final": final,
            "best": best,                                    # the evaluation with the highest mean success
            "best_mean_success": None if best is None else best["mean"],
            "final_mean_success": None if final is None else final["mean"],
            "best_per_task": self.history.best_per_task(),
            "train_episodes": dict(zip(s.task_names, counts.train_episodes)),
            "evaluations": self.history.history,
            "segments": self.segments.reach(counts.steps),
            "skipped_updates": counts.skipped_updates,
            "env_restarts": counts.env_restarts,
            "config": s.config,
        }

    def write(self, finished: bool, counts: RunCounts) -> dict[str, Any]:
        """Write ``summary.json`` atomically (raises OSError when the disk refuses); returns the summary."""
        summary = self.build(finished, counts)
        atomic_write_json(summary, self.path)
        return summary
