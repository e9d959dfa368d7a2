"""Finding the runs of a sweep, reading them, and grouping them by everything but the seed.

A run is a directory with the ``summary.json`` of ``python -m mtrl.train`` (:meth:`Trainer.summary`) or the
``stl_summary.json`` of ``python -m mtrl.stl`` (the single-task baseline, reported as the STL row). A
``summary.json`` with ``"policy": "random"`` (in the summary or its config) or the aggregator ``random`` is
the random-policy baseline: uniform random actions evaluated under the same protocol, its own kind, never
pooled with trained runs, reported as the "random policy" row.
Keys the readers do not know are ignored, so newer summaries (``backend``, resume ``segments``) read too.
"""

from __future__ import annotations

import glob
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtrl.stl import STL_SUMMARY_NAME
from mtrl.experiment.checkpoint import SUMMARY_NAME
from mtrl.experiment.tracking import EvalHistory
from mtrl.validation import ConfigError

log = logging.getLogger("mtrl.report")

__all__ = ["ReportError", "Run", "Group", "find_summaries", "load_run", "load_runs", "group_runs",
           "is_random_policy", "NOT_EXPERIMENT_KEYS", "KINDS"]

#: Config keys that do not change what a run measures (how it ran, where, how often it logged): they
#: neither split groups nor name them. ``seed`` is what a group pools over.
NOT_EXPERIMENT_KEYS = ("seed", "resume", "progress", "device", "torch_threads", "vector_strategy", "log_every",
                       "checkpoint_every", "checkpoint_buffer", "merge", "tensorboard", "hydra")


class ReportError(ConfigError):
    """Input the report cannot use; the message says what to change."""


@dataclass
class Run:
    """One training run (or one STL baseline run), as the report needs it."""

    path: Path
    kind: str                                  # "mtl" (mtrl.train) | "stl" (mtrl.stl) | "random" (random policy)
    seed: int
    finished: bool
    steps: int                                 # vector steps done
    target_steps: int                          # the config's `steps`
    tasks: list[str]
    evaluations: list[dict[str, Any]]          # [{step, mean, per_task}], in order
    best: dict[str, Any] | None                # the evaluation with the highest mean success
    final: dict[str, Any] | None               # the last evaluation
    wall_time_s: float | None
    config: dict[str, Any]                     # flattened (dotted keys) without NOT_EXPERIMENT_KEYS
    eval_episodes: int | None = None
    protocol: str | None = None

    @property
    def evaluated(self) -> bool:
        return self.best is not None


@dataclass
class Group:
    """Runs that differ only in their seed (and in NOT_EXPERIMENT_KEYS)."""

    name: str
    runs: list[Run]

    @property
    def finished(self) -> bool:
        return all(run.finished for run in self.runs)

    @property
    def kind(self) -> str:
        return self.runs[0].kind

    @property
    def target_steps(self) -> int:
        return self.runs[0].target_steps

    @property
    def seeds(self) -> list[int]:
        return sorted(run.seed for run in self.runs)


# ---------------------------------------------------------------------------------------------- reading
def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"agent": {"hidden_dim": 400}}`` -> ``{"agent.hidden_dim": 400}`` (lists become tuples)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def _experiment_config(config: Mapping[str, Any]) -> dict[str, Any]:
    flat = flatten(config)
    return {key: value for key, value in flat.items() if key.split(".", 1)[0] not in NOT_EXPERIMENT_KEYS}


def find_summaries(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``summary.json`` / ``stl_summary.json`` below the given directories or glob patterns."""
    found: set[Path] = set()
    for pattern in paths:
        matches = glob.glob(str(Path(str(pattern)).expanduser())) or [str(pattern)]
        for match in map(Path, matches):
            if not match.exists():
                raise ReportError(f"{pattern}: no such file or directory. Pass a sweep or run directory "
                                  f"(e.g. runs/multirun/<time>) or a glob pattern that matches some.")
            if match.is_file():
                if match.name in (SUMMARY_NAME, STL_SUMMARY_NAME):
                    found.add(match.resolve())
                continue
            for name in (SUMMARY_NAME, STL_SUMMARY_NAME):
                found.update(p.resolve() for p in match.rglob(name))
    return sorted(found)


def _eval_episodes(config: Mapping[str, Any]) -> int | None:
    episodes = config.get("eval_episodes")
    if episodes is None:
        episodes = (config.get("protocol") or {}).get("eval_episodes_per_task")
    return None if episodes is None else int(episodes)


#: The kinds of run, in the order of the report's rows: the references first.
KINDS = ("stl", "random", "mtl")
#: The random-policy baseline's marker: ``summary["policy"]``, ``config["policy"]`` or the aggregator's name.
RANDOM_POLICY = "random"


def is_random_policy(summary: Mapping[str, Any]) -> bool:
    """Whether a ``summary.json`` is the random-policy baseline's (not a trained run's)."""
    config = summary.get("config") or {}
    agg = config.get("agg")
    return RANDOM_POLICY in (summary.get("policy"), config.get("policy"), summary.get("agg"),
                             agg.get("name") if isinstance(agg, Mapping) else agg)


def _mtl_run(path: Path, summary: Mapping[str, Any]) -> Run:
    config = summary["config"]
    evaluations = list(summary.get("evaluations") or [])
    return Run(
        path=path.parent, kind="random" if is_random_policy(summary) else "mtl", seed=int(summary["seed"]),
        finished=bool(summary["finished"]), steps=int(summary["steps"]),
        target_steps=int(config.get("steps", summary["steps"])), tasks=list(summary["tasks"]),
        evaluations=evaluations, best=summary.get("best"), final=summary.get("final"),
        wall_time_s=summary.get("wall_time_s"), config=_experiment_config(config),
        eval_episodes=_eval_episodes(config), protocol=(config.get("protocol") or {}).get("name"),
    )


def _stl_run(path: Path, summary: Mapping[str, Any]) -> Run:
    """The STL baseline as one run: its evaluation ``i`` is every task's evaluation at the same step
    (the tasks train one after the other, each evaluated every ``eval_every`` of its own steps)."""
    config, per_task = summary["config"], summary["per_task"]
    tasks = list(per_task)
    by_step: dict[int, dict[str, float]] = defaultdict(dict)
    for task in tasks:
        for record in per_task[task]["evaluations"]:
            by_step[int(record["step"])][task] = float(record["success"])
    history = EvalHistory(tasks)
    for step in sorted(by_step):
        if len(by_step[step]) == len(tasks):      # a step some task has not reached (yet) is left out
            history.add(step, by_step[step])
    target = int(config["steps"])
    steps = min(int(per_task[task]["steps"]) for task in tasks)
    wall = sum(float(per_task[task].get("wall_time_s", 0.0)) for task in tasks)
    trained = (config.get("tasks") is None) or sorted(config["tasks"]) == sorted(tasks)
    return Run(
        path=path.parent, kind="stl", seed=int(config["seed"]), finished=trained and steps >= target,
        steps=steps, target_steps=target, tasks=tasks, evaluations=history.history, best=history.best,
        final=history.final, wall_time_s=wall,
        config=_experiment_config(config),
        eval_episodes=_eval_episodes(config), protocol=(config.get("protocol") or {}).get("name"),
    )


def load_run(path: Path) -> Run | None:
    """The run of one summary file; None (with a warning) for a file that is not a run's summary."""
    try:
        summary = json.loads(path.read_text())
        if path.name == STL_SUMMARY_NAME:
            return _stl_run(path, summary)
        if isinstance(summary, list):   # the summary.json that mtrl.supervised's summaries write
            return None
        if "config" not in summary or ("agg" not in summary and not is_random_policy(summary)):
            log.warning("%s: not a summary of `python -m mtrl.train`; skipped.", path)
            return None
        return _mtl_run(path, summary)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        log.warning("%s: unreadable (%s: %s); skipped.", path, type(error).__name__, error)
        return None


def load_runs(paths: Iterable[str | Path], required: bool = True) -> list[Run]:
    """Every run below ``paths``; :class:`ReportError` when there is none and ``required``."""
    paths = list(paths)
    runs = [run for run in map(load_run, find_summaries(paths)) if run is not None]
    if not runs and required:
        raise ReportError(f"no runs under {', '.join(map(str, paths))}: no {SUMMARY_NAME} (python -m mtrl.train), "
                          f"{STL_SUMMARY_NAME} (python -m mtrl.stl) or results.json (python -m mtrl.supervised) "
                          f"there. Pass the sweep directory, e.g. runs/multirun/<time>.")
    return runs


# --------------------------------------------------------------------------------------------- grouping
def _group_key(run: Run) -> tuple:
    return (run.kind, run.finished, tuple(sorted(run.config.items(), key=lambda item: item[0])))


def _naming_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The config keys whose values differ between groups. An aggregator's options (``agg.options.*``)
    count only between groups of the same aggregator: LS has no ``c``, that does not make ``c`` differ."""
    keys = sorted({key for config in configs for key in config})
    naming = []
    for key in keys:
        if key.startswith("agg.options."):
            by_agg: dict[Any, set] = defaultdict(set)
            for config in configs:
                if key in config:
                    by_agg[config.get("agg.name")].add(repr(config[key]))
            differs = any(len(values) > 1 for values in by_agg.values())
        else:
            differs = len({repr(config.get(key)) for config in configs}) > 1
        if differs:
            naming.append(key)
    return naming


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _name(run: Run, naming: Sequence[str]) -> str:
    parts = [{"stl": "STL", "random": "random policy"}.get(run.kind, f"agg={run.config.get('agg.name')}")]
    parts += [f"{key}={_format_value(run.config.get(key))}" for key in naming
              if key != "agg.name" and key in run.config]
    return " ".join(parts)


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Groups of runs equal in everything but the seed, named by what differs (``agg=pivrg steps=2000``).

    Unfinished runs form groups of their own, marked ``[unfinished]``; runs with different step budgets
    (``steps``) or any other setting differ in their key, so they are never pooled.
    """
    buckets: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        buckets[_group_key(run)].append(run)
    naming = {kind: _naming_keys([members[0].config for members in buckets.values() if members[0].kind == kind])
              for kind in KINDS}
    groups = []
    for members in buckets.values():
        name = _name(members[0], naming[members[0].kind])
        if not members[0].finished:
            name += " [unfinished]"
        groups.append(Group(name=name, runs=sorted(members, key=lambda run: run.seed)))
    # The references first (STL, the random policy), then by name; an unfinished group right after its
    # finished twin.
    return sorted(groups, key=lambda group: (KINDS.index(group.kind), group.name))
