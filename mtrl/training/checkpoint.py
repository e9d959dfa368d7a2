"""Atomic checkpoint / JSON writes and the random-number-generator states a resume restores.

A file is written next to its destination under a temporary name, flushed to disk and moved into
place with :func:`os.replace`, so a crash (or ctrl-C) during a write leaves the previous checkpoint
intact, never a truncated one.
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

__all__ = ["CHECKPOINT_NAME", "SUMMARY_NAME", "atomic_save", "atomic_write_json", "load_checkpoint",
           "rng_state", "set_rng_state", "seed_everything", "derive_seed"]

CHECKPOINT_NAME = "checkpoint.pt"
SUMMARY_NAME = "summary.json"


def _atomic_write(path: Path, write: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    _atomic_write(Path(path), lambda file: torch.save(obj, file))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n"
    _atomic_write(Path(path), lambda file: file.write(text.encode()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU. It is a pickle (optimizer and RNG states): resume only runs you trust."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


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
