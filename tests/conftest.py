"""Shared fixtures: every test starts from the same seeds."""

import os
import random

import numpy as np
import pytest
import torch

# Under pytest-xdist each worker gets one core's worth of threads: the models in the tests are tiny,
# and two workers with two threads each on a 2-core machine run slower than with one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------ a small disk
class SmallDisk:
    """A folder on a file system of ``size`` bytes, and a way to run a command against it.

    ``mode`` is ``tmpfs`` (a real file system of that size, mounted for the test: needs the right to mount)
    or ``fsize`` (no such right: the command runs with ``ulimit -f`` = ``size``, so any one file it writes
    stops there with EFBIG). Tests that need a whole file system to fill up skip in ``fsize`` mode.
    """

    def __init__(self, path, size: int, mode: str) -> None:
        self.path, self.size, self.mode = path, size, mode

    def fill(self) -> None:
        """Leave no byte free (tmpfs only)."""
        assert self.mode == "tmpfs"
        with open(self.path / ".filler", "wb", buffering=0) as file:
            try:
                while True:
                    file.write(b"\0" * 4096)
            except OSError:
                pass

    def run(self, module: str, argv, cwd):
        import resource
        import signal
        import subprocess
        import sys
        from pathlib import Path

        def limit() -> None:   # in the child: writes past `size` fail with EFBIG instead of killing it
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, self.size))

        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", module, *map(str, argv)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600, preexec_fn=limit if self.mode == "fsize" else None)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)`` -> :class:`SmallDisk` (a tmpfs of ``size`` bytes where mounting is allowed, else
    ``ulimit -f``); unmounted at the end of the test."""
    import subprocess

    mounted = []

    def make(size: int) -> SmallDisk:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        try:
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                    capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return SmallDisk(path, size, "fsize")
        if result.returncode != 0:
            return SmallDisk(path, size, "fsize")
        mounted.append(path)
        return SmallDisk(path, size, "tmpfs")

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
