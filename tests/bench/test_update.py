"""`python -m mtrl.bench update --quick` runs every requested mode and writes a consistent JSON."""

import json

import pytest
import torch

from mtrl.bench.__main__ import main
from mtrl.bench.update import profile_kernels, summarize_kernels


def test_quick_update_bench_times_each_aggregator_against_ls(tmp_path) -> None:
    out = tmp_path / "update.json"
    result = main(["update", "--quick", "--torch-threads", "1", "--aggregators", "ls,pivrg",
                   "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "update"
    rows = result["results"]["none"]
    assert set(rows) == {"ls", "pivrg"}
    for name, row in rows.items():
        assert row["ms"] > 0 and row["cpu_ms"] > 0 and row["warmup_s"] > 0
        assert row["ratio_to_ls"] == pytest.approx(row["ms"] / rows["ls"]["ms"])
        assert row["ratio_to_eager"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv", [["--aggregators", "pivrg"], ["--aggregators", "ls,nope"], ["--modes", "fast"]])
def test_bad_options_are_usage_errors(argv) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["update", "--quick", *argv])
    assert exit_info.value.code == 2


def test_kernel_summary_ranks_by_gpu_time_and_leaves_out_copies() -> None:
    kernels = [("gemm", 10.0), ("relu", 2.0), ("Memcpy HtoD (Pinned -> Device)", 50.0), ("gemm", 12.0),
               ("relu", 2.5), ("Memset (Device)", 1.0), ("softmax", 5.0)]
    summary = summarize_kernels(kernels, top=2)
    assert summary["kernels"] == 5 and summary["kernel_us"] == pytest.approx(31.5)
    assert [(row["kernel"], row["calls"]) for row in summary["top"]] == [("gemm", 2), ("softmax", 1)]
    assert summary["top"][0]["us"] == pytest.approx(22.0) and summary["top"][0]["share"] == pytest.approx(22 / 31.5)
    assert summarize_kernels([], top=3) == {"kernels": 0, "kernel_us": 0, "top": []}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (python -m mtrl.bench gpu-check runs it)")
def test_cuda_kernel_count_of_an_update_matches_its_operations() -> None:
    """``bench update``'s ``kernels`` column counts the kernels a call launches: three element-wise
    operations on CUDA tensors are three kernels (allocations and copies are not counted)."""
    x = torch.ones(1000, device="cuda")

    def three() -> None:
        y = x * 2.0
        y = y + 1.0
        torch.exp(y)

    three()
    assert profile_kernels(three)["kernels"] == 3
