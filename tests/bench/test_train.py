"""`python -m mtrl.bench train --quick` runs the real training loop, prints its table and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtrl.bench.__main__ import main


def test_bench_train_quick(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    result = main(["train", "--quick", "--aggs", "ls", "--orders", "overlap,sequential", "--torch-threads", "1",
                   "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    rows = {row["order"]: row for row in result["rows"]}
    assert set(rows) == {"overlap", "sequential"} and all(row["agg"] == "ls" for row in rows.values())
    assert sum(row["steps"] for row in rows.values()) == result["window"]   # they took turns in one window
    for row in rows.values():
        assert row["vector_steps_per_s"] > 0 and row["env_only_vector_steps_per_s"] > 0
        assert row["vector_steps_per_s"] == pytest.approx(row["steps"] / row["window_s"])
        assert row["train_over_env_only_ratio"] == pytest.approx(
            row["vector_steps_per_s"] / row["env_only_vector_steps_per_s"])
        shares = [row[f"{phase}_share"] for phase in ("env", "act", "update", "store", "evaluation", "other")]
        assert all(share >= 0 for share in shares) and sum(shares) == pytest.approx(1.0, abs=1e-6)
        assert row["update_share"] > 0 and row["env_share"] > 0      # the window includes updates
    assert result["ls_overlap_over_sequential_ratio"] == pytest.approx(
        rows["overlap"]["vector_steps_per_s"] / rows["sequential"]["vector_steps_per_s"])


@pytest.mark.parametrize("sync_phases", [False, True])
def test_bench_train_synchronises_at_chunk_ends_only_unless_asked(sync_phases: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync after every update would serialise the update and the environments (on a GPU the update's
    kernels then no longer overlap the environments' step): the window is timed per chunk instead, and
    ``--sync-phases`` adds one sync per update."""
    import mtrl.bench.train as bench_train

    calls = []
    monkeypatch.setattr(bench_train, "synchronize", lambda device: calls.append(device))
    options = ["train", "--quick", "--aggs", "ls", "--torch-threads", "1"] + (["--sync-phases"] if sync_phases else [])
    result = main(options)
    window, chunk = result["window"], result["chunk"]
    chunks = -(-window // chunk)
    assert len(calls) == 2 * chunks + (window if sync_phases else 0)   # each chunk's start and end (+ each update)
    assert result["rows"][0]["steps"] == window


def test_bench_train_refuses_a_bad_aggregator(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--quick", "--aggs", "nosuch"])
    assert exit_info.value.code == 2 and "nosuch" in capsys.readouterr().err
