"""A full disk anywhere in a training run, for real: the run writes to a small tmpfs that the test mounts (or, where
mounting is not allowed, runs under a file-size limit of 0 once the point is reached), and the disk fills when the
run reaches a replay-buffer chunk, checkpoint.pt, summary.json, the TensorBoard events or train.log. Each time the
run exits 2 with one line naming the file and what is intact, leaves no temporary file, and once there is space
again `resume=<dir>` finishes it (a resume is suggested only when a checkpoint exists)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from _fill_disk_at import fill
from mtrl.experiment.checkpoint import BUFFER_DIR, load_checkpoint

REPOSITORY = Path(__file__).resolve().parents[2]
FILLER = Path(__file__).with_name("_fill_disk_at.py")

STEPS = 24
RUN = [f"steps={STEPS}", "warmup_steps=5", "eval_every=10", "log_every=7", "checkpoint_every=10", "env=mt1",
       "protocol.max_episode_steps=15", "eval_episodes=1", "buffer_size=40", "agent.hidden_dim=32",
       "agent.trunk_layers=1", "agent.batch_size=8", "agg=ls", "progress=false", "vector_strategy=sync",
       "torch_threads=1", "seed=5"]


class SmallDisk:
    """Where the run writes, and how its disk fills: a tmpfs of a few MB, or a file-size limit of 0 (``rlimit``)."""

    def __init__(self, root: Path, mounted: bool) -> None:
        self.root, self.mounted = root, mounted
        self.ballast = str(root / "ballast") if mounted else "rlimit"
        self.refusal = "No space left on device" if mounted else "File too large"

    def free(self) -> None:
        if self.mounted:
            os.unlink(self.ballast)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", f"mtrl-test-{uuid.uuid4().hex[:8]}", str(root)],
                             capture_output=True).returncode == 0 if os.geteuid() == 0 else False
    if not mounted and not hasattr(signal, "SIGXFSZ"):
        pytest.skip("neither a tmpfs mount nor a file-size limit is available here")
    try:
        yield SmallDisk(root, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", str(root)], check=True)


def _launch(arguments: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *arguments], cwd=REPOSITORY, env=env, capture_output=True, text=True,
                          timeout=600)


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("mtrl.train: error: "), stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "file", "intact_step"), [
    ("chunk", BUFFER_DIR, 10),
    ("checkpoint", "checkpoint.pt", 10),
    ("summary", "summary.json", 10),
    ("events", "events.out.tfevents.", None),
    ("log", "train.log", None),
])
def test_a_full_disk_stops_the_run_cleanly_and_it_resumes(point: str, file: str, intact_step: int | None,
                                                         small_disk: SmallDisk) -> None:
    run_dir = small_disk.root / "run"
    # The evaluation worker (the default) for one point; inline evaluations (faster to start) for the others.
    evaluations = [] if point == "summary" else ["eval_async=false"]
    failed = _launch([str(FILLER), point, small_disk.ballast, *RUN, *evaluations, f"hydra.run.dir={run_dir}"])
    assert failed.returncode == 2, (failed.returncode, failed.stderr[-3000:])
    message = _one_error_line(failed.stderr)
    assert f"cannot write {run_dir / file}" in message and small_disk.refusal in message, message
    assert not list(run_dir.rglob("*.tmp"))
    small_disk.free()

    if intact_step is None:   # nothing to resume: the message says so, and does not suggest it
        assert "no checkpoint was written yet" in message and "resume=" not in message, message
        assert not (run_dir / "checkpoint.pt").exists()
        return
    assert f"the previous checkpoint (step {intact_step}) is intact" in message, message
    assert message.endswith(f"continue with: python -m mtrl.train resume={run_dir}."), message
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint["step"] == intact_step
    assert sorted(p.name for p in (run_dir / BUFFER_DIR).iterdir()) == sorted(
        chunk["file"] for chunk in checkpoint["buffer_chunks"]["chunks"])

    resumed = _launch(["-m", "mtrl.train", f"resume={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == STEPS
    assert [record["step"] for record in summary["evaluations"]] == [10, 20, 24]
    assert [(s["start"], s["end"]) for s in summary["segments"]] == [(0, intact_step), (intact_step, STEPS)]


def test_event_file_keeps_whole_records_when_the_disk_refuses(small_disk: SmallDisk, tensorboard_scalars) -> None:
    """A write cut short (part of it fits in the file's last page) is taken back: the file ends with the last
    whole flush, and goes on once there is space again."""
    from mtrl.experiment.logger import EventFile

    if not small_disk.mounted:
        pytest.skip("needs a tmpfs mount (a file-size limit would also cut the test runner's own files)")
    events = EventFile(small_disk.root / "run")
    events.scalar("a", 1.0, 1)
    events.flush()
    kept = events.path.stat().st_size
    fill(small_disk.ballast, events.directory)
    for step in range(2, 400):   # more than the rest of the file's page
        events.scalar("a", float(step), step)
    with pytest.raises(OSError) as refused:
        events.flush()
    assert refused.value.filename == str(events.path) and "No space left" in str(refused.value)
    assert events.path.stat().st_size == kept
    small_disk.free()
    events.scalar("a", 400.0, 400)
    events.flush()
    events.close()
    assert tensorboard_scalars(small_disk.root / "run")["a"] == [(1, 1.0), (400, 400.0)]
