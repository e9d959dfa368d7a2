"""`python -m mtrl.bench supervised --quick` times a step per method and writes consistent ratios."""

import json

import pytest

from mtrl.bench.__main__ import main


def test_quick_supervised_bench_times_each_method_against_ls_and_k_backward_passes(tmp_path) -> None:
    pytest.importorskip("torch_geometric")
    out = tmp_path / "supervised.json"
    result = main(["supervised", "--quick", "--benchmarks", "qm9", "--aggs", "ls,famo,pivrg", "--torch-threads", "1",
                   "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "supervised"
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"ls", "famo", "pivrg", "k backward passes"}
    for row in rows.values():
        assert row["benchmark"] == "qm9" and row["tasks"] == 11 and row["parameters"] == 617_675
        assert row["s_per_step"] > 0 and row["load_1min"] is not None
        assert row["ratio_to_ls"] == pytest.approx(row["s_per_step"] / rows["ls"]["s_per_step"])
        assert row["ratio_to_k_backward"] == pytest.approx(row["s_per_step"] / rows["k backward passes"]["s_per_step"])
    assert rows["famo"]["target"] == "<= 1.1 x ls" and rows["pivrg"]["target"] == "<= 1.0 x k backward"
    assert rows["ls"]["target"] is None


@pytest.mark.parametrize("argv", [["--benchmarks", "imagenet"], ["--aggs", "ls,median"]])
def test_an_unknown_benchmark_or_aggregator_is_a_usage_error(argv) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["supervised", "--quick", *argv])
    assert exit_info.value.code == 2
