"""`python -m mtrl.bench gpu-check --device cpu --quick`: every phase runs (the install is skipped where the
stack imports), each phase is isolated, learning runs stop by ctrl-C at their deadline, one bundle comes out."""

import json
import sys
import textwrap

import torch

from mtrl.bench import gpu_check
from mtrl.bench.__main__ import main


def test_quick_gpu_check_on_the_cpu_bundles_every_phase(tmp_path) -> None:
    result = main(["gpu-check", "--device", "cpu", "--quick", "--torch-threads", "1", "--aggs", "ls",
                   "--out-dir", str(tmp_path)])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    bundle = json.loads((tmp_path / "gpu_check.json").read_text())
    phases = bundle["phases"]
    assert list(phases) == ["install", "tests", "update", "train", "learn"] == list(result["phases"])
    assert phases["tests"]["status"] == "ok"
    assert ("2 passed" in phases["tests"]["result"]["summary"]) == torch.cuda.is_available()   # else 2 skipped
    assert phases["install"]["status"] == "ok" and phases["install"]["result"]["stack"] == "already importable"
    assert phases["update"]["status"] == "ok" and phases["update"]["result"]["none"]["ls"]["ms"] > 0
    assert phases["train"]["status"] in ("ok", "skipped")
    run = phases["learn"]["result"]["ls"]
    assert phases["learn"]["status"] == "ok" and run["steps"] > 0 and run["steps_per_s"] > 0
    assert [point["step"] for point in run["success_curve"]] == [20, 40]


def test_learning_runs_are_stopped_by_ctrl_c_and_keep_their_summary(tmp_path, monkeypatch) -> None:
    """A stand-in trainer that runs until ctrl-C, then writes its summary as mtrl.train does."""
    trainer = textwrap.dedent("""
        import json, signal, sys, time
        from pathlib import Path
        def stop(*_):
            Path(sys.argv[1], "summary.json").write_text(json.dumps(
                {"finished": False, "steps": 300, "updates": 200, "wall_time_s": 2.0,
                 "evaluations": [{"step": 100, "mean": 0.5}]}))
            sys.exit(0)
        signal.signal(signal.SIGINT, stop)
        Path(sys.argv[1]).mkdir(parents=True)
        while True:
            time.sleep(0.05)
    """)
    monkeypatch.setattr(gpu_check, "_learn_command", lambda agg, args, run_dir: [sys.executable, "-c", trainer, str(run_dir)])
    monkeypatch.setattr(gpu_check, "STOP_GRACE_S", 2)
    with open(tmp_path / "log", "w") as log:
        result = gpu_check.learn(None, ["ls", "pivrg"], tmp_path, log, timeout=6)
    for agg in ("ls", "pivrg"):
        assert result[agg]["finished"] is False and result[agg]["steps_per_s"] == 150
        assert result[agg]["success_curve"] == [{"step": 100, "mean": 0.5, "per_task": None}]


def test_a_failing_phase_does_not_lose_the_others(tmp_path, monkeypatch) -> None:
    def broken(*_):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(gpu_check, "update", broken)
    monkeypatch.setattr(gpu_check, "learn", lambda *_: {"ls": {"steps": 1}})
    result = main(["gpu-check", "--device", "cpu", "--phases", "update,learn", "--out-dir", str(tmp_path)])
    assert result["phases"]["update"]["status"] == "failed" and "out of memory" in result["phases"]["update"]["error"]
    assert result["phases"]["learn"] == {**result["phases"]["learn"], "status": "ok", "result": {"ls": {"steps": 1}}}
    assert json.loads((tmp_path / "gpu_check.json").read_text())["phases"]["learn"]["status"] == "ok"
