"""`python -m mtrl.bench launches --quick`: one update's GPU launches, counted on the CPU."""

import json

import pytest
import torch

from mtrl.bench.__main__ import main
from mtrl.bench.launches import _Launches


def test_quick_launch_count_models_the_gpu_update(tmp_path) -> None:
    out = tmp_path / "launches.json"
    result = main(["launches", "--quick", "--torch-threads", "1", "--aggregators", "ls,pivrg", "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "launches"
    ls, pivrg = result["results"]["ls"], result["results"]["pivrg"]
    # The GPU path reads nothing back; ls fuses nothing; pivrg's ω and warm solves (critic and actor) run four stages,
    # the iterations at their fixed count.
    assert ls["host_reads"] == pivrg["host_reads"] == 0
    assert ls["stage_calls"] == {} and ls["fused"] == 0 and ls["total"] == ls["eager"] > 0
    from mtrl.aggregation import _alpha_fair
    omega = [stage for stage in pivrg["stage_calls"] if stage.startswith("_omega[")]   # keyed by its constants
    assert len(omega) == 1 and pivrg["stage_calls"] == {
        omega[0]: 2, "_prepare[0.5]": 2, "_paired_step[0.5]": 2 * _alpha_fair.WARM_ITERATIONS, "_conclude": 2}
    stages = result["stages"]
    if pivrg["total"] is None:   # inductor's Triton code generation failed here: each stage says why
        assert any(stage["launches"] is None and stage["error"] for stage in stages.values()), stages
        return
    assert pivrg["fused"] == sum(calls * stages[name]["launches"] for name, calls in pivrg["stage_calls"].items())
    assert pivrg["total"] == pivrg["eager"] + pivrg["fused"]
    assert pivrg["ratio_to_ls"] == pytest.approx(pivrg["total"] / ls["total"])
    # An iteration pair's two k×k systems are one batched launch of the Triton kernel, not an unrolled elimination.
    assert stages["_paired_step[0.5]"]["other_calls"] == 1, stages


def test_views_and_allocations_launch_nothing() -> None:
    x = torch.randn(4, 6)
    with _Launches() as counter:
        x.reshape(2, 12).t().unsqueeze(0).detach()          # views of a contiguous tensor
        torch.empty(3)
    assert counter.launches == 0
    with _Launches() as counter:
        x.t().reshape(24)            # a copy (one kernel), then the schema's unmarked _unsafe_view of it
        (x + 1).relu_()
    assert counter.launches == 3
    with _Launches() as counter:
        x.sum().item()
    assert (counter.launches, counter.host_reads) == (1, 1)


@pytest.mark.parametrize("argv", [["--aggregators", "pivrg"], ["--aggregators", "ls,nope"], ["--device", "cuda"]])
def test_bad_options_are_usage_errors(argv) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["launches", "--quick", *argv])
    assert exit_info.value.code == 2
