"""`python -m mtrl.bench env --quick` runs, prints its table and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import envs
from mtrl.bench.__main__ import main


def test_bench_env_quick(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    result = main(["env", "--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    rows = {(row["backend"], row["strategy"]): row for row in result["rows"]}
    expected = {("gymnasium", "sync")} | ({("envpool", "threads")} if envs.envpool_available() else set())
    assert set(rows) == expected
    for row in rows.values():
        assert row["median_vector_steps_per_s"] > 0 and row["best_vector_steps_per_s"] >= row["median_vector_steps_per_s"]
        assert row["transitions_per_s"] == pytest.approx(row["median_vector_steps_per_s"])   # mt1: one task
    if envs.envpool_available():
        ratio = rows["envpool", "threads"]["median_vector_steps_per_s"] / rows["gymnasium", "sync"]["median_vector_steps_per_s"]
        assert result["envpool_over_gymnasium_ratio"] == pytest.approx(ratio)
        assert result["envpool_over_gymnasium_sync_ratio"] == pytest.approx(ratio)
    assert result["machine"]["cpu_count"] >= 1 and result["benchmark"] == "env"


def test_bench_env_refuses_an_unknown_backend(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["env", "--quick", "--backends", "gym"])
    assert exit_info.value.code == 2 and "--backends gymnasium,envpool" in capsys.readouterr().err
