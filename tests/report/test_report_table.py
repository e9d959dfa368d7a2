"""The report's arithmetic and bookkeeping on summaries written by the trainer's own ``summary()``:
mean and standard error against a hand computation, grouping and naming, unfinished runs and different
budgets kept apart, the STL row, bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from mtrl.report import main
from mtrl.report.runs import group_runs, load_runs
from mtrl.report.tables import mean_se

from report_helpers import TASKS, config, write_stl_summary, write_summary


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as file:
        return {row["group"]: row for row in csv.DictReader(file)}


def _se(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(len(values))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """ls and pivrg x 3 seeds (finished), an unfinished ls run, an ls run with another budget."""
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    summaries: dict = {}
    for agg in ("ls", "pivrg"):
        for seed in range(3):
            success = rng.integers(0, 11, size=(4, len(TASKS))) / 10   # 4 evaluations x 3 tasks
            summaries[agg, seed] = write_summary(root / agg / f"seed{seed}", config(agg, seed), success,
                                                 wall_time_s=100.0 + seed)
    write_summary(root / "ls" / "seed3", config("ls", 3), np.full((2, len(TASKS)), 0.9), finished=False)
    write_summary(root / "long" / "seed0", config("ls", 0, steps=2000), np.full((8, len(TASKS)), 0.5))
    return root, summaries


def test_mean_and_standard_error_equal_a_hand_computation(sweep, tmp_path: Path, capsys) -> None:
    root, summaries = sweep
    assert main([str(root), "--out", str(tmp_path), "--no-plots"]) == 0
    rows = _read_csv(tmp_path / "report.csv")
    assert set(rows) == {"agg=ls steps=1000", "agg=pivrg steps=1000", "agg=ls steps=1000 [unfinished]",
                         "agg=ls steps=2000"}
    for agg in ("ls", "pivrg"):
        row = rows[f"agg={agg} steps=1000"]
        best = [summaries[agg, s]["best_mean_success"] for s in range(3)]
        final = [summaries[agg, s]["final_mean_success"] for s in range(3)]
        spread = [float(np.var(list(summaries[agg, s]["best"]["per_task"].values()))) for s in range(3)]
        assert row["n_seeds"] == "3" and row["seeds"] == "0 1 2" and row["finished"] == "True"
        assert float(row["best_mean"]) == pytest.approx(sum(best) / 3)
        assert float(row["best_se"]) == pytest.approx(_se(best))
        assert float(row["final_mean"]) == pytest.approx(sum(final) / 3)
        assert float(row["final_se"]) == pytest.approx(_se(final))
        assert float(row["var_tasks_mean"]) == pytest.approx(sum(spread) / 3)
        steps = [summaries[agg, s]["best"]["step"] for s in range(3)]
        assert row["best_step_per_seed"] == " ".join(map(str, steps))          # each an evaluated step
        assert int(row["best_step_median"]) == sorted(steps)[1]
        assert float(row["wall_time_s_mean"]) == pytest.approx(101.0)
        for task in TASKS:
            values = [summaries[agg, s]["best"]["per_task"][task] for s in range(3)]
            assert float(row[f"success/{task}_mean"]) == pytest.approx(np.mean(values))
        # The other reading of the paper's metric: the best step of the seed-averaged curve (<= the above).
        curve = np.mean([[e["mean"] for e in summaries[agg, s]["evaluations"]] for s in range(3)], axis=0)
        assert float(row["best_of_mean_curve"]) == pytest.approx(curve.max())
        assert int(row["best_of_mean_curve_step"]) == 250 * (int(curve.argmax()) + 1)
        assert curve.max() <= sum(best) / 3 + 1e-12

    printed = capsys.readouterr().out
    ls = rows["agg=ls steps=1000"]
    best = f"{100 * float(ls['best_mean']):.1f} ± {100 * float(ls['best_se']):.1f}"
    steps = ", ".join(str(summaries["ls", s]["best"]["step"]) for s in range(3))
    assert f"| agg=ls steps=1000 | 3 | {best} | " in printed and f" | {steps} | " in printed
    assert "step of best (per seed)" in printed
    assert "1 evaluation episode" not in printed and "10 evaluation episode(s) per task" in printed
    assert "`info['success']` is true at any step" in printed and "deterministic policy" in printed


def test_unfinished_runs_and_other_budgets_are_flagged_not_pooled(sweep, tmp_path: Path, capsys) -> None:
    root, _ = sweep
    main([str(root), "--out", str(tmp_path), "--no-plots"])
    rows = _read_csv(tmp_path / "report.csv")
    unfinished = rows["agg=ls steps=1000 [unfinished]"]
    assert unfinished["finished"] == "False" and unfinished["seeds"] == "3"
    assert float(unfinished["best_mean"]) == pytest.approx(0.9)
    assert rows["agg=ls steps=1000"]["seeds"] == "0 1 2"          # the unfinished seed 3 is not in it
    assert rows["agg=ls steps=2000"]["n_seeds"] == "1" and rows["agg=ls steps=2000"]["best_se"] == ""
    report = (tmp_path / "report.md").read_text()
    assert "UNFINISHED (steps 500 of 1000)" in report
    assert "Different step budgets (1000, 2000 steps)" in report and "not pooled" in report
    assert "agg=ls steps=2000: one seed, no standard error, no bootstrap interval" in report
    tex = (tmp_path / "report.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$^\dagger$" in tex and r" $\pm$ " in tex


def test_groups_are_named_by_what_differs(tmp_path: Path) -> None:
    success = np.full((2, len(TASKS)), 0.5)
    write_summary(tmp_path / "a", config("ls", 0), success)
    write_summary(tmp_path / "b", config("ls", 1), success)                              # pooled with a
    write_summary(tmp_path / "c", config("pivrg", 0), success)
    write_summary(tmp_path / "d", config("pivrg", 0, agent__max_grad_norm=1.0), success)
    write_summary(tmp_path / "e", config("pivrg", 0, agg__options__omega_lower=0.25), success)
    names = {group.name: group.seeds for group in group_runs(load_runs([tmp_path]))}
    # agg.options.omega_lower exists for pivrg only: it names pivrg groups, not the ls one.
    assert names == {"agg=ls agent.max_grad_norm=None": [0, 1],
                     "agg=pivrg agent.max_grad_norm=None agg.options.omega_lower=0.5": [0],
                     "agg=pivrg agent.max_grad_norm=1.0 agg.options.omega_lower=0.5": [0],
                     "agg=pivrg agent.max_grad_norm=None agg.options.omega_lower=0.25": [0]}


def test_stl_runs_join_as_the_stl_row(tmp_path: Path) -> None:
    success = np.array([[0.2, 0.4, 0.6], [0.8, 0.4, 0.2]])
    write_summary(tmp_path / "mtl", config("ls", 0), success)
    stl = {"reach-v3": [0.5, 1.0, 0.9], "push-v3": [0.1, 0.3, 0.2], "pick-place-v3": [0.0, 0.2, 0.4]}
    write_stl_summary(tmp_path / "stl", stl, steps=750)
    main([str(tmp_path), "--out", str(tmp_path / "out"), "--no-plots"])
    rows = _read_csv(tmp_path / "out" / "report.csv")
    assert list(rows)[0] == "STL" and rows["STL"]["kind"] == "stl" and rows["STL"]["finished"] == "True"
    # STL's evaluations: every task at the same step; the best is the step with the best mean over tasks.
    means = np.mean(list(stl.values()), axis=0)
    assert float(rows["STL"]["best_mean"]) == pytest.approx(means.max())
    assert float(rows["STL"]["final_mean"]) == pytest.approx(means[-1])
    assert float(rows["STL"]["success/push-v3_mean"]) == pytest.approx(stl["push-v3"][int(means.argmax())])
    assert rows["agg=ls"]["n_seeds"] == "1"
    # Two STL baselines with different budgets: two rows, named by what differs.
    write_stl_summary(tmp_path / "stl_long", stl, steps=1500)
    names = [group.name for group in group_runs(load_runs([tmp_path / "stl", tmp_path / "stl_long"]))]
    assert names == ["STL steps=1500", "STL steps=750"]


def test_mean_se_of_one_or_no_value() -> None:
    assert mean_se([0.5]).se is None and mean_se([0.5]).mean == 0.5
    assert mean_se([None, None]).mean is None
    assert mean_se([0.0, 1.0, None]).se == pytest.approx(0.5)


def test_no_runs_is_a_clear_error_with_exit_code_2(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no runs under" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "summary.json").write_text("{not json")
    assert main([str(tmp_path / "x")]) == 2          # an unreadable summary is skipped with a warning
