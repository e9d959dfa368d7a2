"""The report's figures: per-task success heat map, learning curves with standard-error bands, and the
aggregators' task weights (and PIVRG's ω) over training.

Success curves come from the runs' summaries (``evaluations``: the values TensorBoard's ``eval/success_mean``
holds, and the STL baseline has no event file); weights and ω only exist in the TensorBoard events
(``agg/critic/weight/<task>``, ``agg/actor/weight/<task>``, ``agg/omega/<task>``, see
:mod:`mtrl.training.logger`), read with TensorBoard's ``EventAccumulator``.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtrl.report.runs import Group
from mtrl.training.checkpoint import atomic_savefig
from mtrl.report.tables import GroupRow

log = logging.getLogger("mtrl.report")

__all__ = ["curve", "plot_heatmap", "plot_curves", "plot_weights", "read_scalars"]

#: TensorBoard tag prefixes of the weight figure, in column order, with their axis labels.
WEIGHT_TAGS = {"agg/omega": "PIVRG ω", "agg/critic/weight": "critic task weight",
               "agg/actor/weight": "actor task weight"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    atomic_savefig(fig, path, dpi=110, facecolor="white", bbox_inches="tight")
    _pyplot().close(fig)
    return path


def curve(series: Sequence[Sequence[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and standard error over seeds of several (step, value) series: at each step, the seeds
    that have it (the s.e. is 0 where only one has)."""
    at: dict[int, list[float]] = defaultdict(list)
    for points in series:
        for step, value in points:
            at[int(step)].append(float(value))
    steps = np.asarray(sorted(at), dtype=np.int64)
    mean = np.asarray([np.mean(at[s]) for s in steps])
    se = np.asarray([np.std(at[s], ddof=1) / math.sqrt(len(at[s])) if len(at[s]) > 1 else 0.0 for s in steps])
    return steps, mean, se


def plot_curves(groups: Sequence[Group], path: Path) -> Path:
    """Mean success over tasks vs vector steps, one line per group, a band of ± one standard error over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for group in groups:
        series = [[(r["step"], r["mean"]) for r in run.evaluations] for run in group.runs if run.evaluations]
        if not series:
            continue
        steps, mean, se = curve(series)
        style = "--" if group.kind == "stl" or not group.finished else "-"
        line, = ax.plot(steps, 100 * mean, style, marker="o", markersize=3,
                        label=f"{group.name} (n={len(series)})")
        ax.fill_between(steps, 100 * (mean - se), 100 * (mean + se), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("vector steps (one step of every task)")
    ax.set_ylabel("mean success over tasks (%)")
    ax.set_title("Evaluation success, mean ± s.e. over seeds")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_heatmap(rows: Sequence[GroupRow], path: Path) -> Path:
    """Per-task success (%) at each seed's best evaluation, mean over seeds: tasks x groups."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(task for row in rows for task in row.tasks))
    values = np.full((len(tasks), len(rows)), np.nan)
    for j, row in enumerate(rows):
        for i, task in enumerate(tasks):
            stat = row.per_task.get(task)
            if stat is not None and stat.mean is not None:
                values[i, j] = 100 * stat.mean
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 0.9 + 0.42 * len(tasks)))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(tasks)):
        for j in range(len(rows)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] < 60 else "black")
    ax.set_xticks(range(len(rows)), [row.name.replace(" ", "\n") for row in rows], fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    fig.colorbar(image, ax=ax, label="success (%)")
    ax.set_title("Per-task success at the best evaluation, mean over seeds", fontsize=9)
    return _save(fig, path)


def read_scalars(run_dir: Path, prefixes: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` of the run's TensorBoard scalars whose tag starts with one of ``prefixes``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)]
            for tag in events.Tags().get("scalars", []) if tag.startswith(tuple(prefixes))}


def _weights_by_group(groups: Sequence[Group]) -> dict[str, dict[str, dict[str, list]]]:
    """group name -> tag prefix -> task -> [series per seed], for groups whose runs logged weights."""
    found: dict[str, dict[str, dict[str, list]]] = {}
    for group in groups:
        if group.kind != "mtl":
            continue
        per_prefix: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for run in group.runs:
            scalars = read_scalars(run.path, [f"{prefix}/" for prefix in WEIGHT_TAGS])
            for tag, points in scalars.items():
                prefix, task = tag.rsplit("/", 1)
                if prefix in WEIGHT_TAGS and task in run.tasks:
                    per_prefix[prefix][task].append(points)
        if per_prefix:
            found[group.name] = per_prefix
    return found


def plot_weights(groups: Sequence[Group], path: Path) -> Path | None:
    """Per group (rows) the task weights of the critic and the actor and, for PIVRG, ω (columns) over
    training, one line per task (mean over seeds). None when no run logged any."""
    data = _weights_by_group(groups)
    if not data:
        return None
    prefixes = [prefix for prefix in WEIGHT_TAGS if any(prefix in per_prefix for per_prefix in data.values())]
    plt = _pyplot()
    fig, axes = plt.subplots(len(data), len(prefixes), figsize=(4.2 * len(prefixes), 2.8 * len(data)),
                             squeeze=False, sharex=True)
    tasks_seen: list[str] = []
    for i, (name, per_prefix) in enumerate(data.items()):
        for j, prefix in enumerate(prefixes):
            ax = axes[i, j]
            for task, series in per_prefix.get(prefix, {}).items():
                steps, mean, _ = curve(series)
                ax.plot(steps, mean, linewidth=1, label=task, color=f"C{_index(tasks_seen, task) % 10}")
            if prefix not in per_prefix:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_title(f"{name}: {WEIGHT_TAGS[prefix]}", fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("vector steps", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(5, max(1, len(labels))), fontsize=7,
               bbox_to_anchor=(0.5, -0.02 - 0.02 * math.ceil(len(labels) / 5)))
    fig.suptitle("Aggregator task weights over training (mean over seeds)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _index(seen: list[str], task: str) -> int:
    if task not in seen:
        seen.append(task)
    return seen.index(task)
