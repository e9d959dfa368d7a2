"""Hydra launchers for sweeps that leave one process: parallel runs on one machine, SLURM job arrays.

This module registers three presets in Hydra's ConfigStore under the names of the launcher plugins'
own presets, which they replace (so ``hydra/launcher=joblib`` selects the class below, with the plugin's
options and defaults except where a preset field says otherwise):

* ``hydra/launcher=joblib`` -> :class:`JoblibLauncher`: Hydra's joblib launcher (``hydra-joblib-launcher``,
  loky worker processes, ``hydra.launcher.n_jobs`` runs at a time) that also gives each run
  ``torch_threads = cores // n_jobs`` unless the command line sets ``torch_threads`` (torch's default, one
  thread per core in every run, oversubscribes the CPU and makes every run several times slower).
* ``hydra/launcher=submitit_slurm`` -> :class:`SlurmLauncher`: Hydra's submitit launcher
  (``hydra-submitit-launcher``) as a SLURM job array, one GPU per run, whose requeue continues the run.
  submitit calls the job's ``checkpoint()`` when SLURM signals a timeout or a preemption (``USR1``,
  ``signal_delay_s`` before the end) and requeues the job with the arguments it returns: here the same
  sweep overrides plus ``resume=<the run's directory>`` once the run has a ``checkpoint.pt``, so the
  requeued job continues that directory from its last checkpoint (the trainer checkpoints every
  ``checkpoint_every`` steps: a requeue redoes at most that many). Timeout requeues are bounded by
  ``max_num_timeout``; preemptions are not counted.
* ``hydra/launcher=submitit_local`` -> :class:`LocalLauncher`: the same code path with submitit's local
  executor (one subprocess per run, all at once), for trying a sweep and for the tests.

Hydra accepts launcher classes only from the ``hydra_plugins`` namespace package, hence this location.
"""


# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is in
# sys.modules, and dataclasses cannot resolve string annotations then.
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional   # Optional, not `X | None`: OmegaConf reads the presets' field types

from hydra.core.config_store import ConfigStore
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _JoblibLauncher
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from omegaconf import OmegaConf, open_dict

__all__ = ["JoblibLauncher", "LocalLauncher", "SlurmLauncher", "threads_per_job", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask under SLURM or taskset, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_job(n_jobs: int, num_runs: int, cores: int | None = None) -> int:
    """Torch threads for each of ``num_runs`` jobs run ``n_jobs`` at a time (-1: one per core) on ``cores``
    (default: :func:`usable_cores`)."""
    cores = cores or usable_cores()
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

        from mtrl.experiment.checkpoint import CHECKPOINT_NAME   # here: Hydra imports this module in every app

        overrides = [o for o in sweep_overrides if not _sets([o], "resume")]
        run_dir = self.run_dir(overrides, job_num, singleton_state)
        if (run_dir / CHECKPOINT_NAME).is_file():
            overrides.append(f"resume='{run_dir.resolve()}'")
        return submitit.helpers.DelayedSubmission(self, overrides, job_dir_key, job_num, job_id, singleton_state)


class SlurmLauncher(_ResumingMixin, submitit_launcher.SlurmLauncher):
    """Hydra's submitit SLURM launcher; a requeued job resumes its run (module docstring)."""


class LocalLauncher(_ResumingMixin, submitit_launcher.LocalLauncher):
    """Hydra's submitit local launcher (subprocesses on this machine), with the SLURM launcher's requeue."""


# ------------------------------------------------------------------------------------------------ presets
_HERE = __name__


@dataclass
class JoblibPreset(JobLibLauncherConf):
    _target_: str = f"{_HERE}.JoblibLauncher"
    # Runs at a time; -1: one per core. An MT10 run also steps its environments in worker processes
    # (vector_strategy=auto), so on a small machine fewer runs than cores go faster.
    n_jobs: int = 2


@dataclass
class SlurmPreset(SlurmQueueConf):
    _target_: str = f"{_HERE}.SlurmLauncher"
    timeout_min: int = 1440            # 24 h per allocation (the plugin's 60 min would requeue a 2M-step run often)
    cpus_per_task: Optional[int] = 12  # MT10: 10 environment workers + the trainer + the evaluation environment
    gpus_per_node: Optional[int] = 1   # one GPU per run (device=auto picks it)
    mem_gb: Optional[int] = 32         # two 10-task MuJoCo vector environments + the replay buffer's host side
    signal_delay_s: int = 300          # USR1 this long before the time limit (the plugin: 120 s)
    max_num_timeout: int = 5           # timeout requeues (the plugin's 0 never requeues)


@dataclass
class LocalPreset(LocalQueueConf):
    _target_: str = f"{_HERE}.LocalLauncher"


PRESETS = {"joblib": JoblibPreset, "submitit_slurm": SlurmPreset, "submitit_local": LocalPreset}


class LauncherPresets(SearchPathPlugin):
    """Stores :data:`PRESETS` in the ConfigStore, over the plugins' presets of the same names.

    Hydra's plugin scan executes every ``hydra_plugins`` module again, in path order, so a preset stored at
    import time could be overwritten by the plugin's own; search-path plugins run after the scan.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for name, node in PRESETS.items():
            ConfigStore.instance().store(group="hydra/launcher", name=name, node=node, provider="mtrl")
