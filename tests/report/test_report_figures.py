"""What the report's figures hold: lines with markers (a one-point series shows), a panel only for what was
logged (ω and Var[Δm] for the groups that log them), one-seed groups without a band and said so, groups
whose seeds evaluated at different steps, the random policy as a flat line, the aggregate metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from mtrl.report import main, plots
from mtrl.report.runs import group_runs, load_runs
from mtrl.report.tables import improvement_matrix, summarize_group

from report_helpers import TASKS, config, write_events, write_random_summary, write_summary


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch):
    """The figures the report would save, by file name, kept open for the test."""
    import matplotlib.pyplot as plt

    saved = {}

    def keep(fig, path: Path) -> Path:
        saved[path.name] = fig
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield saved
    for fig in saved.values():
        plt.close(fig)


def _weights(value: float, step: int) -> dict[str, list[tuple[int, float]]]:
    return {f"agg/{role}/weight/{task}": [(step, value + 0.1 * i)] for role in ("critic", "actor")
            for i, task in enumerate(TASKS)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ls x 3 seeds, pivrg x 2 seeds of which one skipped an evaluation, famo x 1, pi_ls x 1, a random
    policy x 2; every trained run logged one point of each weight (and ω, Var[Δm] where the method has them)."""
    root = tmp_path_factory.mktemp("figures")
    rng = np.random.default_rng(0)
    for seed in range(3):
        write_summary(root / "ls" / f"seed{seed}", config("ls", seed), rng.uniform(size=(4, 3)))
        write_events(root / "ls" / f"seed{seed}", _weights(1.0, 1000))
    for seed, steps in ((0, [250, 500, 750, 1000]), (1, [250, 500, 1000])):
        run = root / "pivrg" / f"seed{seed}"
        write_summary(run, config("pivrg", seed), rng.uniform(size=(len(steps), 3)), steps=steps)
        write_events(run, {**_weights(0.5, 1000), "agg/var_dm": [(1000, 300.0 + seed)],
                           **{f"agg/omega/{task}": [(1000, 0.6 + 0.1 * i)] for i, task in enumerate(TASKS)}})
    write_summary(root / "famo" / "seed0", config("famo", 0), rng.uniform(size=(4, 3)))
    write_events(root / "famo" / "seed0", _weights(2.0, 1000))
    write_summary(root / "pi_ls" / "seed0", config("pi_ls", 0), rng.uniform(size=(4, 3)))
    write_events(root / "pi_ls" / "seed0", {**_weights(1.0, 1000),
                                            **{f"agg/omega/{task}": [(1000, 0.9)] for task in TASKS}})
    for seed in range(2):
        write_random_summary(root / "random" / f"seed{seed}", seed, np.full((1, 3), 0.1 * (seed + 1)))
    return root


def _lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines()}


def test_curves_band_only_several_seeds_and_leave_out_steps_not_every_seed_has(sweep, figures) -> None:
    groups = {group.name: group for group in group_runs(load_runs([sweep]))}
    plots.plot_curves(list(groups.values()), Path("curves.png"))
    ax = figures["curves.png"].axes[0]
    lines = _lines(ax)
    famo = lines["agg=famo (1 seed, no band)"]
    ls = lines["agg=ls (n=3)"]
    pivrg = lines["agg=pivrg (n=2; 1 step(s) not evaluated by every seed left out)"]
    assert list(pivrg.get_xdata()) == [250, 500, 1000]
    means = [np.mean([run.evaluations[i]["mean"] for run in groups["agg=pivrg"].runs]) for i in (0, 1, -1)]
    assert np.allclose(pivrg.get_ydata(), 100 * np.array(means))
    assert all(line.get_marker() == "o" for line in (famo, ls, pivrg))
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2 + 0                                     # ls and pivrg; famo has one seed
    random = lines["random policy (final evaluation, n=2)"]
    assert list(random.get_ydata()) == pytest.approx([15.0, 15.0])   # flat at the mean of 10 % and 20 %


def test_weights_have_markers_and_omega_panels_only_where_logged(sweep, figures) -> None:
    groups = group_runs(load_runs([sweep]))
    signals = plots.read_signals(groups)
    assert set(signals) == {"agg=famo", "agg=ls", "agg=pi_ls", "agg=pivrg"}   # not the random policy
    plots.plot_weights(signals, Path("weights.png"))
    weights = [ax for ax in figures["weights.png"].axes if ax.get_visible()]
    assert len(weights) == 4 * 2                                     # groups x (critic, actor)
    for ax in weights:
        assert len(ax.get_lines()) == len(TASKS)
        for line in ax.get_lines():
            assert line.get_marker() == "o" and len(line.get_xdata()) == 1   # one point, drawn as a marker
    ls_critic = next(ax for ax in weights if ax.get_title() == "agg=ls: critic task weight")
    assert sorted(line.get_ydata()[0] for line in ls_critic.get_lines()) == pytest.approx([1.0, 1.1, 1.2])

    plots.plot_omega(signals, Path("omega.png"))
    omega = [ax for ax in figures["omega.png"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in omega] == ["agg=pi_ls: ω per task", "agg=pivrg: ω per task",
                                                "agg=pivrg: Var[Δm] (n=2)"]
    var_dm = omega[-1].get_lines()[0]
    assert var_dm.get_marker() == "o" and list(var_dm.get_ydata()) == pytest.approx([300.5])
    assert not any("not logged" in text.get_text() for ax in omega for text in ax.texts)
    without = {name: data for name, data in signals.items() if name in ("agg=ls", "agg=famo")}
    assert plots.plot_omega(without, Path("none.png")) is None and "none.png" not in figures


def test_aggregate_figure_shows_intervals_and_the_improvement_matrix(sweep, figures) -> None:
    rows = [summarize_group(group, reps=500) for group in group_runs(load_runs([sweep]))]
    plots.plot_aggregates(rows, improvement_matrix(rows, reps=500), Path("aggregates.png"))
    intervals, matrix = figures["aggregates.png"].axes
    assert [label.get_text() for label in intervals.get_yticklabels()] == [row.name for row in rows]
    assert len(matrix.texts) == len(rows) * (len(rows) - 1)        # every pair, not the diagonal
    one_run = [line for line in intervals.get_lines() if line.get_markerfacecolor() == "white"]
    assert len(one_run) == 2 * 2                                    # famo and pi_ls: IQM and mean, hollow
    plots.plot_aggregates(rows[:1], {}, Path("single.png"))
    assert len(figures["single.png"].axes) == 1                     # no pair to compare: no matrix


def test_heatmaps_show_the_final_and_the_best_per_task_success(sweep, figures) -> None:
    rows = [summarize_group(group, reps=100) for group in group_runs(load_runs([sweep]))]
    plots.plot_heatmap(rows, Path("per_task.png"))
    final, best = figures["per_task.png"].axes[:2]
    assert final.get_title() == "at the final evaluation" and best.get_title() == "at each seed's best evaluation"
    ls = next(j for j, row in enumerate(rows) if row.name == "agg=ls")
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in final.texts}
    for i, task in enumerate(TASKS):
        assert texts[i, ls] == f"{100 * rows[ls].per_task_final[task].mean:.0f}"


def test_the_report_writes_every_figure_and_links_it(sweep, tmp_path: Path) -> None:
    assert main([str(sweep), "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    for name in ("curves", "per_task", "aggregates", "weights", "omega"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000, name
        assert f"![{name}]({name}.png)" in markdown
