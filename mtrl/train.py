"""Train multi-task SAC on Meta-World with a gradient aggregator.

    python -m mtrl.train env=mt10 agg=pivrg seed=3 steps=2000000 device=auto
    python -m mtrl.train --multirun agg=pivrg,ls seed=0,1,2
    python -m mtrl.train resume=runs/mt10/pivrg/seed3/<time>
    tensorboard --logdir runs

Exit codes: 0 done, 2 bad input (one line on stderr, nothing written) or a checkpoint that cannot be
written (full disk; the previous one is kept), 3 diverged (the last good checkpoint is kept), 4 an
environment worker kept crashing, 130 ctrl-C or SIGTERM (checkpoint written).

The config lives in the repository's ``configs/`` (``train.yaml`` and the groups ``env``, ``protocol``,
``agg``, ``agent``); the loop is :mod:`mtrl.experiment`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from envs.restarts import EnvironmentCrashed
from mtrl import validation
from mtrl.experiment import (CheckpointError, CheckpointWriteError, ConfigError, TrainingDiverged, TrainingInterrupted,
                           TrainSettings, prepare, run)
from mtrl.experiment.checkpoint import CHECKPOINT_NAME
from mtrl.experiment.config import env_label

log = logging.getLogger("mtrl.train")

#: The repository's configs/ (absolute, so that the entry works whichever way it is started).
CONFIGS = validation.CONFIGS


def _run_dir(resume: Any, default: str) -> str:
    """``hydra.run.dir``: a resumed run keeps writing into its own directory."""
    if resume is None or not os.path.isfile(os.path.join(str(resume), CHECKPOINT_NAME)):
        return default   # a bad resume= is reported by the checks, with a clear message
    return str(resume)


def _hydra_subdir(resume: Any, now: str) -> str:
    return ".hydra" if resume is None else f".hydra/resume_{now}"


def _env_label(name: Any, task: Any, tasks: Any = None) -> str:
    """The resolver behind run directories: :func:`mtrl.experiment.config.env_label` of the env section."""
    if tasks is not None:
        tasks = list(tasks)
    return env_label(name, task if tasks is None else tasks)


def register_resolvers() -> None:
    for name, function in (("mtrl_run_dir", _run_dir), ("mtrl_hydra_subdir", _hydra_subdir),
                           ("mtrl_env_label", _env_label)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()


def _check(job: DictConfig, overrides: Sequence[str]) -> TrainSettings:
    """The values of one training run (:func:`mtrl.experiment.prepare`, which also reads a ``resume=`` checkpoint)."""
    try:
        return prepare(job, overrides=list(overrides))
    except CheckpointError as error:
        raise ConfigError(str(error)) from error


#: ``python -m mtrl.train`` for the validation layer: the aggregator's constructor judges ``agg.options``.
COMMAND = validation.HydraCommand(prog="mtrl.train", config_name="train", check=_check, open_keys=("agg.options",))


def check_command_line(argv: Sequence[str]) -> validation.CheckedCommandLine | None:
    """Refuse every bad override before Hydra writes anything (:func:`mtrl.validation.check_command_line`).

    Raises:
        ConfigError: with a one-line message naming what to change.
    """
    return validation.check_command_line(COMMAND, argv)


@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="train")
def _app(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the best mean evaluation success (for sweepers)."""
    with validation.job() as job_dir:
        run_dir = str(cfg.resume) if cfg.get("resume") is not None and os.path.isdir(str(cfg.resume)) else str(job_dir)
        try:
            summary = run(cfg, run_dir=run_dir)
        except CheckpointError as error:
            raise ConfigError(str(error)) from error   # a resumed run's files found damaged before it went on
        except CheckpointWriteError as error:
            _fail(error, 2)
        except TrainingDiverged as error:
            _fail(error, 3)   # the trainer kept the last good checkpoint; the message says how to resume
        except EnvironmentCrashed as error:
            _fail(error, 4)   # one task's environment worker keeps dying
        except TrainingInterrupted:
            sys.exit(130)   # the trainer logged where the checkpoint is and how to resume
        log.info("Done: %d steps, final mean success %s, best %s. Summary: %s", summary["steps"],
                 summary["final_mean_success"], summary["best_mean_success"], os.path.join(run_dir, "summary.json"))
        return summary["best_mean_success"]


def _fail(error: BaseException, code: int) -> None:
    message = " ".join(str(error).split("\n"))
    log.error("%s", message)
    print(f"mtrl.train: error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mtrl.train``: bad input exits 2 with one line, before anything is written; then Hydra runs."""
    validation.run_hydra(COMMAND, _app, argv)


if __name__ == "__main__":
    main()
