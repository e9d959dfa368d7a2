"""Atomic checkpoint / JSON writes, incremental replay-buffer chunks, the run's checkpoints and the generator
states a resume restores.

A file is written next to its destination under a temporary name, flushed to disk, moved into place
with :func:`os.replace` and the directory entry flushed too, so a crash, ``kill -9``, a full disk or
ctrl-C during a write leaves the previous checkpoint intact, never a truncated one. A write the disk
refuses raises :class:`OSError` naming the file, also where ``torch.save`` would turn it into a
``RuntimeError`` of its zip writer.

The replay buffer is saved incrementally (:class:`BufferCheckpoint`): each checkpoint writes only the
rows added since the previous one, to its own chunk file under ``buffer/``, *before* ``checkpoint.pt``
(which lists the chunks it needs) is replaced. So a checkpoint never references a chunk that is not
fully on disk, and a chunk written after the last checkpoint (the run was killed in between) is
ignored on resume and deleted by the next checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CHECKPOINT_NAME", "SUMMARY_NAME", "CHECKPOINT_VERSION", "BUFFER_DIR", "CheckpointError", "RunWriteError",
           "BufferCheckpoint", "Checkpointer", "atomic_save", "remove_partial_writes", "atomic_write_json",
           "atomic_write_text", "atomic_savefig", "load_checkpoint", "rng_state", "set_rng_state", "seed_everything",
           "derive_seed"]

CHECKPOINT_NAME = "checkpoint.pt"
SUMMARY_NAME = "summary.json"
CHECKPOINT_VERSION = 1
BUFFER_DIR = "buffer"
_CHUNK_PREFIX = "rows_"


class CheckpointError(ValueError):
    """A checkpoint (or one of its buffer chunks) that cannot be used; the message names the file and the problem."""


class RunWriteError(OSError):
    """A file of a training run could not be written (e.g. a full disk); the message says which, at which step,
    what is intact and how to go on."""

    def __str__(self) -> str:
        return str(self.strerror)


def _atomic_write(path: Path, write: Any) -> None:
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(handle, _umasked_file_mode())   # mkstemp's 0600 would hide results from the rest of a group
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    except BaseException as error:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        refused = _os_error(error)
        if refused is None:
            raise
        # Name the destination (not the temporary file); torch.save's zip writer answers a failed write with a
        # RuntimeError of its own: report the disk's answer.
        raise OSError(refused.errno, refused.strerror, str(path)) from error


def _umasked_file_mode() -> int:
    """The mode ``open()`` would give a new file: ``0666`` less the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask



def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind ``error`` (itself, or one it was raised while handling), if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__context__
    return None


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (a power loss after os.replace could otherwise lose the new name)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return   # not supported on this platform / file system
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def remove_partial_writes(directory: str | Path) -> None:
    """Delete the temporary files of writes that a kill cut short (``.<name>.<random>.tmp``)."""
    directory = Path(directory)
    if directory.is_dir():
        for file in directory.glob(".*.tmp"):
            file.unlink(missing_ok=True)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    _atomic_write(Path(path), lambda file: torch.save(obj, file))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NumPy scalars as numbers, other objects as text).

    The one writer of every JSON file the commands produce (``summary.json``, ``stl_success.json``,
    ``results.json``, ``python -m mtrl.bench --out``): a reader never sees half a file."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=True, default=_json_default) + "\n"
    atomic_write_text(text, path)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode()
    _atomic_write(Path(path), lambda file: file.write(data))


def atomic_savefig(figure: Any, path: str | Path, **savefig: Any) -> Path:
    """``figure.savefig(path, **savefig)`` atomically (a matplotlib figure; the format is ``path``'s suffix)."""
    import io

    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", **savefig)
    _atomic_write(path, lambda file: file.write(buffer.getvalue()))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):   # NumPy arrays, torch tensors
        return value.tolist()
    return str(value)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint on the CPU and check that it is one.

    It is a pickle (optimizer and RNG states): resume only runs you trust.

    Raises:
        CheckpointError: empty, truncated, corrupted, foreign (not written by ``mtrl.train``) or of
            another format version; the message names the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}.") from error
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the file was cut off; no usable checkpoint.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - unpickling fails in many ways; all mean a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is truncated or corrupted ({size} bytes; {type(error).__name__}: "
                              f"{reason[:160]}).") from error
    if not isinstance(checkpoint, dict) or not {"config", "step", "agent"} <= set(checkpoint):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a mtrl.train checkpoint (found {found}; expected the keys "
                              f"config, step, agent, ...).")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {checkpoint.get('version')!r}; this mtrl "
                              f"reads version {CHECKPOINT_VERSION}.")
    return checkpoint


# ------------------------------------------------------------------------------- replay buffer
class BufferCheckpoint:
    """Saves a :class:`~agents.ReplayBuffer` incrementally under ``<run_dir>/buffer/``.

    :meth:`save` writes the rows added since the last committed checkpoint to one chunk file and
    returns the manifest to store in ``checkpoint.pt`` (the chunks that still hold live rows, and the
    row count); call :meth:`commit` once ``checkpoint.pt`` is on disk: it deletes the chunks no
    checkpoint references any more. :meth:`load` restores a manifest. A chunk holds ``[k, n, ...]``
    host tensors of rows ``start ... stop - 1`` (vector steps counted since the run began); ring
    position = ``stop % capacity_per_task``.
    """

    def __init__(self, run_dir: str | Path, buffer: Any) -> None:
        self.directory = Path(run_dir) / BUFFER_DIR
        self.buffer = buffer
        self.chunks: list[dict[str, Any]] = []   # the last committed checkpoint's

    def save(self) -> dict[str, Any]:
        """Write the new rows' chunk (atomically); the returned manifest references only complete files."""
        added = self.buffer.added
        oldest = max(0, added - self.buffer.capacity_per_task)   # rows before this are overwritten
        saved_until = self.chunks[-1]["stop"] if self.chunks else 0
        start = max(saved_until, oldest)
        chunks = [chunk for chunk in self.chunks if chunk["stop"] > oldest]
        if added > start:
            name = f"{_CHUNK_PREFIX}{start:012d}_{added:012d}.pt"
            atomic_save(self.buffer.export_rows(start, added), self.directory / name)
            chunks.append({"start": start, "stop": added, "file": name})
        return {"added": added, "chunks": chunks}

    def commit(self, manifest: dict[str, Any]) -> None:
        """``checkpoint.pt`` with ``manifest`` is on disk: drop chunks (and leftovers of killed writes) it does not use."""
        self.chunks = list(manifest["chunks"])
        keep = {chunk["file"] for chunk in self.chunks}
        if not self.directory.is_dir():
            return
        for file in self.directory.iterdir():
            if file.name.startswith(_CHUNK_PREFIX) and file.name not in keep:
                file.unlink(missing_ok=True)
        remove_partial_writes(self.directory)

    def discard(self, manifest: dict[str, Any]) -> None:
        """``checkpoint.pt`` with ``manifest`` could not be written: delete the chunk :meth:`save` wrote for it."""
        committed = {chunk["file"] for chunk in self.chunks}
        for chunk in manifest["chunks"]:
            if chunk["file"] not in committed:
                (self.directory / chunk["file"]).unlink(missing_ok=True)

    def load(self, manifest: dict[str, Any]) -> None:
        """Refill the (empty) buffer from ``manifest``'s chunks.

        Raises:
            CheckpointError: a chunk is missing, unreadable or does not hold the rows the manifest says.
        """
        for chunk in manifest["chunks"]:
            path = self.directory / chunk["file"]
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
                rows = int(data["reward"].shape[1])
            except Exception as error:  # noqa: BLE001
                raise CheckpointError(f"{path}: replay-buffer chunk missing or damaged ({type(error).__name__}); "
                                      f"resume with checkpoint_buffer=false to refill the buffer instead.") from error
            if rows != chunk["stop"] - chunk["start"]:
                raise CheckpointError(f"{path} holds {rows} rows, the checkpoint expects {chunk['stop'] - chunk['start']}.")
            self.buffer.import_rows(chunk["start"], data)
        if manifest["chunks"] and self.buffer.added != manifest["added"]:
            raise CheckpointError(f"{self.directory}: the chunks end at row {self.buffer.added}, the checkpoint at "
                                  f"{manifest['added']}.")
        self.chunks = list(manifest["chunks"])


class Checkpointer:
    """The checkpoints of one run directory: ``checkpoint.pt``, written after the replay buffer's new chunk
    (:class:`BufferCheckpoint`), and what a failed write of any of the run's files leaves intact.

    Args:
        run_dir: the run directory.
        buffer: the replay buffer to save incrementally; None saves none (``checkpoint_buffer=false``).
        last_step: the step of the checkpoint already on disk (a resumed run's), None for a new run.
    """

    def __init__(self, run_dir: str | Path, buffer: Any | None, last_step: int | None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / CHECKPOINT_NAME
        self.buffer = None if buffer is None else BufferCheckpoint(self.run_dir, buffer)
        self.last_step = last_step
        """The step of the last complete checkpoint on disk (None: there is none)."""

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write the buffer's new rows, then ``state`` (plus their manifest, ``buffer_chunks``) as ``checkpoint.pt``.

        Raises:
            RunWriteError: the disk refused a write; the previous checkpoint and its chunks are intact.
        """
        try:
            manifest = None if self.buffer is None else self.buffer.save()
        except OSError as error:
            raise self.failure(error.filename or self.run_dir / BUFFER_DIR, error, step) from error
        try:
            atomic_save({**state, "buffer_chunks": manifest}, self.path)
        except OSError as error:
            if self.buffer is not None and manifest is not None:
                self.buffer.discard(manifest)   # no checkpoint names its new chunk: give the space back
            raise self.failure(self.path, error, step) from error
        if self.buffer is not None:
            self.buffer.commit(manifest)
        remove_partial_writes(self.run_dir)   # left by a run killed while writing
        self.last_step = step
        return self.path

    def restore_buffer(self, manifest: dict[str, Any] | None) -> None:
        """Refill the (empty) replay buffer from a checkpoint's ``buffer_chunks`` (nothing when either is absent)."""
        if manifest is not None and self.buffer is not None:
            self.buffer.load(manifest)

    def failure(self, path: str | Path, error: OSError, step: int) -> RunWriteError:
        """The one-line error for ``path`` refused at ``step``: what is intact and how to go on from there."""
        if self.last_step is None:
            intact = "no checkpoint was written yet, so the run cannot be resumed: free some space and start it again"
        else:
            intact = (f"the previous checkpoint (step {self.last_step}) is intact, with its replay-buffer chunks: free "
                      f"some space and continue with: python -m mtrl.train resume={self.run_dir}")
        return RunWriteError(error.errno, f"cannot write {path} at step {step} ({error.strerror or error}); {intact}.")


# ------------------------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(seed: int, *stream: int) -> int:
    """An independent 31-bit seed for ``stream`` (e.g. ``(purpose, step)``) of run seed ``seed``."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint32)[0] >> 1)


def rng_state(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The global generators' states (Python, NumPy, torch CPU and CUDA) plus ``extra`` states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    state.update(extra or {})
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s global generators (the ``extra`` entries are the caller's)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
