"""The report's numbers: per group, mean and standard error over seeds; as Markdown, CSV and LaTeX.

Per run (seed), from its evaluations (deterministic policy, every ``eval_every`` steps and at the end):

* best mean success: the highest mean-over-tasks success of any evaluation (the PIVRG paper's Table 4
  metric, Sec. 4.3: "the best average success rate ... throughout the entire training period");
* final mean success: the last evaluation's;
* step of the best: the step of that evaluation;
* Var over tasks: the population variance over tasks of the per-task success at the best evaluation (the
  spread PIVRG reduces; with s^STL = 1, Var[Δm] = 10^4 of it);

then per group the mean over seeds and the standard error ``std(ddof=1) / sqrt(n)`` (none for one seed).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtrl.report.runs import Group, Run

__all__ = ["Stat", "GroupRow", "mean_se", "summarize_group", "metric_definition", "notes", "markdown_table",
           "per_task_markdown", "csv_text", "latex_table"]


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
    best_step: Stat
    var_tasks: Stat
    wall_time_s: Stat
    best_of_mean_curve: float | None  # max over evaluation steps of the seed-mean curve (the other reading)
    tasks: list[str]
    per_task: dict[str, Stat]         # per-task success at each seed's best evaluation


def _var_over_tasks(record: dict[str, Any]) -> float:
    return float(np.var(list(record["per_task"].values())))


def _best_of_mean_curve(runs: Sequence[Run]) -> float | None:
    """The other reading of "best average success over seeds": average the seeds' curves at each
    evaluation step that every seed has, then take the best step."""
    steps = set.intersection(*({record["step"] for record in run.evaluations} for run in runs)) if runs else set()
    if not steps:
        return None
    curve = [np.mean([next(r["mean"] for r in run.evaluations if r["step"] == step) for run in runs])
             for step in sorted(steps)]
    return float(max(curve))


def summarize_group(group: Group) -> GroupRow:
    runs = [run for run in group.runs if run.evaluated]
    tasks = group.runs[0].tasks
    return GroupRow(
        name=group.name, kind=group.kind, finished=group.finished, seeds=group.seeds, evaluated=len(runs),
        target_steps=group.target_steps, steps=[run.steps for run in group.runs],
        best=mean_se([run.best["mean"] for run in runs]),
        final=mean_se([run.final["mean"] for run in runs]),
        best_step=mean_se([run.best["step"] for run in runs]),
        var_tasks=mean_se([_var_over_tasks(run.best) for run in runs]),
        wall_time_s=mean_se([run.wall_time_s for run in group.runs]),
        best_of_mean_curve=_best_of_mean_curve(runs),
        tasks=tasks,
        per_task={task: mean_se([run.best["per_task"].get(task) for run in runs]) for task in tasks},
    )


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


HEADER = ["group", "seeds", "best mean success %", "final mean success %", "step of best", "Var over tasks",
          "best of seed-mean curve %", "wall time / run", "steps", "status"]


def _cells(row: GroupRow) -> list[str]:
    seeds = f"{len(row.seeds)}" + (f" ({row.evaluated} evaluated)" if row.evaluated < len(row.seeds) else "")
    step = "n/a" if row.best_step.mean is None else f"{row.best_step.mean:.0f}"
    curve = "n/a" if row.best_of_mean_curve is None else f"{100 * row.best_of_mean_curve:.1f}"
    return [row.name, seeds, _pm(row.best), _pm(row.final), step, _pm(row.var_tasks, 1.0, 4), curve,
            _duration(row.wall_time_s.mean), str(row.target_steps), _status(row)]


def markdown_table(rows: Sequence[GroupRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def per_task_markdown(rows: Sequence[GroupRow]) -> str:
    """Per-task success (%) at each seed's best evaluation, mean ± s.e. over seeds; one column per group."""
    tasks = list(dict.fromkeys(task for row in rows for task in row.tasks))
    lines = ["| task | " + " | ".join(row.name for row in rows) + " |", "|" + " --- |" * (len(rows) + 1)]
    for task in tasks:
        cells = [_pm(row.per_task[task]) if task in row.per_task else "–" for row in rows]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        f"Best of seed-mean curve: the maximum over evaluation steps of the success averaged over seeds."
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
            found.append(f"{row.name}: one seed, no standard error.")
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


def csv_text(rows: Sequence[GroupRow]) -> str:
    """One line per group; numbers as fractions (success) and seconds, mean and s.e. in their own columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    stats = ("best", "final", "best_step", "var_tasks", "wall_time_s")
    tasks = list(dict.fromkeys(task for row in rows for task in row.tasks))
    writer.writerow(["group", "kind", "finished", "n_seeds", "seeds", "n_evaluated", "target_steps"]
                    + [f"{name}_{part}" for name in stats for part in ("mean", "se")] + ["best_of_mean_curve"]
                    + [f"success/{task}_{part}" for task in tasks for part in ("mean", "se")])
    for row in rows:
        values = [row.name, row.kind, row.finished, len(row.seeds), " ".join(map(str, row.seeds)), row.evaluated,
                  row.target_steps]
        for name in stats:
            stat = getattr(row, name)
            values += [stat.mean, stat.se]
        values.append(row.best_of_mean_curve)
        for task in tasks:
            stat = row.per_task.get(task, Stat(None, None, 0))
            values += [stat.mean, stat.se]
        writer.writerow(["" if value is None else value for value in values])
    return out.getvalue()


def _tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                          ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("`", ""), ("~", r"\textasciitilde{}")):
        text = text.replace(char, escaped)
    for char, latex in (("±", r"$\pm$"), ("²", r"$^2$"), ("Δ", r"$\Delta$"), ("ω", r"$\omega$")):
        text = text.replace(char, latex)
    return text


def latex_table(rows: Sequence[GroupRow], caption: str) -> str:
    """A booktabs table (Table 4 layout): method, seeds, best and final mean success (%) ± s.e., Var."""
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{lrrrr}", r"\toprule",
             r"Method & Seeds & Best success (\%) & Final success (\%) & Var over tasks \\", r"\midrule"]
    pm = r" $\pm$ "
    for row in rows:
        name = _tex_escape(row.name) + ("" if row.finished else r" $^\dagger$")
        cells = [name, str(len(row.seeds)), _pm(row.best, sep=pm), _pm(row.final, sep=pm),
                 _pm(row.var_tasks, 1.0, 4, sep=pm)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{_tex_escape(caption)}"
              + (r" $^\dagger$ unfinished runs." if any(not row.finished for row in rows) else "") + "}",
              r"\end{table}"]
    return "\n".join(lines)
