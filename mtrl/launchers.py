"""Hydra launchers for sweeps that leave one process: parallel jobs on one machine, SLURM arrays.

The presets in ``configs/hydra/launcher/`` select these classes:

* ``hydra/launcher=joblib`` -> :class:`JoblibLauncher`: Hydra's joblib launcher (``hydra-joblib-launcher``,
  loky worker processes) that also gives each job ``torch_threads = cores // parallel jobs`` unless the
  command line sets ``torch_threads``, so ``n_jobs`` runs do not each start one torch thread per core
  (on a shared CPU, oversubscribed threads make every run several times slower).
* ``hydra/launcher=submitit_slurm`` / ``submitit_local`` -> :class:`SlurmLauncher` / :class:`LocalLauncher`:
  Hydra's submitit launchers (``hydra-submitit-launcher``) whose requeue continues the run instead of
  starting it again. submitit calls the job's ``checkpoint()`` when SLURM signals a timeout or a preemption
  (``USR1``, ``signal_delay_s`` before the end); the job is requeued with the arguments ``checkpoint()``
  returns. Here they are the same sweep overrides plus ``resume=<the job's run directory>`` once the run has
  a ``checkpoint.pt``, so the requeued job resumes the same directory from its last checkpoint (the trainer
  checkpoints every ``checkpoint_every`` steps: a requeue loses at most that many steps). Requeues are
  bounded by ``max_num_timeout`` (preemptions are not counted by submitit).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _JoblibLauncher
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import OmegaConf, open_dict

from mtrl.training.checkpoint import CHECKPOINT_NAME

__all__ = ["JoblibLauncher", "LocalLauncher", "SlurmLauncher", "threads_per_job"]


def threads_per_job(n_jobs: int, num_runs: int, cores: int | None = None) -> int:
    """Torch threads for each of ``num_runs`` jobs run ``n_jobs`` at a time (-1: one per core) on ``cores``."""
    cores = cores or os.cpu_count() or 1
    parallel = cores if n_jobs < 0 else n_jobs
    return max(1, cores // max(1, min(parallel, num_runs)))


def _sets(overrides: Sequence[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


class JoblibLauncher(_JoblibLauncher):
    """Hydra's joblib launcher, with ``torch_threads`` split between the parallel jobs (module docstring)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        has_key = "torch_threads" in self.config and self.config.get("torch_threads") is None
        if has_key and job_overrides and not any(_sets(o, "torch_threads") for o in job_overrides):
            threads = threads_per_job(int(self.joblib.get("n_jobs", -1)), len(job_overrides))
            job_overrides = [[*overrides, f"torch_threads={threads}"] for overrides in job_overrides]
        return super().launch(job_overrides, initial_job_idx)


class _ResumingMixin:
    """``checkpoint()`` requeues the job with ``resume=<its run directory>`` (module docstring)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # Pin the sweep directory (it holds ${now:...}) so that a requeued job, which unpickles this
        # launcher on another day, finds the same directory.
        with open_dict(self.config):
            self.config.hydra.sweep.dir = str(self.config.hydra.sweep.dir)
        return super().launch(job_overrides, initial_job_idx)

    def run_dir(self, sweep_overrides: Sequence[str], job_num: int, singleton_state: dict[type, Any]) -> Path:
        """The run directory of the job with these overrides (``hydra.sweep.dir/hydra.sweep.subdir``)."""
        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(sweep_overrides))
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.num = job_num   # hydra.sweep.subdir may name it
        return Path(str(sweep_config.hydra.sweep.dir)) / str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))

    def checkpoint(self, sweep_overrides: Sequence[str], job_dir_key: str, job_num: int, job_id: str,
                   singleton_state: dict[type, Any]) -> Any:
        import submitit

        overrides = [o for o in sweep_overrides if not _sets([o], "resume")]
        run_dir = self.run_dir(overrides, job_num, singleton_state)
        if (run_dir / CHECKPOINT_NAME).is_file():
            overrides.append(f"resume='{run_dir.resolve()}'")
        return submitit.helpers.DelayedSubmission(self, overrides, job_dir_key, job_num, job_id, singleton_state)


class SlurmLauncher(_ResumingMixin, submitit_launcher.SlurmLauncher):
    """Hydra's submitit SLURM launcher; a requeued job resumes its run (module docstring)."""


class LocalLauncher(_ResumingMixin, submitit_launcher.LocalLauncher):
    """Hydra's submitit local launcher (subprocesses on this machine), with the SLURM launcher's requeue."""
