"""``python tests/train/_fill_disk_at.py <point> <ballast> <mtrl.train overrides...>``: run ``python -m mtrl.train`` and
fill the disk when the run reaches ``point``, so that the next write of this file fails for real:

* ``chunk``: the second checkpoint's replay-buffer chunk (the disk fills just before it);
* ``checkpoint``: the second ``checkpoint.pt`` (the disk fills once its chunk is written);
* ``summary``: the first ``summary.json`` (after the first evaluation is recorded);
* ``events``: the first write of the TensorBoard event file (the first log window, before any checkpoint);
* ``log``: the line of ``train.log`` that says the warm-up ended (before any checkpoint).

``ballast``: a file on the small file system the run writes to, grown until the disk refuses (``train.log`` is
first padded to a whole page, so that its next line needs a page of its own), or ``rlimit``: the process's
file-size limit drops to 0, so that every further write to a file fails (``EFBIG``).

Used by test_train_disk_full.py (which also fills a disk with :func:`fill`).
"""

from __future__ import annotations

import errno
import resource
import signal
import sys
from pathlib import Path

PAGE = 4096


def fill(ballast: str, run_dir: Path) -> None:
    if ballast == "rlimit":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return
    for log in run_dir.glob("*.log"):   # the next line must need a page of its own
        with open(log, "ab") as file:
            file.write(b"\n" * (-log.stat().st_size % PAGE))
    with open(ballast, "ab", buffering=0) as file:
        size = 1 << 20
        while size:
            try:
                file.write(b"\0" * size)
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                size //= 2


def arm(point: str, ballast: str, run_dir: Path) -> None:
    import mtrl.experiment.checkpoint as checkpoint
    import mtrl.experiment.logger as logger
    import mtrl.experiment.loop as loop
    import mtrl.experiment.summary as summary

    def on_call(owner: object, name: str, n: int, before: bool) -> None:
        original, calls = getattr(owner, name), [0]

        def wrapper(*args, **kwargs):
            calls[0] += 1
            if before and calls[0] == n:
                fill(ballast, run_dir)
            result = original(*args, **kwargs)
            if not before and calls[0] == n:
                fill(ballast, run_dir)
            return result

        setattr(owner, name, wrapper)

    hooks = {"chunk": (checkpoint.Checkpointer, "save", 2, True),
             "checkpoint": (checkpoint.BufferCheckpoint, "save", 2, False),
             "summary": (summary.RunSummary, "write", 1, True),
             "events": (logger.EventFile, "flush", 1, True),
             "log": (loop.Trainer, "_warmup_done", 1, True)}
    if point not in hooks:
        raise SystemExit(f"unknown point {point!r}")
    on_call(*hooks[point])


if __name__ == "__main__":
    point, ballast, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    run_dir = Path(next(arg.split("=", 1)[1] for arg in overrides if arg.startswith("hydra.run.dir=")))
    arm(point, ballast, run_dir)
    from mtrl.train import main

    main(overrides)
