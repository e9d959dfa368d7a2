"""The report's numbers: per group, mean and standard error over seeds, and aggregate metrics over
runs x tasks with bootstrap confidence intervals; as Markdown, CSV and LaTeX.

Per run (seed), from its evaluations (deterministic policy, every ``eval_every`` steps and at the end):

* best mean success: the highest mean-over-tasks success of any evaluation (the PIVRG paper's Table 4
  metric, Sec. 4.3: "the best average success rate ... throughout the entire training period");
* final mean success: the last evaluation's;
* step of the best: the step of that evaluation, reported per seed (a mean of steps is a step that was
  never evaluated);
* Var over tasks: the population variance over tasks of the per-task success at the best evaluation (the
  spread PIVRG reduces; with s^STL = 1, Var[Δm] = 10^4 of it);

then per group the mean over seeds and the standard error ``std(ddof=1) / sqrt(n)`` (none for one seed),
and the best point of the seed-averaged curve with its step.

Aggregate metrics (:mod:`.bootstrap`, Agarwal et al. 2021): each group's scores are the ``[runs, tasks]``
matrix of per-task success rates at each run's final (or best) evaluation; the interquartile mean (IQM)
and the mean of that matrix with 95 % stratified-bootstrap confidence intervals, and the probability of
improvement of one group over another at the final evaluation (groups trained on the same tasks).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtrl.report.bootstrap import REPS, Interval, bootstrap_interval, improvement_interval, iqm
from mtrl.report.runs import Group, Run

__all__ = ["Stat", "GroupRow", "Aggregates", "mean_se", "summarize_group", "improvement_matrix",
           "metric_definition", "aggregate_definition", "notes", "markdown_table", "aggregate_markdown",
           "improvement_markdown", "per_task_markdown", "csv_text", "latex_table", "latex_tables"]


@dataclass(frozen=True)
class Stat:
    """Mean over seeds and its standard error (None with fewer than two values)."""

    mean: float | None
    se: float | None
    n: int


def mean_se(values: Sequence[float | None]) -> Stat:
    """Mean and standard error ``std(ddof=1) / sqrt(n)`` of the values that are not None."""
    data = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    if data.size == 0:
        return Stat(None, None, 0)
    se = float(data.std(ddof=1) / math.sqrt(data.size)) if data.size > 1 else None
    return Stat(float(data.mean()), se, int(data.size))


@dataclass(frozen=True)
class Aggregates:
    """A group's aggregate metrics over its ``runs x tasks`` success matrix, with bootstrap intervals."""

    final_iqm: Interval
    final_mean: Interval
    best_iqm: Interval


@dataclass
class GroupRow:
    """One line of the table."""

    name: str
    kind: str
    finished: bool
    seeds: list[int]
    evaluated: int                    # seeds with at least one evaluation
    target_steps: int
    steps: list[int]                  # steps done per seed
    best: Stat
    final: Stat
    best_steps: list[int]             # the step of each evaluated seed's best evaluation, in seed order
    var_tasks: Stat
    wall_time_s: Stat
    best_of_mean_curve: float | None  # max over evaluation steps of the seed-mean curve (the other reading)
    best_of_mean_curve_step: int | None
    tasks: list[str]
    per_task: dict[str, Stat]         # per-task success at each seed's best evaluation
    per_task_final: dict[str, Stat]   # per-task success at each seed's final evaluation
    final_scores: np.ndarray          # [evaluated runs, tasks] success at the final evaluation
    aggregates: Aggregates | None     # None when no run has evaluated


def _var_over_tasks(record: dict[str, Any]) -> float:
    return float(np.var(list(record["per_task"].values())))


def _best_of_mean_curve(runs: Sequence[Run]) -> tuple[float | None, int | None]:
    """The other reading of "best average success over seeds": average the seeds' curves at each
    evaluation step that every seed has, then take the best step (the earliest of equal ones)."""
    steps = set.intersection(*({record["step"] for record in run.evaluations} for run in runs)) if runs else set()
    if not steps:
        return None, None
    steps = sorted(steps)
    curve = [np.mean([next(r["mean"] for r in run.evaluations if r["step"] == step) for run in runs])
             for step in steps]
    best = int(np.argmax(curve))
    return float(curve[best]), steps[best]


def _scores(runs: Sequence[Run], tasks: Sequence[str], record: str) -> np.ndarray:
    """``[runs, tasks]`` success at each run's ``record`` ("final" or "best") evaluation."""
    return np.asarray([[getattr(run, record)["per_task"][task] for task in tasks] for run in runs],
                      dtype=np.float64).reshape(len(runs), len(tasks))


def _aggregates(runs: Sequence[Run], tasks: Sequence[str], reps: int) -> Aggregates | None:
    if not runs:
        return None
    final, best = _scores(runs, tasks, "final"), _scores(runs, tasks, "best")
    return Aggregates(final_iqm=bootstrap_interval(final, iqm, reps),
                      final_mean=bootstrap_interval(final, _mean, reps),
                      best_iqm=bootstrap_interval(best, iqm, reps))


def _mean(scores: np.ndarray) -> np.ndarray:
    return scores.mean(axis=(-2, -1))


def summarize_group(group: Group, reps: int = REPS) -> GroupRow:
    """The group's row; ``reps`` bootstrap replicates for the aggregate metrics' intervals."""
    runs = [run for run in group.runs if run.evaluated]
    tasks = group.runs[0].tasks
    curve_best, curve_step = _best_of_mean_curve(runs)
    return GroupRow(
        name=group.name, kind=group.kind, finished=group.finished, seeds=group.seeds, evaluated=len(runs),
        target_steps=group.target_steps, steps=[run.steps for run in group.runs],
        best=mean_se([run.best["mean"] for run in runs]),
        final=mean_se([run.final["mean"] for run in runs]),
        best_steps=[int(run.best["step"]) for run in runs],
        var_tasks=mean_se([_var_over_tasks(run.best) for run in runs]),
        wall_time_s=mean_se([run.wall_time_s for run in group.runs]),
        best_of_mean_curve=curve_best, best_of_mean_curve_step=curve_step,
        tasks=tasks,
        per_task={task: mean_se([run.best["per_task"].get(task) for run in runs]) for task in tasks},
        per_task_final={task: mean_se([run.final["per_task"].get(task) for run in runs]) for task in tasks},
        final_scores=_scores(runs, tasks, "final"),
        aggregates=_aggregates(runs, tasks, reps),
    )


def improvement_matrix(rows: Sequence[GroupRow], reps: int = REPS) -> dict[tuple[int, int], Interval]:
    """``{(i, j): P(row i > row j)}`` at the final evaluation, for every pair of evaluated groups trained on
    the same tasks. ``P(j > i) = 1 - P(i > j)`` replicate by replicate (ties count one half), so each
    unordered pair is bootstrapped once."""
    found: dict[tuple[int, int], Interval] = {}
    for i, row in enumerate(rows):
        for j in range(i + 1, len(rows)):
            other = rows[j]
            if not row.evaluated or not other.evaluated or sorted(row.tasks) != sorted(other.tasks):
                continue
            columns = [other.tasks.index(task) for task in row.tasks]
            p = improvement_interval(row.final_scores, other.final_scores[:, columns], reps)
            found[i, j] = p
            found[j, i] = Interval(1 - p.point, None if p.high is None else 1 - p.high,
                                   None if p.low is None else 1 - p.low)
    return found


# ------------------------------------------------------------------------------------------- formatting
def _pm(stat: Stat, scale: float = 100.0, digits: int = 1, sep: str = " ± ") -> str:
    if stat.mean is None:
        return "n/a"
    mean = f"{stat.mean * scale:.{digits}f}"
    return mean if stat.se is None else f"{mean}{sep}{stat.se * scale:.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _status(row: GroupRow) -> str:
    if row.finished:
        return "finished"
    done = ", ".join(f"{steps}" for steps in row.steps)
    return f"UNFINISHED (steps {done} of {row.target_steps})"


HEADER = ["group", "seeds", "best mean success %", "final mean success %", "step of best (per seed)",
          "Var over tasks", "best of seed-mean curve % (step)", "wall time / run", "steps", "status"]


def _best_steps(steps: Sequence[int]) -> str:
    """Each seed's step of its best evaluation; past five seeds the median (an evaluated step, the lower
    middle one for an even count) and the range."""
    if not steps:
        return "n/a"
    if len(steps) <= 5:
        return ", ".join(map(str, steps))
    return f"median {statistics.median_low(steps)} ({min(steps)}–{max(steps)})"


def _cells(row: GroupRow) -> list[str]:
    seeds = f"{len(row.seeds)}" + (f" ({row.evaluated} evaluated)" if row.evaluated < len(row.seeds) else "")
    curve = ("n/a" if row.best_of_mean_curve is None
             else f"{100 * row.best_of_mean_curve:.1f} ({row.best_of_mean_curve_step})")
    return [row.name, seeds, _pm(row.best), _pm(row.final), _best_steps(row.best_steps), _pm(row.var_tasks, 1.0, 4),
            curve, _duration(row.wall_time_s.mean), str(row.target_steps), _status(row)]


def _interval(interval: Interval | None, scale: float = 100.0, digits: int = 1) -> str:
    """``34.4 [30.0, 38.8]``; the point alone without an interval (one run)."""
    if interval is None:
        return "n/a"
    point = f"{interval.point * scale:.{digits}f}"
    if interval.low is None:
        return point
    return f"{point} [{interval.low * scale:.{digits}f}, {interval.high * scale:.{digits}f}]"


AGGREGATE_HEADER = ["group", "runs × tasks", "IQM final success % [95% CI]", "mean final success % [95% CI]",
                    "IQM best-evaluation success % [95% CI]"]


def _aggregate_cells(row: GroupRow) -> list[str]:
    aggregates = row.aggregates
    if aggregates is None:
        return [row.name, "0", "n/a", "n/a", "n/a"]
    return [row.name, f"{row.evaluated} × {len(row.tasks)}", _interval(aggregates.final_iqm),
            _interval(aggregates.final_mean), _interval(aggregates.best_iqm)]


def _markdown(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in lines])


def markdown_table(rows: Sequence[GroupRow]) -> str:
    """The main table: one line per group, mean ± s.e. over seeds."""
    return _markdown(HEADER, [_cells(row) for row in rows])


def aggregate_markdown(rows: Sequence[GroupRow]) -> str:
    """IQM and mean over runs x tasks with 95 % stratified-bootstrap intervals, one line per group."""
    return _markdown(AGGREGATE_HEADER, [_aggregate_cells(row) for row in rows])


def improvement_markdown(rows: Sequence[GroupRow], matrix: dict[tuple[int, int], Interval]) -> str:
    """``P(row > column)`` [95 % CI] at the final evaluation; "–" on the diagonal and between groups
    trained on different tasks."""
    if not matrix:
        return "P(row > column): no two evaluated groups trained on the same tasks to compare."
    header = ["P(row > column)"] + [row.name for row in rows]
    lines = [[row.name] + [_interval(matrix.get((i, j)), 1.0, 2) if (i, j) in matrix else "–"
                           for j in range(len(rows))] for i, row in enumerate(rows)]
    return _markdown(header, lines)


def per_task_markdown(rows: Sequence[GroupRow], record: str = "best") -> str:
    """Per-task success (%) at each seed's ``record`` ("best" or "final") evaluation, mean ± s.e. over
    seeds; one column per group."""
    tasks = list(dict.fromkeys(task for row in rows for task in row.tasks))
    per_task = {row.name: (row.per_task if record == "best" else row.per_task_final) for row in rows}
    lines = [[task] + [_pm(per_task[row.name][task]) if task in row.per_task else "–" for row in rows]
             for task in tasks]
    return _markdown(["task"] + [row.name for row in rows], lines)


def metric_definition(runs: Sequence[Run]) -> str:
    """The sentence printed under the table: what was measured, from the runs' own configs."""
    episodes = sorted({run.eval_episodes for run in runs if run.eval_episodes is not None})
    protocols = sorted({run.protocol for run in runs if run.protocol is not None})
    every = sorted({run.config.get("eval_every") for run in runs if run.config.get("eval_every") is not None})
    episodes_text = " or ".join(map(str, episodes)) if episodes else "?"
    return (
        f"Metric: success rate of the deterministic policy (the mean action) on a separate evaluation "
        f"environment, {episodes_text} evaluation episode(s) per task, an episode counting as a success when "
        f"`info['success']` is true at any step; evaluated every {' or '.join(map(str, every)) or '?'} vector "
        f"steps and at the end (protocol {', '.join(protocols) or '?'}). Best mean success = the highest "
        f"mean-over-tasks success of any evaluation of a run (PIVRG Table 4); final = the last evaluation. "
        f"Mean ± standard error (std with ddof=1 / sqrt(n)) over seeds, in %. Var over tasks: population "
        f"variance over tasks of the per-task success at the best evaluation (fraction², mean ± s.e.). "
        f"Step of best: the step of each seed's best evaluation, in seed order (past five seeds their median "
        f"and range). Best of seed-mean curve: the maximum over evaluation steps of the success averaged over "
        f"seeds, with its step."
    )


def aggregate_definition(reps: int = REPS) -> str:
    """The sentence under the aggregate table: what the IQM, the intervals and P(X > Y) are."""
    return (
        f"Aggregate metrics (Agarwal et al. 2021, as rliable computes them): each group's scores are the "
        f"success rates of every (run, task) at the run's final (or best) evaluation. IQM = interquartile "
        f"mean, the mean of the middle 50 % of those runs × tasks scores; mean = their mean. [95% CI]: "
        f"stratified-bootstrap percentile interval ({reps} replicates, each resampling the runs of every task "
        f"with replacement; fixed seed); none for a single run. P(row > column): probability of improvement "
        f"at the final evaluation, the chance that a run of the row's group beats a run of the column's on a "
        f"task (ties count 1/2), averaged over tasks; 0.5 = no difference."
    )


def notes(rows: Sequence[GroupRow], groups: Sequence[Group]) -> list[str]:
    """What a reader must know before comparing rows: unfinished groups, different budgets, single seeds,
    repeated seeds, runs that never evaluated."""
    found = []
    for row in rows:
        if not row.finished:
            found.append(f"{row.name}: unfinished runs (steps {', '.join(map(str, row.steps))} of "
                         f"{row.target_steps}); reported on their own, not pooled with finished runs.")
        if row.evaluated < len(row.seeds):
            found.append(f"{row.name}: {len(row.seeds) - row.evaluated} run(s) without any evaluation yet.")
        if row.evaluated == 1:
            found.append(f"{row.name}: one seed, no standard error, no bootstrap interval and no band in the "
                         f"curves.")
        if row.kind == "random":
            found.append(f"{row.name}: uniform random actions, evaluated under the same protocol (the floor of "
                         f"the success rates); a flat line in the curves.")
        repeated = sorted({seed for seed in row.seeds if row.seeds.count(seed) > 1})
        if repeated:
            found.append(f"{row.name}: seed(s) {repeated} appear more than once (two sweeps of the same "
                         f"configuration?); all are pooled.")
    budgets = sorted({row.target_steps for row in rows if row.kind == "mtl"})
    if len(budgets) > 1:
        found.append(f"Different step budgets ({', '.join(map(str, budgets))} steps): groups with different "
                     f"budgets are not pooled; compare rows of the same budget.")
    task_sets = {tuple(group.runs[0].tasks) for group in groups if group.kind == "mtl"}
    if len(task_sets) > 1:
        found.append("Groups were trained on different task sets (see the per-task table).")
    return found


def csv_text(rows: Sequence[GroupRow], matrix: dict[tuple[int, int], Interval] | None = None) -> str:
    """One line per group; numbers as fractions (success) and seconds, mean and s.e. (or point, low and
    high of the 95 % interval) in their own columns; ``p_improvement/<group>`` = P(this group > that one)."""
    out = io.StringIO()
    writer = csv.writer(out)
    stats = ("best", "final", "var_tasks", "wall_time_s")
    aggregates = ("final_iqm", "final_mean", "best_iqm")
    tasks = list(dict.fromkeys(task for row in rows for task in row.tasks))
    matrix = matrix or {}
    writer.writerow(["group", "kind", "finished", "n_seeds", "seeds", "n_evaluated", "target_steps"]
                    + [f"{name}_{part}" for name in stats for part in ("mean", "se")]
                    + ["best_step_per_seed", "best_step_median", "best_of_mean_curve", "best_of_mean_curve_step"]
                    + [f"{name}{part}" for name in aggregates for part in ("", "_low", "_high")]
                    + [f"success/{task}_{part}" for task in tasks for part in ("mean", "se")]
                    + [f"final_success/{task}_{part}" for task in tasks for part in ("mean", "se")]
                    + [f"p_improvement/{row.name}{part}" for row in rows for part in ("", "_low", "_high")])
    for i, row in enumerate(rows):
        values = [row.name, row.kind, row.finished, len(row.seeds), " ".join(map(str, row.seeds)), row.evaluated,
                  row.target_steps]
        for name in stats:
            stat = getattr(row, name)
            values += [stat.mean, stat.se]
        values += [" ".join(map(str, row.best_steps)),
                   statistics.median_low(row.best_steps) if row.best_steps else None,
                   row.best_of_mean_curve, row.best_of_mean_curve_step]
        for name in aggregates:
            interval = None if row.aggregates is None else getattr(row.aggregates, name)
            values += [None, None, None] if interval is None else [interval.point, interval.low, interval.high]
        for per_task in (row.per_task, row.per_task_final):
            for task in tasks:
                stat = per_task.get(task, Stat(None, None, 0))
                values += [stat.mean, stat.se]
        for j in range(len(rows)):
            p = matrix.get((i, j))
            values += [None, None, None] if p is None else [p.point, p.low, p.high]
        writer.writerow(["" if value is None else value for value in values])
    return out.getvalue()


def _tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                          ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("`", ""), ("~", r"\textasciitilde{}")):
        text = text.replace(char, escaped)
    for char, latex in (("±", r"$\pm$"), ("²", r"$^2$"), ("Δ", r"$\Delta$"), ("ω", r"$\omega$"),
                        ("×", r"$\times$")):
        text = text.replace(char, latex)
    return text


def _latex_tabular(header: Sequence[str], lines: Sequence[Sequence[str]], caption: str) -> str:
    """A booktabs table: the first column left-aligned, the others right-aligned."""
    out = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
           " & ".join(header) + r" \\", r"\midrule"]
    out += [" & ".join(cells) + r" \\" for cells in lines]
    return "\n".join(out + [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}", r"\end{table}"])


def _tex_name(row: GroupRow) -> str:
    return _tex_escape(row.name) + ("" if row.finished else r" $^\dagger$")


def latex_table(rows: Sequence[GroupRow], caption: str) -> str:
    """A booktabs table (Table 4 layout): method, seeds, best and final mean success (%) ± s.e., Var."""
    pm = r" $\pm$ "
    lines = [[_tex_name(row), str(len(row.seeds)), _pm(row.best, sep=pm), _pm(row.final, sep=pm),
              _pm(row.var_tasks, 1.0, 4, sep=pm)] for row in rows]
    unfinished = r" $^\dagger$ unfinished runs." if any(not row.finished for row in rows) else ""
    return _latex_tabular(["Method", "Seeds", r"Best success (\%)", r"Final success (\%)", "Var over tasks"],
                          lines, _tex_escape(caption) + unfinished)


def latex_tables(rows: Sequence[GroupRow], matrix: dict[tuple[int, int], Interval], caption: str) -> str:
    """:func:`latex_table`, then the aggregate metrics (IQM and mean with 95 % intervals) and the
    probability of improvement."""
    aggregate = [[_tex_name(row)] + [_tex_escape(cell) for cell in _aggregate_cells(row)[1:]] for row in rows]
    improvement = [[_tex_name(row)] + [_tex_escape(_interval(matrix[i, j], 1.0, 2)) if (i, j) in matrix else "--"
                                       for j in range(len(rows))] for i, row in enumerate(rows)]
    return "\n\n".join([
        latex_table(rows, caption),
        _latex_tabular(["Method", r"Runs $\times$ tasks", r"IQM final (\%)", r"Mean final (\%)",
                        r"IQM best (\%)"], aggregate,
                       "Interquartile mean (IQM) and mean of the per-(run, task) success, 95\\% stratified-"
                       "bootstrap confidence intervals in brackets (Agarwal et al. 2021)."),
        _latex_tabular([r"$P(\mathrm{row} > \mathrm{column})$"] + [str(j + 1) for j in range(len(rows))],
                       [[f"{i + 1}. {line[0]}"] + line[1:] for i, line in enumerate(improvement)],
                       "Probability of improvement at the final evaluation, 95\\% stratified-bootstrap "
                       "confidence intervals in brackets; columns numbered as the rows."),
    ])
