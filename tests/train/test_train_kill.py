"""kill -9 anywhere: a real short run (subprocesses) is SIGKILLed at random points of an update, an environment
step, an evaluation and a checkpoint write (after its buffer chunk, or halfway through checkpoint.pt);
`resume=<dir>` alone finishes it with the original config, the replay buffer restored each time.
The test prints its seed and the step each kill fell back to (the kill figures of issue 8)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mtrl.experiment.checkpoint import BUFFER_DIR, load_checkpoint

REPOSITORY = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).with_name("_kill_at.py")

STEPS, WARMUP, CHECKPOINT_EVERY, EVAL_EVERY = 60, 5, 10, 20
#: MT1 with tiny networks; a 40-row buffer, so the ring wraps and old chunks fall out.
RUN = [f"steps={STEPS}", f"warmup_steps={WARMUP}", f"eval_every={EVAL_EVERY}", "log_every=7",
       f"checkpoint_every={CHECKPOINT_EVERY}", "env=mt1", "protocol.max_episode_steps=15", "eval_episodes=1",
       "buffer_size=40", "agent.hidden_dim=32", "agent.trunk_layers=1", "agent.batch_size=8", "agg=ls",
       "progress=false", "vector_strategy=sync", "torch_threads=1", "seed=5"]


def _launch(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *arguments], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


def _killed_at(point: str, n: int, overrides: list[str], cwd: Path) -> None:
    result = _launch([str(KILLER), point, str(n), *overrides], cwd)
    assert result.returncode == -signal.SIGKILL, (point, n, result.returncode, result.stderr[-3000:])


def _check_consistent(run_dir: Path) -> int:
    """The checkpoint on disk is whole, and every buffer chunk it names is there; returns its step."""
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    for chunk in checkpoint["buffer_chunks"]["chunks"]:
        assert (run_dir / BUFFER_DIR / chunk["file"]).is_file(), chunk
    return int(checkpoint["step"])


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path: Path) -> None:
    seed = int(os.environ.get("MTRL_KILL_SEED", random.randrange(10**6)))   # conftest seeds `random`: fixed in CI
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    # First process: killed inside an update between steps 12 and 25 (after the first checkpoint, at 10;
    # two optimizer calls per update, the first at step 5).
    _killed_at("update", rng.randint(2 * (12 - WARMUP), 2 * (25 - WARMUP)), [*RUN, f"hydra.run.dir={run_dir}"],
               tmp_path)
    saved_config = load_checkpoint(run_dir / "checkpoint.pt")["config"]
    kills = [("update", _check_consistent(run_dir))]

    # Each resume (with nothing but resume=) is killed at another point, at random, before the run can end.
    # A checkpoint write is cut either after its buffer chunk is on disk or halfway through checkpoint.pt.
    for point in ("env", "eval", rng.choice(["chunk", "checkpoint"])):
        left = STEPS - _check_consistent(run_dir)
        n = {"env": rng.randint(1, max(1, left - 8)), "eval": rng.randint(1, 3)}.get(point, 1)
        _killed_at(point, n, [f"resume={run_dir}"], tmp_path)
        kills.append((point, _check_consistent(run_dir)))

    result = _launch(["-m", "mtrl.train", f"resume={run_dir}"], tmp_path)
    assert result.returncode == 0, (seed, kills, result.stderr[-3000:])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == STEPS, (seed, kills)
    # The same experiment: the original config (not train.yaml's defaults), torch_threads included.
    assert {**summary["config"], "resume": None} == {**saved_config, "resume": None}, (seed, kills)
    # The buffer came back at every resume: one update per step after the warm-up, never a re-fill.
    assert summary["updates"] == STEPS - WARMUP, (seed, kills)
    # Which steps ran in which process: each segment starts where the previous checkpoint was.
    segments = summary["segments"]
    assert segments[0]["start"] == 0 and segments[-1]["end"] == STEPS
    assert all(later["start"] == earlier["end"] for earlier, later in zip(segments, segments[1:]))
    assert len({segment["pid"] for segment in segments}) == len(segments)
    # Nothing left over: no temporary files, no buffer chunk the last checkpoint does not use.
    final = load_checkpoint(run_dir / "checkpoint.pt")
    assert sorted(p.name for p in (run_dir / BUFFER_DIR).iterdir()) == sorted(
        chunk["file"] for chunk in final["buffer_chunks"]["chunks"])
    assert not list(run_dir.rglob("*.tmp")), (seed, kills)
    print(f"kill points (seed {seed}): {kills}; survived {len(kills)}/{len(kills)}")
