"""Every bad input exits 2 with one line, before anything is written: a fuzz of malformed overrides,
damaged or foreign checkpoints, resumes that would change nothing or the experiment, a run directory that
cannot be written, a full disk at checkpoint time. The other commands' fuzz: tests/test_bad_input.py."""

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
from mtrl.experiment import CheckpointWriteError, ConfigError, run
from mtrl.experiment.checkpoint import CHECKPOINT_VERSION, atomic_save, load_checkpoint

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
    with pytest.raises(ConfigError, match=r"cannot create the run directory runs/mt10/.*/runs is not a directory"):
        check_command_line(["steps=10"])
    with pytest.raises(ConfigError, match="runs is not a directory"):
        check_command_line([f"hydra.run.dir={tmp_path / 'runs' / 'x'}"])


@pytest.mark.parametrize(("argv", "message"), [
    (["+foo=1"], "unknown key `foo`. Valid keys: env, protocol, agg, agent, seed,"),
    (["agent.actor_lr=1e-3"], "unknown key `agent.actor_lr`. Valid keys of `agent`: name, hidden_dim,"),
    (["agg=cagrad", "agg.options.cc=0.9"], "agg: Unknown option(s) ['cc'] for aggregator `cagrad`. Valid options: c, rescale"),
    (["steps=1e99"], "steps should be a positive integer. Found `steps=1e+99`"),
    (["agent.head_layers=3"], "agent: SACConfig: `head_layers` should be 1 or 2"),
    (["agent.gamma=high"], "agent.gamma should be a finite number"),
    (["env.tasks=[reach-v3,push-v3,reach-v3]"], "env.tasks: reach-v3 appear(s) more than once"),
    (["~steps"], "~steps: deleting a key is not supported"),
    (["seed=0,1"], "seed=0,1: several values run a sweep: add --multirun"),
    (["--multirun", "seed=0,-1"], "seed should be an integer >= 0. Found `seed=-1`"),
    (["--multirun", "agg=ls,pivgr"], "agg=pivgr: no such option."),
])
def test_messages_name_the_problem(argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        check_command_line(argv)
    assert message in str(error.value)
    assert not any(tmp_path.iterdir())


def test_a_float_that_is_an_integer_still_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    checked = check_command_line(["steps=2e6", "env=mt1", "agg=ls"])
    assert checked is not None and checked.settings.steps == 2_000_000 and checked.argv[-1] == "agg=ls"


# ----------------------------------------------------------------------------------------- resumes
def _stopped_run(run_dir: Path, config, step: int = 6) -> Path:
    """A run directory as a stopped TINY run leaves it: checkpoint.pt at ``step`` (its config the composed
    one), train.log and .hydra/."""
    from omegaconf import OmegaConf

    saved = OmegaConf.to_container(config("env=mt10", "agg=pivrg"), resolve=True)
    saved.pop("hydra", None)
    run_dir.mkdir(parents=True)
    atomic_save(_checkpoint_like(step=step, config=saved), run_dir / "checkpoint.pt")
    (run_dir / "train.log").write_text("[...] step 6\n")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("steps: 12\n")
    return run_dir


@pytest.mark.parametrize(("argv", "message"), [
    (["steps=3"], "steps=3 is below the 6 steps this run has done; give steps > 6"),
    (["agg=ls"], "agg would change agg.name from the run's 'pivrg' to 'ls', and a resume keeps it"),
    (["agg.options.omega_lower=0.1"], "agg.options.omega_lower would change agg.options.omega_lower from the run's 0.5"),
    (["env.tasks=[reach-v3]"], "env.tasks would change env.tasks from the run's None to ['reach-v3']"),
    (["agent.hidden_dim=64"], "agent.hidden_dim would change agent.hidden_dim from the run's 32 to 64"),
    (["seed=4"], "seed would change seed from the run's 0 to 4"),
])
def test_a_resume_that_would_change_nothing_or_the_experiment_is_refused(argv: list[str], message: str,
                                                                         tmp_path: Path, config) -> None:
    run_dir = _stopped_run(tmp_path / "run", config)
    with pytest.raises(ConfigError) as error:
        check_command_line([f"resume={run_dir}", *argv])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_resume_keeps_the_experiment_typed_again_and_follows_interpolated_keys(tmp_path: Path, config) -> None:
    """The sweep's own overrides come back on a requeue (agg=pivrg, seed=0): no change, no refusal. A key
    that others interpolate (env.max_grad_norm -> agent.max_grad_norm) takes them along."""
    run_dir = _stopped_run(tmp_path / "run", config)
    checked = check_command_line([f"resume={run_dir}", "agg=pivrg", "seed=0", "steps=20", "env.max_grad_norm=0.5"])
    assert checked is not None
    assert checked.settings.steps == 20 and checked.settings.agent.max_grad_norm == 0.5


@pytest.mark.parametrize(("damage", "message"), [
    (lambda run: (run / "checkpoint.pt").unlink() or (run / "checkpoint.pt").mkdir(),
     "checkpoint.pt is a directory, not a checkpoint file"),
    (lambda run: (run / "buffer").mkdir(), "the replay-buffer chunk"),
])
def test_damage_a_resume_would_meet_later_is_named_first(damage, message: str, tmp_path: Path, config) -> None:
    run_dir = _stopped_run(tmp_path / "run", config)
    atomic_save(_checkpoint_like(step=6, config=load_checkpoint(run_dir / "checkpoint.pt")["config"],
                                 buffer_chunks={"added": 6, "chunks": [{"start": 0, "stop": 6, "file": "rows_0.pt"}]}),
                run_dir / "checkpoint.pt")
    damage(run_dir)
    with pytest.raises(ConfigError) as error:
        check_command_line([f"resume={run_dir}"])
    assert message in str(error.value)


def test_a_refused_resume_leaves_the_run_untouched(tmp_path: Path, config) -> None:
    """The real entry: exit 2 with one line; no line added to train.log, no .hydra/resume_<time>/."""
    run_dir = _stopped_run(tmp_path / "run", config)
    before = {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in run_dir.rglob("*") if path.is_file()}
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "mtrl.train", f"resume={run_dir}", "steps=3"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and "is below the 6 steps" in result.stderr
    after = {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in run_dir.rglob("*") if path.is_file()}
    assert after == before and sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml"]


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
