"""``python -m mtrl.report <dir or glob> ...``: the tables and figures of a sweep.

Reads every run below the given directories (``summary.json`` of ``python -m mtrl.train``, with its
TensorBoard events for the weight curves; ``stl_summary.json`` of ``python -m mtrl.stl`` as the STL row;
``results.json`` of the supervised benchmarks), groups runs that differ only in their seed, and writes into
``--out`` (default: the first directory):

* ``report.md`` / ``report.csv`` / ``report.tex``: per group the seeds, the best mean success over training
  (PIVRG Table 4's metric) and the final one, mean ± standard error over seeds, the step of the best,
  the variance over tasks of the per-task success, wall time, and the metric's definition and the caveats
  (unfinished runs, different budgets) under the table; the Markdown is also printed;
* ``per_task.png``: per-task success heat map (the per-task table is in ``report.md``);
* ``curves.png``: mean success vs vector steps with a standard-error band per group;
* ``weights.png``: the aggregators' task weights and PIVRG's ω over training;
* for supervised results: ``summary.md`` / ``summary.json`` (and ``noise_sweep.png``) of
  :func:`mtrl.supervised.bench.summarize`;
* for the paper benchmarks (NYUv2, Cityscapes, QM9, ...): ``paper_tables.md`` / ``paper_tables.json``, the
  papers' table layout per benchmark (:mod:`.supervised`).

Modules: :mod:`.runs` (finding, reading, grouping), :mod:`.tables` (statistics and formats),
:mod:`.plots` (figures).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtrl.report.runs import Group, ReportError, Run, group_runs, load_runs
from mtrl.report.tables import (GroupRow, csv_text, latex_table, markdown_table, metric_definition, notes,
                                per_task_markdown, summarize_group)

__all__ = ["ReportError", "Run", "Group", "GroupRow", "load_runs", "group_runs", "rl_report", "main"]

log = logging.getLogger("mtrl.report")


def rl_report(runs: Sequence[Run], out_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Writes the RL report of ``runs`` into ``out_dir``; returns the rows, the Markdown and the files."""
    from mtrl.report import plots as figures

    groups = group_runs(runs)
    rows = [summarize_group(group) for group in groups]
    table, definition, caveats = markdown_table(rows), metric_definition(runs), notes(rows, groups)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    if plots:
        files["curves"] = figures.plot_curves(groups, out_dir / "curves.png")
        files["per_task"] = figures.plot_heatmap(rows, out_dir / "per_task.png")
        weights = figures.plot_weights(groups, out_dir / "weights.png")
        if weights is not None:
            files["weights"] = weights
    sections = ["# Report", "", table, "", definition, ""]
    sections += [f"- {note}" for note in caveats] + ([""] if caveats else [])
    sections += ["## Per-task success (%) at the best evaluation, mean ± s.e. over seeds", "",
                 per_task_markdown(rows), ""]
    sections += [f"![{name}]({path.name})" for name, path in files.items()]
    sections += ["", "## Runs", ""] + [f"- {group.name}: " + ", ".join(f"seed {run.seed} `{run.path}`"
                                                                        for run in group.runs) for group in groups]
    markdown = "\n".join(sections).rstrip() + "\n"
    files["md"] = out_dir / "report.md"
    files["md"].write_text(markdown)
    files["csv"] = out_dir / "report.csv"
    files["csv"].write_text(csv_text(rows))
    files["tex"] = out_dir / "report.tex"
    files["tex"].write_text(latex_table(rows, "Mean success over tasks; mean ± standard error over seeds. "
                                        + definition.split(". ")[0] + ".") + "\n")
    console = "\n".join([table, "", definition] + [f"- {note}" for note in caveats])
    return {"rows": rows, "groups": groups, "markdown": markdown, "console": console, "files": files}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mtrl.report",
        description="Tables (report.md/.csv/.tex) and figures (per_task.png, curves.png, weights.png) of the runs "
                    "below the given directories, grouped by everything but the seed.")
    parser.add_argument("paths", nargs="+", help="sweep or run directories, or glob patterns (quoted)")
    parser.add_argument("--out", default=None, help="where the report's files go (default: the first directory)")
    parser.add_argument("--no-plots", "--no-plot", dest="plots", action="store_false", help="write no PNG")
    return parser


def _default_out(paths: Sequence[str]) -> Path:
    import glob

    first = sorted(glob.glob(paths[0])) or [paths[0]]
    path = Path(first[0])
    return path if path.is_dir() else path.parent


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    try:
        out_dir = Path(args.out) if args.out else _default_out(args.paths)
        return _report(args.paths, out_dir, args.plots)
    except ReportError as error:
        print(f"mtrl.report: error: {error}", file=sys.stderr)
        return 2


def _report(paths: Sequence[str], out_dir: Path, plots: bool) -> int:
    from mtrl.supervised.bench import load_results, summarize

    from mtrl.report.supervised import load_paper_results, paper_report

    runs = load_runs(paths, required=False)
    supervised = [result for path in paths for match in _directories(path) for result in load_results(match)]
    paper = load_paper_results(paths)
    if not runs and not supervised and not paper:
        load_runs(paths)   # raises the error that says what is missing
    if paper:
        report = paper_report(paper, out_dir)
        print(report["markdown"])
        print(f"Paper tables: {report['files']['md']}")
    if supervised:
        summarize(supervised, out_dir, plot=plots)
        print(f"\nSupervised summary: {out_dir / 'summary.md'}")
    if runs:
        report = rl_report(runs, out_dir, plots)
        print(report["console"])
        print("\nWritten: " + ", ".join(str(path) for path in report["files"].values()))
    return 0


def _directories(pattern: str) -> list[Path]:
    import glob

    return [Path(match) for match in sorted(glob.glob(str(Path(pattern).expanduser())))
            if Path(match).is_dir()]
