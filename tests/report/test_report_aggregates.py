"""The report's aggregate metrics on planted scores (IQM, mean and their intervals, the probability of
improvement between groups), and the random-policy baseline as its own row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from mtrl.report import main
from mtrl.report.runs import group_runs, is_random_policy, load_runs

from report_helpers import TASKS, config, write_random_summary, write_summary

#: Final per-task success of three ls seeds; cagrad is planted identical, pivrg above every ls run.
LS_FINAL = np.array([[0.1, 0.3, 0.0], [0.2, 0.4, 0.1], [0.0, 0.3, 0.2]])
PIVRG_FINAL = LS_FINAL + 0.5
RANDOM_FINAL = np.array([[0.0, 0.1, 0.0], [0.0, 0.0, 0.0]])


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as file:
        return {row["group"]: row for row in csv.DictReader(file)}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]], str]:
    root = tmp_path_factory.mktemp("planted")
    early = np.full((1, len(TASKS)), 0.05)          # a first evaluation below the final one
    for seed in range(3):
        for agg, final in (("ls", LS_FINAL), ("cagrad", LS_FINAL), ("pivrg", PIVRG_FINAL)):
            write_summary(root / agg / f"seed{seed}", config(agg, seed), np.vstack([early, final[seed:seed + 1]]))
    write_summary(root / "nashmtl" / "seed0", config("nashmtl", 0), np.vstack([early, LS_FINAL[:1]]))
    for seed in range(2):
        write_random_summary(root / "random" / f"seed{seed}", seed, RANDOM_FINAL[seed:seed + 1])
    out = root / "out"
    assert main([str(root), "--out", str(out), "--no-plots"]) == 0
    return out, _read_csv(out / "report.csv"), (out / "report.md").read_text()


def test_iqm_and_mean_with_intervals_of_the_runs_by_tasks_matrix(report) -> None:
    _, rows, _ = report
    for name, final in (("agg=ls", LS_FINAL), ("agg=pivrg", PIVRG_FINAL), ("random policy", RANDOM_FINAL)):
        row = rows[name]
        assert float(row["final_iqm"]) == pytest.approx(scipy.stats.trim_mean(final, 0.25, axis=None))
        assert float(row["final_mean"]) == pytest.approx(final.mean())
        for metric in ("final_iqm", "final_mean"):
            low, point, high = (float(row[metric + part]) for part in ("_low", "", "_high"))
            assert final.min() <= low <= point <= high <= final.max()
            assert low < high
    # the best evaluation of every planted run is its final one
    assert float(rows["agg=ls"]["best_iqm"]) == pytest.approx(float(rows["agg=ls"]["final_iqm"]))
    one = rows["agg=nashmtl"]                                      # one run: a point, no interval
    assert float(one["final_iqm"]) == pytest.approx(scipy.stats.trim_mean(LS_FINAL[:1], 0.25, axis=None))
    assert one["final_iqm_low"] == one["final_iqm_high"] == ""


def test_probability_of_improvement_between_groups_on_planted_scores(report) -> None:
    _, rows, markdown = report
    def p(x: str, y: str) -> tuple[float, ...]:
        return tuple(float(rows[x][f"p_improvement/{y}{part}"]) for part in ("", "_low", "_high"))

    assert p("agg=pivrg", "agg=ls") == (1.0, 1.0, 1.0)           # dominating on every task, in every resample
    assert p("agg=ls", "agg=pivrg") == (0.0, 0.0, 0.0)
    identical, low, high = p("agg=ls", "agg=cagrad")
    assert identical == 0.5 and low < 0.5 < high
    assert p("agg=cagrad", "agg=ls")[0] == 0.5
    assert rows["agg=ls"]["p_improvement/agg=ls"] == ""          # no group against itself
    assert "| agg=pivrg | " in markdown and "| P(row > column) | random policy | agg=cagrad |" in markdown
    assert "1.00 [1.00, 1.00]" in markdown and "0.50 [" in markdown


def test_the_random_policy_is_its_own_row_before_the_trained_groups(report) -> None:
    out, rows, markdown = report
    random = rows["random policy"]
    assert random["kind"] == "random" and random["seeds"] == "0 1" and random["n_evaluated"] == "2"
    assert float(random["final_mean"]) == pytest.approx(RANDOM_FINAL.mean(axis=1).mean())
    assert rows["agg=ls"]["seeds"] == "0 1 2"                    # seed 0 of the random policy is not pooled
    assert list(rows)[0] == "random policy"
    assert "random policy: uniform random actions" in markdown
    assert "Different step budgets" not in markdown               # its own `steps` is no training budget
    assert "| random policy | 2 × 3 |" in markdown
    assert r"random policy & 2 $\times$ 3" in (out / "report.tex").read_text()


def test_the_random_policy_is_recognised_by_any_of_its_markers(tmp_path: Path) -> None:
    summary = write_random_summary(tmp_path / "r", 0, RANDOM_FINAL[:1])
    assert summary["policy"] == "random" and summary["config"]["policy"] == "random"
    assert is_random_policy({"policy": "random", "config": {"agg": {"name": "ls"}}})
    assert is_random_policy({"agg": "ls", "config": {"policy": "random"}})
    assert is_random_policy({"agg": "random", "config": {}})
    assert not is_random_policy({"agg": "ls", "config": {"agg": {"name": "ls"}, "policy": None}})
    # a summary without an aggregator, marked by its policy only, still reads
    del summary["agg"]
    (tmp_path / "r" / "summary.json").write_text(json.dumps(summary))
    write_summary(tmp_path / "t", config("ls", 0), RANDOM_FINAL[:1])
    names = [(group.name, group.kind) for group in group_runs(load_runs([tmp_path]))]
    assert names == [("random policy", "random"), ("agg=ls", "mtl")]


def test_without_two_comparable_groups_there_is_no_improvement_matrix(tmp_path: Path) -> None:
    write_summary(tmp_path / "a", config("ls", 0), np.zeros((0, len(TASKS))), finished=False)   # not evaluated
    write_summary(tmp_path / "b", config("pivrg", 0), LS_FINAL[:2])
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "no two evaluated groups trained on the same tasks" in markdown
    assert "| agg=ls [unfinished] | 0 | n/a | n/a | n/a |" in markdown
