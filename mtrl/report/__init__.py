"""``python -m mtrl.report <dir or glob> ...``: the tables and figures of a sweep.

Reads every run below the given directories (``summary.json`` of ``python -m mtrl.train``, with its
TensorBoard events for the weight curves; ``stl_summary.json`` of ``python -m mtrl.stl`` as the STL row;
``results.json`` of the supervised benchmarks), groups runs that differ only in their seed, and writes into
``--out`` (default: the first directory):

* ``report.md`` / ``report.csv`` / ``report.tex``: per group the seeds, the best mean success over training
  (PIVRG Table 4's metric) and the final one, mean ± standard error over seeds, each seed's step of the
  best, the variance over tasks of the per-task success, wall time, and the metric's definition and the
  caveats (unfinished runs, different budgets) under the table; then the interquartile mean and mean over
  runs x tasks with stratified-bootstrap intervals and the probability of improvement between groups
  (Agarwal et al. 2021); the per-task tables; the Markdown tables are also printed;
* ``per_task.png``: per-task success heat maps (final and best evaluation);
* ``curves.png``: mean success vs vector steps with a standard-error band per group (the random policy
  as a flat line);
* ``aggregates.png``: IQM and mean with their intervals, and the probability-of-improvement matrix;
* ``weights.png``: the aggregators' task weights over training; ``omega.png``: PIVRG's (and the ``pi_*``
  variants') ω and Var[Δm] over training;
* for supervised results: ``summary.md`` / ``summary.json`` (and ``noise_sweep.png``) of
  :func:`mtrl.supervised.bench.summarize`;
* for the paper benchmarks (NYUv2, Cityscapes, QM9, ...): ``paper_tables.md`` / ``paper_tables.json``, the
  papers' table layout per benchmark (:mod:`.supervised`).

Modules: :mod:`.runs` (finding, reading, grouping), :mod:`.tables` (statistics and formats),
:mod:`.plots` (figures).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtrl import validation
from mtrl.report.runs import Group, ReportError, Run, group_runs, load_runs
from mtrl.report.tables import (GroupRow, aggregate_definition, aggregate_markdown, csv_text, improvement_markdown,
                                improvement_matrix, latex_tables, markdown_table, metric_definition, notes,
                                per_task_markdown, summarize_group)
from mtrl.experiment.checkpoint import atomic_write_text

__all__ = ["ReportError", "Run", "Group", "GroupRow", "load_runs", "group_runs", "rl_report", "main"]

log = logging.getLogger("mtrl.report")


class _Files:
    """The report's files, written one by one (each atomically); a failure names what is complete."""

    def __init__(self) -> None:
        self.written: list[Path] = []

    def write(self, path: Path, write: Callable[[Path], Any]) -> Any:
        done = (f"complete: {', '.join(p.name for p in self.written)}" if self.written else "nothing was written")
        with validation.writing(path, f"{done}; files not rewritten keep their previous version"):
            result = write(path)
        if result is not None:
            self.written.append(path)
        return result

    @staticmethod
    def text(text: str) -> Callable[[Path], Path]:
        def write(path: Path) -> Path:
            atomic_write_text(text, path)
            return path

        return write


def rl_report(runs: Sequence[Run], out_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Writes the RL report of ``runs`` into ``out_dir``; returns the rows, the Markdown and the files.

    Raises:
        OutputError: a file could not be written (full disk); the message names it and the complete ones.
    """
    from mtrl.report import plots as figures

    groups = group_runs(runs)
    rows = [summarize_group(group) for group in groups]
    matrix = improvement_matrix(rows)
    table, definition, caveats = markdown_table(rows), metric_definition(runs), notes(rows, groups)
    aggregate = ["## Aggregate metrics over runs × tasks", "", aggregate_markdown(rows), "",
                 improvement_markdown(rows, matrix), "", aggregate_definition()]
    output = _Files()
    files: dict[str, Path] = {}
    if plots:
        for name, plot in figures.report_figures(groups, rows, matrix).items():
            written = output.write(out_dir / f"{name}.png", plot)
            if written is not None:
                files[name] = written
    sections = ["# Report", "", table, "", definition, ""]
    sections += [f"- {note}" for note in caveats] + ([""] if caveats else [])
    sections += aggregate + [""]
    for record in ("final", "best"):
        sections += [f"## Per-task success (%) at the {record} evaluation, mean ± s.e. over seeds", "",
                     per_task_markdown(rows, record), ""]
    sections += [f"![{name}]({path.name})" for name, path in files.items()]
    sections += ["", "## Runs", ""] + [f"- {group.name}: " + ", ".join(f"seed {run.seed} `{run.path}`"
                                                                        for run in group.runs) for group in groups]
    markdown = "\n".join(sections).rstrip() + "\n"
    latex = latex_tables(rows, matrix, "Mean success over tasks; mean ± standard error over seeds. "
                         + definition.split(". ")[0] + ".") + "\n"
    for name, text in (("md", markdown), ("csv", csv_text(rows, matrix)), ("tex", latex)):
        files[name] = output.write(out_dir / f"report.{name}", output.text(text))
    console = "\n".join([table, "", definition] + [f"- {note}" for note in caveats] + [""] + aggregate)
    return {"rows": rows, "groups": groups, "markdown": markdown, "console": console, "files": files}


def _parser() -> validation.ArgumentParser:
    parser = validation.ArgumentParser(
        prog="python -m mtrl.report",
        description="Tables (report.md/.csv/.tex) and figures (curves.png, per_task.png, aggregates.png, weights.png, "
                    "omega.png) of the runs below the given directories, grouped by everything but the seed.")
    parser.add_argument("paths", nargs="+", help="sweep or run directories, or glob patterns (quoted)")
    parser.add_argument("--out", default=None, help="where the report's files go (default: the first directory)")
    parser.add_argument("--no-plots", "--no-plot", dest="plots", action="store_false", help="write no PNG")
    return parser


def _default_out(paths: Sequence[str]) -> Path:
    import glob

    first = sorted(glob.glob(paths[0])) or [paths[0]]
    path = Path(first[0])
    return path if path.is_dir() else path.parent


class _Skipped(logging.Handler):
    """Holds the readers' warnings (skipped files) until the report knows whether it has runs at all."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mtrl.report``: 0 done; 2 bad input (nothing written) or a file that could not be written,
    each with one line on stderr."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    skipped = _Skipped()
    loggers = [logging.getLogger(name) for name in ("mtrl.report", "mtrl.supervised")]
    propagate = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(skipped)
        logger.propagate = False
    try:
        out_dir = Path(args.out) if args.out else _default_out(args.paths)
        validation.check_writable_dir(out_dir, "the report's folder", "Pass --out <a writable folder>.")
        return _report(args.paths, out_dir, args.plots, skipped)
    except (validation.ConfigError, validation.OutputError) as error:
        print(f"mtrl.report: error: {validation.one_line(error)}", file=sys.stderr)
        return 2
    finally:
        for logger, value in zip(loggers, propagate):
            logger.removeHandler(skipped)
            logger.propagate = value


def _report(paths: Sequence[str], out_dir: Path, plots: bool, skipped: _Skipped) -> int:
    from mtrl.supervised.bench import load_results, summarize

    from mtrl.report.supervised import load_paper_results, paper_report

    supervised = [result for path in paths for match in _directories(path) for result in load_results(match)]
    runs = load_runs(paths, required=False)
    paper = load_paper_results(paths)
    if not runs and not supervised and not paper:
        if skipped.messages:   # files were there but none could be read: say why, in the one line
            raise ReportError(f"no usable run under {', '.join(paths)}: {' '.join(skipped.messages)}")
        load_runs(paths)   # raises the error that says what is missing
    for message in skipped.messages:   # some runs are usable: the skipped files are warnings
        print(f"mtrl.report: warning: {message}", file=sys.stderr)
    if paper:
        with validation.writing(out_dir, "no paper table was written"):
            report = paper_report(paper, out_dir)
        print(report["markdown"])
        print(f"Paper tables: {report['files']['md']}")
    if supervised:
        with validation.writing(out_dir, "no report file was written"):
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
