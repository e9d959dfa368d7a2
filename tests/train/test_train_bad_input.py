"""Every bad input exits 2 with one line, before anything is written: a fuzz of malformed overrides,
damaged or foreign checkpoints, a run directory that cannot be written, a full disk at checkpoint time."""

from __future__ import annotations

import errno
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtrl.train import check_command_line
from mtrl.training import CheckpointWriteError, ConfigError, run
from mtrl.training.checkpoint import CHECKPOINT_VERSION, atomic_save, load_checkpoint

REPOSITORY = Path(__file__).resolve().parents[2]

POSITIVE_INTS = ["steps", "warmup_steps", "buffer_size", "eval_every", "log_every", "checkpoint_every",
                 "train_success_window", "agent.hidden_dim", "agent.trunk_layers", "agent.batch_size"]
NULLABLE_POSITIVE_INTS = ["eval_episodes", "torch_threads"]
ENUMS = ["device", "performance_source", "vector_strategy", "on_nonfinite"]
BOOLS = ["checkpoint_buffer", "progress"]
GROUPS = ["agg", "env", "protocol", "agent"]
SYNTAX = ["steps=[", "=5", "steps", "steps==1", "agg.options=]", "steps=(1", "+=3", "seed=1,,2", "steps={a:",
          "~", "agent.lr=3e-4]"]


def _word(rng: random.Random) -> str:
    return "x" + "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7)))   # never a valid option


def malformed_overrides(count: int, seed: int = 0) -> list[str]:
    """``count`` overrides that are each wrong, drawn from every kind of mistake a user makes."""
    rng = random.Random(seed)
    kinds = [
        lambda: f"{rng.choice(POSITIVE_INTS)}={rng.choice([0, -rng.randint(1, 10**6), 2.5, _word(rng), 'null', 'true', '[1,2]'])}",
        lambda: f"{rng.choice(NULLABLE_POSITIVE_INTS)}={rng.choice([0, -rng.randint(1, 99), 1.5, _word(rng)])}",
        lambda: f"seed={rng.choice([-rng.randint(1, 99), 0.5, _word(rng)])}",
        lambda: f"{rng.choice(ENUMS)}={_word(rng)}",
        lambda: f"{rng.choice(BOOLS)}={rng.choice([_word(rng), 1, 0, 'null'])}",
        lambda: f"{rng.choice(GROUPS)}={_word(rng)}",
        lambda: f"{_word(rng)}={rng.randint(0, 9)}",                     # unknown key
        lambda: f"agent.{_word(rng)}=1",                                 # unknown agent key (not in the group)
        lambda: f"agent.lr={rng.choice([0, -0.1, _word(rng)])}",
        lambda: f"agent.tau={rng.choice([0, 1.5, -1])}",
        lambda: f"agent.gamma={rng.choice([1, 1.5, -0.1])}",
        lambda: f"stl_floor={rng.choice([0, 2, -0.5, _word(rng)])}",
        lambda: f"stl_success=/nonexistent/{_word(rng)}.json",
        lambda: f"resume=/nonexistent/{_word(rng)}",
        lambda: f"q_bound={rng.choice([0, -1, _word(rng)])}",
        lambda: rng.choice(SYNTAX),
    ]
    return [rng.choice(kinds)() for _ in range(count)]


def test_fuzz_malformed_overrides_exit_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 random malformed overrides through the CLI's checks (in this process): one line each, nothing written."""
    monkeypatch.chdir(tmp_path)
    cases = malformed_overrides(100)
    refused = 0
    for override in cases:
        with pytest.raises(ConfigError) as error:
            check_command_line([override])
        message = str(error.value)
        assert message and "\n" not in message and "Traceback" not in message, (override, message)
        refused += 1
    assert refused == len(cases) >= 100
    assert not any(tmp_path.iterdir()), "something was written for bad input"


@pytest.mark.parametrize("override", ["agg=nonexistent"])
def test_command_line_exits_2_with_one_line(override: str, tmp_path: Path) -> None:
    """The real entry (a subprocess): exit 2, one line on stderr, no traceback, no runs/ folder.
    (test_train_validation.py runs two more: a bad batch size and torch_threads=0.)"""
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "mtrl.train", override], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtrl.train: error: "), result.stderr
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())
    if override.startswith("agg="):
        assert "Valid options for `agg`: cagrad," in lines[0] and "pivrg" in lines[0]


def _checkpoint_like(**changes: object) -> dict:
    state = {"version": CHECKPOINT_VERSION, "step": 6, "config": {"steps": 12}, "agent": {"updates": 2}}
    state.update(changes)
    return state


@pytest.mark.parametrize(("write", "problem"), [
    (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
    (lambda path: path.write_bytes(os.urandom(300)), "is truncated or corrupted"),
    (lambda path: (atomic_save(_checkpoint_like(), path), path.write_bytes(path.read_bytes()[:200])),
     "is truncated or corrupted"),
    (lambda path: path.write_text('{"step": 6}'), "is truncated or corrupted"),
    (lambda path: torch.save({"model": torch.zeros(2)}, path), "is not a mtrl.train checkpoint (found ['model']"),
    (lambda path: torch.save([1, 2, 3], path), "is not a mtrl.train checkpoint (found list"),
    (lambda path: torch.save(_checkpoint_like(version=99), path), "format version 99"),
])
def test_damaged_or_foreign_checkpoint_is_named(write, problem: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write(run_dir / "checkpoint.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        check_command_line([f"resume={run_dir}"])
    message = str(error.value)
    assert f"{run_dir / 'checkpoint.pt'} " in message and problem in message and "\n" not in message


def test_unwritable_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where the runs/ folder should be")
    with pytest.raises(ConfigError, match=r"cannot create the run directory runs/mt10/.*is not a writable directory"):
        check_command_line(["steps=10"])
    with pytest.raises(ConfigError, match="is not a writable directory"):
        check_command_line([f"hydra.run.dir={tmp_path / 'runs' / 'x'}"])


@pytest.mark.slow
def test_full_disk_at_checkpoint_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        config) -> None:
    real_fsync, calls = os.fsync, {"checkpoint": 0}

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if ".checkpoint.pt." in name:
            calls["checkpoint"] += 1
            if calls["checkpoint"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointWriteError) as error:
        run(config("env=mt1", "agent.batch_size=8", "agg=ls"), run_dir=tmp_path)
    message = str(error.value)
    assert "No space left on device" in message and "the previous checkpoint (step 6) is intact" in message
    assert f"resume={tmp_path}" in message and "\n" not in message
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 6
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert not leftovers
