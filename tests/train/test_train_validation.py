"""Bad input is reported with a clear message before any environment is built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException

from mtrl.experiment import ConfigError, run



@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps=0", "steps should be a positive integer"),
        ("steps=-5", "steps should be a positive integer"),
        ("warmup_steps=0", "warmup_steps should be a positive integer"),
        ("eval_every=0", "eval_every should be a positive integer"),
        ("checkpoint_every=-1", "checkpoint_every should be a positive integer"),
        ("log_every=0", "log_every should be a positive integer"),
        ("eval_episodes=0", "eval_episodes should be a positive integer"),
        ("agent.batch_size=1285", "does not split evenly over the 10 tasks"),
        ("agent.lr=0", "agent: SACConfig: `lr` should be a positive number"),
        ("agent.tau=0", "agent: SACConfig: `tau` should be in (0, 1]"),
        ("agent.gamma=1.5", "agent: SACConfig: `gamma` should be in [0, 1)"),
        ("agg.name=nope", "Unknown aggregator `nope`. Valid names: "),
        ("+agg.options.bogus=1", "Unknown option(s) ['bogus']"),
        ("protocol.max_episode_steps=0", "protocol:"),
        ("performance_source=test", "performance_source should be one of eval, train"),
        ("stl_success=/nonexistent/stl.json", "stl_success=/nonexistent/stl.json: cannot read the file"),
        ("stl_floor=2", "stl_floor should be a number in (0, 1]"),
        ("resume=/nonexistent/run", "resume=/nonexistent/run: no such directory"),
        ("device=tpu", "device should be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_value_is_reported_before_envs(override: str, message: str, no_envs: None, config) -> None:
    with pytest.raises(ConfigError) as error:
        run(config(override), run_dir="/nonexistent/never-created")
    assert message in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(no_envs: None, config) -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run(config("device=cuda"), run_dir="/nonexistent/never-created")


def test_cuda_graphs_on_the_cpu_are_reported_before_envs(no_envs: None, config) -> None:
    with pytest.raises(ConfigError, match="agent.compile=cudagraphs needs a CUDA device"):
        run(config("agent.compile=cudagraphs", "device=cpu"), run_dir="/nonexistent/never-created")


@pytest.mark.parametrize("group", ["env=mt11", "agg=nope", "protocol=nope"])
def test_unknown_group_option_lists_the_valid_ones(group: str, config) -> None:
    with pytest.raises(HydraException) as error:
        config(group)
    name = group.split("=")[0]
    assert f"Available options in '{name}'" in str(error.value)


def test_stl_file_problems(tmp_path: Path) -> None:
    from mtrl.experiment.config import load_stl_reference

    tasks = ["reach-v3", "push-v3"]
    path = tmp_path / "stl.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_stl_reference(path, tasks)
    path.write_text(json.dumps({"reach-v3": 1.0}))
    with pytest.raises(ConfigError, match="no success rate for task"):
        load_stl_reference(path, tasks)
    path.write_text(json.dumps({"reach-v3": 1.0, "push-v3": 1.5}))
    with pytest.raises(ConfigError, match=r"should be a number in \[0, 1\]"):
        load_stl_reference(path, tasks)
    path.write_text(json.dumps({"reach-v3": 0.8, "push-v3": 0.0}))
    with pytest.raises(ConfigError, match="success of push-v3 is 0.*stl_floor"):
        load_stl_reference(path, tasks)
    assert load_stl_reference(path, tasks, floor=0.05).tolist() == [0.8, 0.05]
    path.write_text(json.dumps({"per_task": {"reach-v3": 0.8, "push-v3": 0.5, "other-v3": 1.0}}))
    assert load_stl_reference(path, tasks).tolist() == [0.8, 0.5]
    assert load_stl_reference(None, tasks).tolist() == [1.0, 1.0]
    (tmp_path / "stl_success.json").write_text(json.dumps({"reach-v3": 0.9, "push-v3": 0.7}))
    assert load_stl_reference(tmp_path, tasks).tolist() == [0.9, 0.7]   # an STL run directory


def test_resume_directory_without_checkpoint(tmp_path: Path, no_envs: None, config) -> None:
    with pytest.raises(ConfigError, match="no checkpoint.pt there"):
        run(config(f"resume={tmp_path}"))
    (tmp_path / "checkpoint.pt").write_text("garbage")
    with pytest.raises(ConfigError, match="checkpoint.pt is truncated or corrupted"):
        run(config(f"resume={tmp_path}"))


def test_command_line_reports_bad_batch(tmp_path: Path) -> None:
    """The real entry point: Hydra finds ../configs from mtrl/train.py; exit code 2 and the message."""
    result = subprocess.run(
        [sys.executable, "-m", "mtrl.train", "agent.batch_size=1001", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "mtrl.train: error: agent.batch_size=1001 does not split evenly over the 10 tasks of mt10: the batch is "
        "stratified, batch_size / k rows per task. Use a multiple of 10, e.g. agent.batch_size=1280 (128 per task, "
        "as the paper)."]
    assert not any(tmp_path.iterdir())   # refused before Hydra created the run directory


def test_command_line_refuses_bad_torch_threads() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "mtrl.train", "torch_threads=0"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "torch_threads should be a positive integer" in result.stderr
