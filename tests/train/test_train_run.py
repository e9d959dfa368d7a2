"""A short MT10 run per aggregator of the design card: finite losses, the TensorBoard tags, summary.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import mtrl.aggregation as aggregation
from mtrl.experiment import run

DESIGN_CARD = ["ls", "rlw", "pcgrad", "cagrad", "nashmtl", "excessmtl", "pivrg"]


def expected_tags(tasks: list[str], pivrg: bool) -> set[str]:
    per_task = ["eval/success", "train/success", "train/return", "loss/critic", "loss/actor", "alpha",
                "agg/critic/weight", "agg/actor/weight"] + (["agg/omega"] if pivrg else [])
    tags = {f"{prefix}/{task}" for prefix in per_task for task in tasks}
    tags |= {"eval/success_mean", "agg/critic/fallbacks", "agg/actor/fallbacks",
             "perf/env_steps_per_s", "perf/updates_per_s"}
    return tags | ({"agg/var_dm"} if pivrg else set())


@pytest.mark.slow
@pytest.mark.parametrize("agg", DESIGN_CARD)
def test_short_mt10_run(agg: str, tmp_path: Path, config, tensorboard_scalars) -> None:
    if agg not in aggregation.available():
        pytest.skip(f"aggregator {agg} is not implemented yet")
    summary = run(config(f"agg={agg}"), run_dir=tmp_path)

    assert summary["steps"] == 12 and summary["updates"] == 12 - 4
    written = json.loads((tmp_path / "summary.json").read_text())
    tasks = written["tasks"]
    assert len(tasks) == 10 and written["finished"] and written["agg"] == agg
    assert [record["step"] for record in written["evaluations"]] == [6, 12]
    assert set(written["final"]["per_task"]) == set(tasks) and set(written["best_per_task"]) == set(tasks)
    assert written["best_mean_success"] >= written["final_mean_success"] - 1e-12
    assert written["config"]["agg"]["name"] == agg
    assert (tmp_path / "checkpoint.pt").is_file()

    logged = tensorboard_scalars(tmp_path)
    missing = expected_tags(tasks, pivrg=agg == "pivrg") - set(logged)
    assert not missing, f"tags missing from the event file: {sorted(missing)}"
    for tag, points in logged.items():
        if tag.startswith(("loss/", "alpha/", "agg/")):
            assert all(math.isfinite(value) for _, value in points), tag
    assert [step for step, _ in logged["loss/critic/reach-v3"]] == [6, 9, 12]
    weights = [logged[f"agg/critic/weight/{task}"][-1][1] for task in tasks]
    assert all(math.isfinite(w) for w in weights)
