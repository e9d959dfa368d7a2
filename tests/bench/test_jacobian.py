"""`python -m mtrl.bench jacobian --quick` runs and writes a consistent JSON."""

import json

import pytest

from mtrl.bench.__main__ import main


def test_quick_jacobian_bench_writes_times_and_their_ratios(tmp_path) -> None:
    out = tmp_path / "jacobian.json"
    result = main(["jacobian", "--quick", "--torch-threads", "1", "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "jacobian"
    assert set(result["ms"]) == {"plain", "partitioned", "batched", "loop"}
    assert all(ms > 0 for ms in result["ms"].values())
    for route, ratio in result["ratio_to_plain"].items():
        assert ratio == pytest.approx(result["ms"][route] / result["ms"]["plain"])
    assert result["machine"]["torch_threads"] == 1


def test_a_bad_size_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["jacobian", "--tasks", "0"])
    assert exit_info.value.code == 2
