"""The single-task SB3 baseline: `python -m mtrl.stl` writes the per-task success the trainer reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mtrl.stl import STLConfigError, validate

ROOT = Path(__file__).resolve().parents[1]


def stl_config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="stl", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def test_cli_writes_stl_success_json(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "mtrl.stl", "env=mt1", "env.task=reach-v3", "protocol=mtrl",
        "steps=300", "warmup_steps=100", "eval_every=200", "sac.hidden_dim=32", "sac.hidden_layers=2",
        "sac.batch_size=32", "tensorboard=false", "torch_threads=1", f"hydra.run.dir={tmp_path}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    success = json.loads((tmp_path / "stl_success.json").read_text())
    assert list(success) == ["reach-v3"] and 0.0 <= success["reach-v3"] <= 1.0
    summary = json.loads((tmp_path / "stl_summary.json").read_text())
    record = summary["per_task"]["reach-v3"]
    assert [e["step"] for e in record["evaluations"]] == [200, 300]   # every eval_every steps and at the end
    assert record["best"] == max(e["success"] for e in record["evaluations"]) == success["reach-v3"]
    assert summary["config"]["protocol"]["name"] == "mtrl"


def test_config_defaults() -> None:
    s = validate(stl_config())
    assert s["tasks"] == [
        "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
    ]
    assert (s["protocol"].name, s["eval_episodes"], s["steps"]) == ("metaworld", 10, 2_000_000)
    assert (s["hidden_dim"], s["hidden_layers"], s["lr"], s["batch_size"], s["gamma"], s["tau"]) == (
        400, 3, 3e-4, 128, 0.99, 0.005)
    assert validate(stl_config("protocol=mtrl", "tasks=[push-v3]"))["tasks"] == ["push-v3"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["env=mt1", "env.task=reach"], "Valid tasks: .*reach-v3"),
        (["tasks=[reach-v3,nope-v3]"], "Valid tasks"),
        (["steps=0"], "steps"),
        (["warmup_steps=-1"], "warmup_steps"),
        (["eval_episodes=0"], "eval_episodes"),
        (["report=mean"], "report"),
        (["device=tpu"], "device"),
        (["sac.lr=-1"], "lr"),
        (["protocol.max_episode_steps=0"], "max_episode_steps"),
    ],
)
def test_bad_config_is_refused(overrides: list[str], match: str) -> None:
    with pytest.raises(STLConfigError, match=match):
        validate(stl_config(*overrides))


def test_merge_joins_runs_of_task_subsets(tmp_path: Path) -> None:
    from mtrl.stl import run

    for name, part in (("a", {"reach-v3": 1.0}), ("b", {"push-v3": 0.5, "door-open-v3": 0.0})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "stl_success.json").write_text(json.dumps(part))
    out = tmp_path / "merged"
    merged = run({"merge": [str(tmp_path / "?")]}, out)
    assert merged == {"reach-v3": 1.0, "push-v3": 0.5, "door-open-v3": 0.0}
    assert json.loads((out / "stl_success.json").read_text()) == merged
    with pytest.raises(STLConfigError, match="more than one run"):
        run({"merge": [str(tmp_path / "a"), str(tmp_path / "merged")]}, tmp_path / "again")
    with pytest.raises(STLConfigError, match="cannot read"):
        run({"merge": str(tmp_path / "missing")}, tmp_path / "again")
