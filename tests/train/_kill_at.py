"""``python tests/train/_kill_at.py <point> <n> <mtrl.train overrides...>``: run ``python -m mtrl.train`` and SIGKILL
itself at the ``n``-th time the run reaches ``point``:

* ``update``: inside an agent update (after one network's optimizer step, before the other's);
* ``env``: inside an environment step (the vector env stepped, the transition not yet stored);
* ``eval``: while an evaluation runs in its worker (at the ``n``-th training step after the process's first
  evaluation started, or when the run waits for it; the worker dies with the process);
* ``chunk``: inside a checkpoint, after the replay buffer's chunk is on disk, before ``checkpoint.pt`` is replaced;
* ``checkpoint``: inside the write of ``checkpoint.pt`` (its temporary file half-written, not yet renamed).

Used by test_train_kill.py; nothing else may import it.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _on_call(owner: object, name: str, n: int, before: bool) -> None:
    # Each call takes its number once (next() on a count is atomic): the evaluation thread steps its own
    # environment concurrently, and a shared counter read again after the call could skip n altogether.
    original, numbers = getattr(owner, name), itertools.count(1)

    def wrapper(*args, **kwargs):
        number = next(numbers)
        if before and number == n:
            _kill()
        result = original(*args, **kwargs)
        if not before and number == n:
            _kill()
        return result

    setattr(owner, name, wrapper)


def arm(point: str, n: int) -> None:
    import agents
    import envs
    import mtrl.experiment.checkpoint as checkpoint

    if point == "update":
        _on_call(agents.MultiTaskSAC, "_optimize", n, before=False)
    elif point == "env":
        _on_call(envs.MultiTaskEnv, "step_wait", n, before=False)
    elif point == "eval":
        from mtrl.experiment.evaluation import Evaluations

        start, started = Evaluations._start, []

        def start_then_arm(self, request):
            start(self, request)
            if not started:
                started.append(request.step)
                _on_call(envs.MultiTaskEnv, "step_wait", n, before=False)

        def collect_or_kill(self):
            if started:   # the run waits for it (the last evaluation, at the end): die now
                _kill()
            return collect(self)

        Evaluations._start, collect = start_then_arm, Evaluations.collect
        Evaluations.collect = collect_or_kill
    elif point in ("chunk", "checkpoint"):
        original, calls = checkpoint._atomic_write, {"n": 0}

        def atomic_write(path, write):
            if path.name == checkpoint.CHECKPOINT_NAME:
                calls["n"] += 1
                if calls["n"] == n:
                    if point == "chunk":
                        _kill()   # the chunk of this checkpoint was written just before
                    with open(path.parent / f".{path.name}.killed.tmp", "wb") as file:   # a half-written temp file
                        write(file)
                        file.truncate(file.tell() // 2)
                        file.flush()
                    _kill()
            return original(path, write)

        checkpoint._atomic_write = atomic_write
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    arm(sys.argv[1], int(sys.argv[2]))
    from mtrl.train import main

    main(sys.argv[3:])
