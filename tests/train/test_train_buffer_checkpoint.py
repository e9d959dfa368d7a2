"""Incremental replay-buffer checkpoints: only new rows per checkpoint, the same buffer after a restore (ring
wrapped or not), chunks written after the last checkpoint ignored and cleaned up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agents import ReplayBuffer
from mtrl.experiment.checkpoint import BUFFER_DIR, BufferCheckpoint, CheckpointError

K, OBS, ACT, CAPACITY = 3, 4, 2, 3 * 10   # 10 rows per task


def _fill(buffer: ReplayBuffer, steps: int, rng: np.random.Generator) -> None:
    for _ in range(steps):
        buffer.add(rng.normal(size=(K, OBS)), rng.normal(size=(K, ACT)), rng.normal(size=K), rng.normal(size=(K, OBS)),
                   rng.random(K) < 0.1)


def _assert_same(restored: ReplayBuffer, original: ReplayBuffer) -> None:
    assert (restored.added, len(restored), restored._position) == (original.added, len(original), original._position)
    for name in ("obs", "action", "reward", "next_obs", "done"):
        assert torch.equal(getattr(restored, name), getattr(original, name)), name
    # Same sampler state and data: the same batches from here on.
    restored.generator.set_state(original.generator.get_state())
    for field in ("obs", "reward", "done"):
        assert torch.equal(getattr(restored.sample(5), field), getattr(original.sample(5), field))


def _restore(run_dir: Path, manifest: dict) -> ReplayBuffer:
    restored = ReplayBuffer(K, OBS, ACT, CAPACITY, seed=1)
    BufferCheckpoint(run_dir, restored).load(manifest)
    return restored


@pytest.mark.parametrize("steps_between", [[4, 3], [7, 7, 7], [25], [3, 12, 1, 9]])
def test_restored_buffer_equals_the_saved_one(tmp_path: Path, steps_between: list[int]) -> None:
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(K, OBS, ACT, CAPACITY, seed=0)
    saver = BufferCheckpoint(tmp_path, buffer)
    for steps in steps_between:
        before = buffer.added
        _fill(buffer, steps, rng)
        manifest = saver.save()
        saver.commit(manifest)
        newest = manifest["chunks"][-1]
        # Only the new rows are written (at most a full ring).
        assert (newest["start"], newest["stop"]) == (max(before, buffer.added - 10), buffer.added)
        _assert_same(_restore(tmp_path, manifest), buffer)
    # Chunks whose rows the ring overwrote are gone; the live ones cover exactly the stored rows.
    files = sorted(p.name for p in (tmp_path / BUFFER_DIR).iterdir())
    assert files == sorted(chunk["file"] for chunk in manifest["chunks"])
    assert manifest["chunks"][0]["start"] <= max(0, buffer.added - 10) < manifest["chunks"][0]["stop"]


def test_chunk_written_after_the_last_checkpoint_is_ignored(tmp_path: Path) -> None:
    """Killed between a chunk and checkpoint.pt: the resume uses the older manifest; the orphan goes at the next commit."""
    rng = np.random.default_rng(1)
    buffer = ReplayBuffer(K, OBS, ACT, CAPACITY, seed=0)
    saver = BufferCheckpoint(tmp_path, buffer)
    _fill(buffer, 6, rng)
    committed = saver.save()
    saver.commit(committed)
    snapshot = _restore(tmp_path, committed)
    _fill(buffer, 5, rng)
    orphan = saver.save()                      # ... and the process dies before checkpoint.pt names it
    assert (tmp_path / BUFFER_DIR / orphan["chunks"][-1]["file"]).is_file()

    resumed = _restore(tmp_path, committed)
    _assert_same(resumed, snapshot)
    assert resumed.added == 6
    # The resumed run adds other rows 6..10 and checkpoints them under the same name: its own data is saved.
    _fill(resumed, 5, np.random.default_rng(2))
    saver = BufferCheckpoint(tmp_path, resumed)
    saver.chunks = list(committed["chunks"])
    manifest = saver.save()
    saver.commit(manifest)
    _assert_same(_restore(tmp_path, manifest), resumed)


def test_missing_or_damaged_chunk_is_named(tmp_path: Path) -> None:
    buffer = ReplayBuffer(K, OBS, ACT, CAPACITY, seed=0)
    _fill(buffer, 4, np.random.default_rng(3))
    saver = BufferCheckpoint(tmp_path, buffer)
    manifest = saver.save()
    chunk = tmp_path / BUFFER_DIR / manifest["chunks"][0]["file"]
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{chunk.name}: replay-buffer chunk missing or damaged.*checkpoint_buffer=false"):
        _restore(tmp_path, manifest)
    chunk.unlink()
    with pytest.raises(CheckpointError, match="missing or damaged"):
        _restore(tmp_path, manifest)


def test_export_rows_refuses_rows_no_longer_stored() -> None:
    buffer = ReplayBuffer(K, OBS, ACT, CAPACITY, seed=0)
    _fill(buffer, 12, np.random.default_rng(4))
    with pytest.raises(ValueError, match=r"stored: \[2, 12\)"):
        buffer.export_rows(1, 12)
    assert buffer.export_rows(2, 12)["reward"].shape == (K, 10)
