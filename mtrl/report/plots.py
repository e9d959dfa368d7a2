"""The report's figures: learning curves with standard-error bands, the per-task success heat maps, the
aggregate metrics (IQM with bootstrap intervals, probability of improvement), the aggregators' task
weights over training, and the performance-informed methods' ω and Var[Δm] over training.

Success curves come from the runs' summaries (``evaluations``: the values TensorBoard's ``eval/success_mean``
holds, and the STL baseline has no event file); weights, ω and Var[Δm] only exist in the TensorBoard events
(``agg/critic/weight/<task>``, ``agg/actor/weight/<task>``, ``agg/omega/<task>``, ``agg/var_dm``, see
:mod:`mtrl.experiment.logger`), read with TensorBoard's ``EventAccumulator``. Every line has markers, so a
series of one point shows; a figure has a panel only for what some run logged.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtrl.report.bootstrap import Interval
from mtrl.report.runs import Group
from mtrl.experiment.checkpoint import atomic_savefig
from mtrl.report.tables import GroupRow

log = logging.getLogger("mtrl.report")

__all__ = ["curve", "report_figures", "plot_curves", "plot_heatmap", "plot_aggregates", "read_scalars",
           "read_signals", "plot_weights", "plot_omega", "WEIGHT_TAGS", "OMEGA_TAG", "VAR_DM_TAG"]

#: TensorBoard tag prefixes of the weight figure, in column order, with their axis labels.
WEIGHT_TAGS = {"agg/critic/weight": "critic task weight", "agg/actor/weight": "actor task weight"}
#: PIVRG's (and the ``pi_*`` variants') per-task ω and the variance of the performance drop.
OMEGA_TAG, VAR_DM_TAG = "agg/omega", "agg/var_dm"

#: group name -> tag prefix -> task ("" for a scalar such as Var[Δm]) -> one (step, value) series per seed.
Signals = dict[str, dict[str, dict[str, list[list[tuple[int, float]]]]]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    atomic_savefig(fig, path, dpi=110, facecolor="white", bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _markers(points: int) -> dict:
    """Line style keywords: a marker on every point of a short series (one point shows), on about 12 of a
    long one (ten tasks' markers on every point hide the lines)."""
    return {"marker": "o", "markersize": 3, "markevery": max(1, points // 12)}


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curve(series: Sequence[Sequence[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean, standard error and number of series of several (step, value) series: at each step,
    over the series that have it (the s.e. is 0 where only one has)."""
    at: dict[int, list[float]] = defaultdict(list)
    for points in series:
        for step, value in points:
            at[int(step)].append(float(value))
    steps = np.asarray(sorted(at), dtype=np.int64)
    mean = np.asarray([np.mean(at[s]) for s in steps])
    se = np.asarray([np.std(at[s], ddof=1) / math.sqrt(len(at[s])) if len(at[s]) > 1 else 0.0 for s in steps])
    return steps, mean, se, np.asarray([len(at[s]) for s in steps], dtype=np.int64)


def report_figures(groups: Sequence[Group], rows: Sequence[GroupRow],
                   matrix: dict[tuple[int, int], Interval]) -> dict[str, Callable[[Path], Path | None]]:
    """The RL report's figures, ``{name: plot}``: ``curves``, ``per_task``, ``aggregates``, ``weights`` and
    ``omega``; each ``plot(path)`` writes its PNG and returns the path, or ``None`` when it has nothing to show."""
    signals: list[Any] = []

    def logged() -> Any:   # the TensorBoard signals, read once and only when a figure needs them
        if not signals:
            signals.append(read_signals(groups))
        return signals[0]

    return {"curves": lambda path: plot_curves(groups, path),
            "per_task": lambda path: plot_heatmap(rows, path),
            "aggregates": lambda path: plot_aggregates(rows, matrix, path),
            "weights": lambda path: plot_weights(logged(), path),
            "omega": lambda path: plot_omega(logged(), path)}


# ----------------------------------------------------------------------------------------- success
def _success_series(group: Group) -> list[list[tuple[int, float]]]:
    return [[(r["step"], r["mean"]) for r in run.evaluations] for run in group.runs if run.evaluations]


def plot_curves(groups: Sequence[Group], path: Path) -> Path:
    """Mean success over tasks vs vector steps, one line per group at the steps every seed of the group
    evaluated, with a band of ± one standard error over seeds (none for one seed, said in the legend); the
    random policy as a flat line at its final evaluations' mean."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for group in groups:
        series = _success_series(group)
        if not series:
            continue
        if group.kind == "random":
            _random_line(ax, group.name, [points[-1][1] for points in series])
            continue
        steps, mean, se, count = curve(series)
        label = f"{group.name} (n={len(series)}" if len(series) > 1 else f"{group.name} (1 seed, no band"
        shared = count == len(series)
        if shared.any():
            if not shared.all():
                label += f"; {int((~shared).sum())} step(s) not evaluated by every seed left out"
            steps, mean, se = steps[shared], mean[shared], se[shared]
        else:
            label += "; seeds evaluated at different steps: mean of those at each step"
        style = "--" if group.kind == "stl" or not group.finished else "-"
        line, = ax.plot(steps, 100 * mean, style, label=label + ")", **_markers(len(steps)))
        if len(series) > 1:
            ax.fill_between(steps, 100 * (mean - se), 100 * (mean + se), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("vector steps (one step of every task)")
    _integer_steps(ax)
    ax.set_ylabel("mean success over tasks (%)")
    ax.set_title("Evaluation success, mean over seeds, band ± one standard error")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _random_line(ax, name: str, finals: Sequence[float]) -> None:
    mean = 100 * float(np.mean(finals))
    label = f"{name} (final evaluation, n={len(finals)})"
    ax.axhline(mean, color="black", linestyle=":", linewidth=1.2, label=label)
    if len(finals) > 1:
        se = 100 * float(np.std(finals, ddof=1)) / math.sqrt(len(finals))
        ax.axhspan(mean - se, mean + se, color="black", alpha=0.08)


def plot_heatmap(rows: Sequence[GroupRow], path: Path) -> Path:
    """Per-task success (%), mean over seeds, tasks x groups: at the final evaluation (left) and at each
    seed's best evaluation (right)."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(task for row in rows for task in row.tasks))
    panels = {"at the final evaluation": [row.per_task_final for row in rows],
              "at each seed's best evaluation": [row.per_task for row in rows]}
    width = 1.2 + 0.9 * len(rows)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width + 2.5, 1.2 + 0.42 * len(tasks)), sharey=True)
    for ax, (title, per_task) in zip(axes, panels.items()):
        values = np.full((len(tasks), len(rows)), np.nan)
        for j, stats in enumerate(per_task):
            for i, task in enumerate(tasks):
                stat = stats.get(task)
                if stat is not None and stat.mean is not None:
                    values[i, j] = 100 * stat.mean
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i, j in zip(*np.nonzero(~np.isnan(values))):
            ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] < 60 else "black")
        ax.set_xticks(range(len(rows)), [row.name.replace(" ", "\n") for row in rows], fontsize=7)
        ax.set_title(title, fontsize=9)
    axes[0].set_yticks(range(len(tasks)), tasks, fontsize=8)
    fig.colorbar(image, ax=axes, label="success (%)", fraction=0.03)
    fig.suptitle("Per-task success (%), mean over seeds", fontsize=10)
    return _save(fig, path)


def plot_aggregates(rows: Sequence[GroupRow], matrix: dict[tuple[int, int], Interval], path: Path) -> Path | None:
    """IQM and mean of the final per-(run, task) success with their 95 % bootstrap intervals per group
    (left) and the probability of improvement P(row > column) (right, when two groups compare).
    None when no group has evaluated."""
    shown = [row for row in rows if row.aggregates is not None]
    if not shown:
        return None
    plt = _pyplot()
    if not matrix:
        fig, ax = plt.subplots(figsize=(6.5, 1.4 + 0.45 * len(shown)))
        _interval_panel(ax, shown)
    else:
        side = 1.5 + 1.05 * len(rows)       # the matrix's cells hold a point and an interval
        fig, (ax, matrix_ax) = plt.subplots(1, 2, figsize=(6.5 + side, max(side, 1.4 + 0.45 * len(shown))),
                                            gridspec_kw={"width_ratios": [6.5, side]})
        _interval_panel(ax, shown)
        _improvement_panel(matrix_ax, rows, matrix)
    fig.tight_layout()
    return _save(fig, path)


def _interval_panel(ax, rows: Sequence[GroupRow]) -> None:
    y = np.arange(len(rows))
    for offset, name, color in ((-0.15, "final_iqm", "C0"), (0.15, "final_mean", "C1")):
        for k, row in enumerate(rows):
            interval = getattr(row.aggregates, name)
            label = ("IQM" if name == "final_iqm" else "mean") if k == 0 else None
            if interval.low is None:           # one run: the point, no interval
                ax.plot(100 * interval.point, y[k] + offset, "o", color=color, mfc="white", label=label)
            else:
                ax.errorbar(100 * interval.point, y[k] + offset, color=color, fmt="o", capsize=3, label=label,
                            xerr=[[100 * (interval.point - interval.low)], [100 * (interval.high - interval.point)]])
    ax.set_yticks(y, [row.name for row in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("final success over runs × tasks (%)")
    ax.set_title("IQM and mean, 95% stratified-bootstrap CI\n(hollow: one run, no interval)", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="best")


def _improvement_panel(ax, rows: Sequence[GroupRow], matrix: dict[tuple[int, int], Interval]) -> None:
    values = np.full((len(rows), len(rows)), np.nan)
    for (i, j), interval in matrix.items():
        values[i, j] = interval.point
    ax.imshow(values, cmap="RdBu", vmin=0, vmax=1)
    for (i, j), interval in matrix.items():
        text = f"{interval.point:.2f}"
        if interval.low is not None:
            text += f"\n[{interval.low:.2f}, {interval.high:.2f}]"
        ax.text(j, i, text, ha="center", va="center", fontsize=7,
                color="white" if abs(interval.point - 0.5) > 0.3 else "black")
    names = [row.name.replace(" ", "\n") for row in rows]
    ax.set_xticks(range(len(rows)), names, fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.set_title("P(row > column) at the final evaluation, 95% CI\n(blue: row better, red: column better)",
                 fontsize=9)


# ---------------------------------------------------------------------------------- training signals
def read_scalars(run_dir: Path, prefixes: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` of the run's TensorBoard scalars whose tag starts with one of ``prefixes``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)]
            for tag in events.Tags().get("scalars", []) if tag.startswith(tuple(prefixes))}


def read_signals(groups: Sequence[Group]) -> Signals:
    """The weights, ω and Var[Δm] every trained run logged, by group; groups that logged none are absent."""
    prefixes = [*WEIGHT_TAGS, OMEGA_TAG]
    found: Signals = {}
    for group in groups:
        if group.kind != "mtl":
            continue
        per_prefix: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for run in group.runs:
            for tag, points in read_scalars(run.path, [f"{prefix}/" for prefix in prefixes] + [VAR_DM_TAG]).items():
                if tag == VAR_DM_TAG:
                    per_prefix[VAR_DM_TAG][""].append(points)
                    continue
                prefix, task = tag.rsplit("/", 1)
                if prefix in prefixes and task in run.tasks:
                    per_prefix[prefix][task].append(points)
        if per_prefix:
            found[group.name] = {prefix: dict(tasks) for prefix, tasks in per_prefix.items()}
    return found


def _task_lines(ax, per_task: dict[str, list], colors: dict[str, str]) -> None:
    for task, series in per_task.items():
        steps, mean, _, _ = curve(series)
        color = colors.setdefault(task, f"C{len(colors) % 10}")
        ax.plot(steps, mean, linewidth=1, label=task, color=color, **_markers(len(steps)))


def _panel_grid(plt, nrows: int, ncols: int):
    return plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 2.8 * nrows), squeeze=False, sharex=True)


def _finish(fig, axes, title: str) -> None:
    """x labels under the last row's panels, one legend for all tasks, the title."""
    visible = [ax for ax in axes.flat if ax.get_visible()]
    for ax in visible:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        _integer_steps(ax)
        ax.set_xlabel("vector steps", fontsize=8)
        ax.xaxis.label.set_visible(ax.get_subplotspec().is_last_row())
    handles, labels = [], []
    for ax in visible:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if labels:
        fig.legend(handles, labels, loc="upper center", ncol=min(5, len(labels)), fontsize=7,
                   bbox_to_anchor=(0.5, 0.0))


def plot_weights(signals: Signals, path: Path) -> Path | None:
    """Per group (rows) the task weights of the critic and of the actor (columns) over training, one line
    per task (mean over seeds). None when no run logged any."""
    data = {name: per_prefix for name, per_prefix in signals.items() if any(p in per_prefix for p in WEIGHT_TAGS)}
    if not data:
        return None
    prefixes = [prefix for prefix in WEIGHT_TAGS if any(prefix in per_prefix for per_prefix in data.values())]
    plt = _pyplot()
    fig, axes = _panel_grid(plt, len(data), len(prefixes))
    colors: dict[str, str] = {}
    for i, (name, per_prefix) in enumerate(data.items()):
        for j, prefix in enumerate(prefixes):
            ax = axes[i, j]
            if prefix not in per_prefix:       # this group logged the other role only: no empty panel
                ax.set_visible(False)
                continue
            _task_lines(ax, per_prefix[prefix], colors)
            ax.set_title(f"{name}: {WEIGHT_TAGS[prefix]}", fontsize=8)
    _finish(fig, axes, "Aggregator task weights over training (mean over seeds)")
    return _save(fig, path)


def plot_omega(signals: Signals, path: Path) -> Path | None:
    """For the groups that logged ω (PIVRG and the ``pi_*`` variants), per group (rows) ω per task and
    Var[Δm] (mean over seeds, ± one standard error band with several seeds) over training. None when no
    run logged ω."""
    data = {name: per_prefix for name, per_prefix in signals.items() if OMEGA_TAG in per_prefix}
    if not data:
        return None
    plt = _pyplot()
    with_var = any(VAR_DM_TAG in per_prefix for per_prefix in data.values())
    fig, axes = _panel_grid(plt, len(data), 2 if with_var else 1)
    colors: dict[str, str] = {}
    for i, (name, per_prefix) in enumerate(data.items()):
        _task_lines(axes[i, 0], per_prefix[OMEGA_TAG], colors)
        axes[i, 0].set_title(f"{name}: ω per task", fontsize=8)
        if not with_var:
            continue
        ax = axes[i, 1]
        if VAR_DM_TAG not in per_prefix:
            ax.set_visible(False)
            continue
        series = per_prefix[VAR_DM_TAG][""]
        steps, mean, se, _ = curve(series)
        ax.plot(steps, mean, color="black", linewidth=1, **_markers(len(steps)))
        if len(series) > 1:
            ax.fill_between(steps, mean - se, mean + se, color="black", alpha=0.15)
        ax.set_title(f"{name}: Var[Δm] (n={len(series)})", fontsize=8)
    _finish(fig, axes, "Performance-informed weighting over training: ω and Var[Δm] (mean over seeds)")
    return _save(fig, path)
