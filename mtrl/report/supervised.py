"""The papers' table layout for the supervised paper benchmarks (PIVRG Tables 1–3 and 5), from ``results.json``.

Reads only the ``results.json`` files that ``python -m mtrl.supervised bench=<paper benchmark>`` writes
(``"kind": "paper_benchmark"``; single-task reference runs are skipped); nothing here imports
:mod:`mtrl.supervised`. Per benchmark, one Markdown table:

* one row per method (aggregator, and noise level where it is not 0), runs differing only in the seed pooled;
* the STL row the Δm's were measured against (its source under the table);
* per metric column (grouped by task, ↑ higher / ↓ lower is better) the mean ± standard error over seeds
  (sample standard deviation / √n; the mean alone for one seed);
* MR, the mean over the metric columns of the method's rank among the rows (ties share the mean rank;
  PIVRG Sec. 4.1), printed only where several methods are present;
* Δm (%) and Var[Δm_i] (population variance over the columns' Δm's, PIVRG Tables 1 and 5): mean ± s.e.
  over seeds of each run's value.
"""

from __future__ import annotations

import glob
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtrl.experiment.checkpoint import atomic_write_text

__all__ = ["KIND", "load_paper_results", "paper_rows", "mean_ranks", "paper_table", "paper_report"]

KIND = "paper_benchmark"


def load_paper_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every multi-task paper-benchmark ``results.json`` below the given directories or glob patterns."""
    found, seen = [], set()
    for pattern in paths:
        for match in sorted(glob.glob(str(Path(pattern).expanduser()))) or []:
            base = Path(match)
            files = [base] if base.is_file() else sorted(base.rglob("results.json"))
            for path in files:
                if path in seen or path.name != "results.json":
                    continue
                seen.add(path)
                try:
                    payload = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(payload, dict) and payload.get("kind") == KIND and payload.get("trained_task") is None:
                    payload["_path"] = str(path)
                    found.append(payload)
    return found


def _mean_se(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else None
    return float(np.mean(vals)), se, len(vals)


def _method(result: Mapping[str, Any]) -> str:
    noise = float(result.get("noise") or 0.0)
    return result["aggregator"] + (f" (noise {noise:g})" if noise else "")


def paper_rows(results: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{bench: [row, ...]}``: per method the mean ± s.e. over seeds of every column, Δm and Var[Δm]."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for result in results:
        groups[(result["bench"], _method(result))].append(result)
    tables: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (bench, method), runs in sorted(groups.items()):
        columns = runs[0]["columns"]
        row: dict[str, Any] = {"bench": bench, "method": method, "columns": columns,
                               "seeds": sorted(int(r["seed"]) for r in runs), "stl": runs[0].get("stl"),
                               "report_rule": runs[0].get("report_rule"), "paths": [r.get("_path") for r in runs]}
        row["cells"] = {c["name"]: _mean_se([(r.get("test") or {}).get(c["name"]) for r in runs]) for c in columns}
        row["delta_m"] = _mean_se([r.get("delta_m_mean") for r in runs])
        row["delta_m_var"] = _mean_se([r.get("delta_m_var") for r in runs])
        tables[bench].append(row)
    return dict(tables)


def mean_ranks(rows: Sequence[Mapping[str, Any]]) -> list[float | None]:
    """Each row's mean rank over the metric columns (1 = best; ties share the mean of their ranks)."""
    if not rows:
        return []
    ranks: list[list[float]] = [[] for _ in rows]
    for column in rows[0]["columns"]:
        values = [row["cells"][column["name"]][0] for row in rows]
        if any(v is None for v in values):
            continue
        keys = np.array(values, dtype=float) * (-1.0 if column["higher_is_better"] else 1.0)
        for i, key in enumerate(keys):
            better, equal = int((keys < key).sum()), int((keys == key).sum())
            ranks[i].append(better + (equal + 1) / 2)
    return [float(np.mean(r)) if r else None for r in ranks]


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    magnitude = abs(value)
    digits = 1 if magnitude >= 100 else 2 if magnitude >= 1 else 4
    return f"{value:.{digits}f}"


def _cell(mean_se: tuple[float | None, float | None, int]) -> str:
    mean, se, _ = mean_se
    return _fmt(mean) if se is None else f"{_fmt(mean)} ± {_fmt(se)}"


def paper_table(bench: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table of one benchmark (layout of PIVRG Tables 1–3)."""
    columns = rows[0]["columns"]
    several = len(rows) > 1
    tasks = list(dict.fromkeys(c["task"] for c in columns))
    headers = ["Method"] + [f"{c['header']} {'↑' if c['higher_is_better'] else '↓'}" for c in columns]
    headers += (["MR ↓"] if several else []) + ["Δm % ↓", "Var[Δm] ↓", "seeds"]
    lines = [f"### {bench}", "",
             "Tasks: " + ", ".join(f"{t} ({', '.join(c['header'] for c in columns if c['task'] == t)})" for t in tasks),
             "", "| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    stl = rows[0].get("stl")
    if stl:
        lines.append("| STL | " + " | ".join(_fmt(stl["values"].get(c["name"])) for c in columns)
                     + " |" + (" |" if several else "") + " | | |")
    ranks = mean_ranks(rows) if several else [None] * len(rows)
    for row, rank in zip(rows, ranks):
        cells = [row["method"]] + [_cell(row["cells"][c["name"]]) for c in columns]
        cells += ([_fmt(rank)] if several else []) + [_cell(row["delta_m"]), _cell(row["delta_m_var"]),
                                                       ",".join(map(str, row["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["Test metrics (" + (rows[0].get("report_rule") or "last epoch") + "), mean ± standard error over seeds."]
    if stl:
        notes.append(f"Δm (PIVRG Eq. 3, mean over the {len(columns)} metric columns; positive = worse than STL) "
                     f"against {stl['source']}.")
    sources = {json.dumps(row.get("stl"), sort_keys=True) for row in rows}
    if len(sources) > 1:
        notes.append("Caution: the rows were measured against different STL references.")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes])


def paper_report(results: Sequence[Mapping[str, Any]], out_dir: str | Path | None = None) -> dict[str, Any]:
    """All benchmarks' tables; with ``out_dir``, writes ``paper_tables.md`` and ``paper_tables.json``."""
    tables = paper_rows(results)
    markdown = "\n\n".join(paper_table(bench, rows) for bench, rows in sorted(tables.items())) + "\n"
    files = {}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files["md"] = out / "paper_tables.md"
        atomic_write_text(markdown, files["md"])
        files["json"] = out / "paper_tables.json"
        serialisable = {bench: [{**row, "mean_rank": rank} for row, rank in zip(rows, mean_ranks(rows))]
                        for bench, rows in tables.items()}
        atomic_write_text(json.dumps(serialisable, indent=2, default=float), files["json"])
    return {"tables": tables, "markdown": markdown, "files": files}
