"""`python -m mtrl.bench update --quick` runs every requested mode and writes a consistent JSON."""

import json

import pytest

from mtrl.bench.__main__ import main


def test_quick_update_bench_times_each_aggregator_against_ls(tmp_path) -> None:
    out = tmp_path / "update.json"
    result = main(["update", "--quick", "--torch-threads", "1", "--aggregators", "ls,jacobian,pivrg",
                   "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "update"
    rows = result["results"]["none"]
    assert set(rows) == {"ls", "jacobian", "pivrg"}
    for name, row in rows.items():
        assert row["ms"] > 0 and row["warmup_s"] > 0
        assert row["ratio_to_ls"] == pytest.approx(row["ms"] / rows["ls"]["ms"])
        assert row["ratio_to_eager"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv", [["--aggregators", "pivrg"], ["--aggregators", "ls,nope"], ["--modes", "fast"]])
def test_bad_options_are_usage_errors(argv) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["update", "--quick", *argv])
    assert exit_info.value.code == 2
