"""``python -m mtrl.bench learn``: quick runs of both modes, resuming, bad input, and the statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mtrl.bench.__main__ import main
from mtrl.bench.learn import mean_se, welch_interval


def _check_ratio(entry: dict) -> None:
    ours, sb3 = entry["ours"]["stats"]["wall_time_s"]["mean"], entry["sb3"]["stats"]["wall_time_s"]["mean"]
    assert ours > 0 and sb3 > 0
    assert entry["wall_time_ratio_ours_over_sb3"] == pytest.approx(ours / sb3)


def test_quick_parity_writes_per_run_json_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir, out = tmp_path / "runs", tmp_path / "parity.json"
    argv = ["learn", "--quick", "--workers", "1", "--run-dir", str(run_dir), "--out", str(out)]
    result = main(argv)
    assert json.loads(out.read_text())["mode"] == "parity"
    entry = result["per_task"]["reach-v3"]
    assert sorted(result["settings"]) == sorted(["steps", "warmup_steps", "eval_every", "hidden", "layers",
                                                  "batch_size", "protocol", "max_episode_steps", "eval_episodes",
                                                  "temperature_loss", "tasks"])
    for agent in ("ours", "sb3"):
        assert entry[agent]["seeds"] == [0, 1]
        for run in (r for r in result["runs"] if r["spec"]["runner"] == agent):
            curve = run["result"]["curve"]
            assert [point["step"] for point in curve] == [30, 60]   # --quick: eval every 30 of 60 steps
            assert all(0 <= point[key] <= 1 for point in curve for key in ("deterministic", "stochastic"))
            assert all(point["alpha"] > 0 and np.isfinite(point["entropy"]) for point in curve)
            assert (run["result"]["alpha"], run["result"]["entropy"]) == (curve[-1]["alpha"], curve[-1]["entropy"])
            late = np.mean([point["deterministic"] for point in curve])   # both evaluations: fewer than three
            assert entry[agent]["late_deterministic"][run["spec"]["seed"]] == pytest.approx(late)
        assert (run_dir / agent / "reach-v3" / "seed1.json").is_file()
        mean, se = entry[agent]["stats"]["final_deterministic"].values()
        assert mean == pytest.approx(np.mean(entry[agent]["final_deterministic"])) and se >= 0
    assert sorted(entry["gap"]) == sorted(["final_deterministic", "final_stochastic", "late_deterministic",
                                           "late_stochastic"])
    gap = entry["gap"]["final_deterministic"]
    assert gap["difference"] == pytest.approx(np.mean(entry["ours"]["final_deterministic"])
                                              - np.mean(entry["sb3"]["final_deterministic"]))
    _check_ratio(entry)
    assert "gap ours - SB3" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:     # finished runs are never overwritten silently
        main(argv)
    assert exit_info.value.code == 2
    assert "--resume" in capsys.readouterr().err
    resumed = main([*argv, "--resume"])
    assert "4 runs (4 already finished)" in capsys.readouterr().out
    assert resumed["per_task"]["reach-v3"]["ours"]["final_deterministic"] == entry["ours"]["final_deterministic"]
    with pytest.raises(SystemExit) as exit_info:     # other settings do not mix with the finished runs
        main([*argv, "--resume", "--protocol", "mtrl"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:     # nor does the other temperature loss (the A/B's variant)
        main([*argv, "--resume", "--temperature-loss", "log_alpha"])
    assert exit_info.value.code == 2


def test_quick_multitask_curves_random_level_and_png(tmp_path: Path) -> None:
    tasks = ["reach-v3", "window-open-v3"]
    result = main(["learn", "--quick", "--multitask", "--tasks", *tasks, "--aggs", "ls", "pivrg", "--workers", "2",
                   "--run-dir", str(tmp_path)])
    assert result["mode"] == "multitask" and Path(result["png"]).stat().st_size > 0
    assert len(result["random_policy"]["per_seed"]) == 2 and 0 <= result["random_policy"]["mean"] <= 1
    for agg in ("ls", "pivrg"):
        entry = result["per_agg"][agg]
        assert [row[0] for row in entry["curve"]] == [30, 60] and len(entry["final_mean_success"]) == 2
        assert sorted(entry["per_task_curves"]) == sorted(tasks)
        summary = json.loads((tmp_path / agg / "seed1" / "summary.json").read_text())   # mtrl.train's own
        assert summary["tasks"] == tasks and summary["agg"] == agg
        assert summary["config"]["agent"]["name"] == "sac_small"   # the CPU preset (--quick: smaller still)
    record = next(r for r in result["runs"] if r["spec"]["runner"] == "random" and r["spec"]["seed"] == 1)
    random = json.loads((tmp_path / "random" / "seed1" / "summary.json").read_text())   # for mtrl.report
    assert random["policy"] == "random" and random["final"]["per_task"] == record["result"]["per_task"]


def test_the_mt10_study_names_the_whole_benchmark_and_seeds_per_aggregator(tmp_path: Path) -> None:
    from mtrl.bench.__main__ import build_parser
    from mtrl.bench.learn import LearnError, _settings, _specs

    def specs(*argv: str) -> list[dict]:
        args = build_parser().parse_args(["learn", "--multitask", "--run-dir", str(tmp_path), *argv])
        return [spec for spec, _ in _specs(args, _settings(args), tmp_path)]

    study = specs("--tasks", "mt10", "--aggs", "ls", "pivrg", "nashmtl:1", "famo:1", "--seeds", "3")
    assert all(len(spec["tasks"]) == 10 and spec["agent"] == "sac_small" for spec in study)
    runs = sorted((spec.get("agg", "random"), spec["seed"]) for spec in study)
    assert runs == sorted([(agg, seed) for agg in ("ls", "pivrg", "random") for seed in range(3)]
                          + [("nashmtl", 0), ("famo", 0)])
    for bad in (["--aggs", "ls:4"], ["--aggs", "ls:x"], ["--aggs", "ls", "ls:1"], ["--tasks", "mt11"]):
        with pytest.raises(LearnError):
            specs("--seeds", "3", *bad)


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "reach"], "unknown reach"),
    (["--seeds", "0"], "--seeds"),
    (["--multitask", "--aggs", "nope"], "--aggs"),
    (["--eval-episodes", "0"], "--eval-episodes"),
    (["--device", "cuda:7"], "--device"),   # learn trains on the CPU (without CUDA the harness refuses first)
])
def test_bad_input_exits_2_with_one_line(extra: list[str], message: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["learn", "--run-dir", str(tmp_path), *extra])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not any(tmp_path.iterdir())


def test_statistics_match_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, 6).tolist(), rng.uniform(0, 1, 9).tolist()
    mean, se = mean_se(a)
    assert mean == pytest.approx(np.mean(a)) and se == pytest.approx(stats.sem(a))
    reference = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    interval = welch_interval(a, b)
    assert (interval["low"], interval["high"]) == pytest.approx((reference.low, reference.high))
    assert interval["low"] < interval["difference"] < interval["high"]
    # constant samples: no spread, a zero-width interval at the difference; one value: no interval
    assert welch_interval([0.5, 0.5], [0.25, 0.25]) == {"difference": 0.25, "low": 0.25, "high": 0.25, "df": None}
    assert welch_interval([0.5], [0.1, 0.2])["low"] is None and mean_se([0.3]) == (0.3, None)


def test_interrupted_multitask_run_is_summarized_then_continued(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from mtrl.bench.learn import train_multitask

    argv = ["learn", "--quick", "--multitask", "--tasks", "reach-v3", "window-open-v3", "--aggs", "ls",
            "--seeds", "1", "--workers", "1", "--run-dir", str(tmp_path)]
    spec = {"runner": "multitask", "steps": 60, "warmup_steps": 20, "eval_every": 30, "hidden": 32, "layers": 1,
            "batch_size": 16, "protocol": "metaworld", "max_episode_steps": 20, "eval_episodes": 1,
            "tasks": ["reach-v3", "window-open-v3"], "agg": "ls", "seed": 0, "train_dir": str(tmp_path / "ls" / "seed0")}
    train_multitask({**spec, "steps": 30})          # a run stopped at step 30 (its checkpoint and summary.json)
    capsys.readouterr()

    so_far = main([*argv, "--summarize"])            # trains nothing, shows the curve so far
    assert so_far["per_agg"]["ls"]["unfinished_seeds"] == [0] and so_far["per_agg"]["ls"]["steps"] == [30]
    assert not (tmp_path / "ls" / "seed0.json").exists() and not (tmp_path / "random").exists()
    resumed = main([*argv, "--resume"])              # continues it from its checkpoint to step 60
    assert resumed["per_agg"]["ls"]["steps"] == [60] and resumed["per_agg"]["ls"]["unfinished_seeds"] == []
    assert [row[0] for row in resumed["per_agg"]["ls"]["curve"]] == [30, 60]


def test_late_success_is_the_mean_of_the_last_evaluations() -> None:
    from mtrl.bench.learn import LATE_EVALUATIONS, _late

    curve = [{"step": 1000 * i, "deterministic": value} for i, value in enumerate([0.0, 0.0, 1.0, 0.5, 0.0, 1.0])]
    assert LATE_EVALUATIONS == 3 and _late(curve, "deterministic") == pytest.approx(0.5)
    assert _late(curve[:1], "deterministic") == 0.0


def test_runs_from_before_a_setting_existed_still_resume(tmp_path: Path) -> None:
    """A run written before ``temperature_loss`` was a setting had the α form; it joins runs that name it,
    and not those of the other form."""
    from mtrl.bench.learn import LearnError, _load_finished

    spec = {"runner": "ours", "steps": 10, "temperature_loss": "alpha", "task": "reach-v3", "seed": 0}
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps({"spec": {key: value for key, value in spec.items() if key != "temperature_loss"},
                                "result": {"final_deterministic": 0.5}}))
    assert _load_finished([(spec, path)], resume=True)[path]["spec"] == spec
    with pytest.raises(LearnError, match="other settings"):
        _load_finished([({**spec, "temperature_loss": "log_alpha"}, path)], resume=True)
