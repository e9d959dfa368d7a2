"""Train multi-task SAC on Meta-World with a gradient aggregator.

    python -m mtrl.train env=mt10 agg=pivrg seed=3 steps=2000000 device=auto
    python -m mtrl.train --multirun agg=pivrg,ls seed=0,1,2
    python -m mtrl.train resume=runs/mt10/pivrg/seed3/<time>
    tensorboard --logdir runs

Exit codes: 0 done, 2 bad input (one line on stderr, nothing written) or a checkpoint that cannot be
written (full disk; the previous one is kept), 3 diverged (the last good checkpoint is kept), 4 an
environment worker kept crashing, 130 ctrl-C or SIGTERM (checkpoint written).

The config lives in the repository's ``configs/`` (``train.yaml`` and the groups ``env``, ``protocol``,
``agg``, ``agent``); the loop is :mod:`mtrl.training`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from envs.restarts import EnvironmentCrashed
from mtrl.training import (CheckpointError, CheckpointWriteError, ConfigError, TrainingDiverged, TrainingInterrupted,
                           prepare, run)
from mtrl.training.checkpoint import CHECKPOINT_NAME

log = logging.getLogger("mtrl.train")

#: The repository's configs/ (absolute, so that the entry works whichever way it is started).
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _run_dir(resume: Any, default: str) -> str:
    """``hydra.run.dir``: a resumed run keeps writing into its own directory."""
    if resume is None or not os.path.isfile(os.path.join(str(resume), CHECKPOINT_NAME)):
        return default   # a bad resume= is reported by the app, with a clear message
    return str(resume)


def _hydra_subdir(resume: Any, now: str) -> str:
    return ".hydra" if resume is None else f".hydra/resume_{now}"


def _env_label(name: Any, task: Any) -> str:
    """``mt10``; ``mt1-reach-v3`` for a single-task environment."""
    return str(name) if task is None else f"{name}-{task}"


def register_resolvers() -> None:
    for name, function in (("mtrl_run_dir", _run_dir), ("mtrl_hydra_subdir", _hydra_subdir),
                           ("mtrl_env_label", _env_label)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()


class UsageError(ValueError):
    """Bad command-line input, found before Hydra creates the run directory."""


def check_command_line(argv: Sequence[str]) -> DictConfig | None:
    """Refuse every bad override before Hydra writes anything; returns the composed config (None for Hydra flags).

    Checks, in order: config-group options (``agg=nonexistent`` lists the valid ones), the override
    grammar and keys (Hydra's composition), that the run directory can be written, and every value
    (:func:`mtrl.training.prepare`, which also reads a ``resume=`` checkpoint). A command line with
    Hydra flags (``--multirun``, ``--cfg``, ``--help``) gets the group check only; each job of a
    sweep checks its own values.

    Raises:
        UsageError, ConfigError: with a one-line message naming what to change.
    """
    _check_group_options(argv)
    if any(arg.startswith("-") for arg in argv):
        return None
    from hydra import compose, initialize_config_dir
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(argv), return_hydra_config=True)
            run_dir = str(cfg.hydra.run.dir)
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as error:
        raise UsageError(_one_line(error)) from error
    _check_writable(Path(run_dir))
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    job = OmegaConf.create(plain)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)   # the app logs these warnings once, in its own log
    try:
        prepare(job, overrides=list(argv))
    except CheckpointError as error:
        raise ConfigError(str(error)) from error
    finally:
        logging.disable(previous)
    return job


def _check_group_options(argv: Sequence[str]) -> None:
    groups = sorted(path.name for path in CONFIGS.iterdir() if path.is_dir())
    for arg in argv:
        key, equals, value = arg.partition("=")
        key = key.lstrip("+")
        if not equals or key not in groups:
            continue
        options = sorted(path.stem for path in (CONFIGS / key).glob("*.yaml"))
        for option in value.split(","):   # a sweep lists several
            if option.strip() not in options:
                raise UsageError(f"{key}={option.strip()}: no such option. Valid options for `{key}`: "
                                 f"{', '.join(options)}.")


def _check_writable(run_dir: Path) -> None:
    """The nearest existing folder of ``run_dir`` must be a writable directory."""
    existing = run_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create the run directory {run_dir}: {existing} is not a writable directory. "
                         f"Run from a writable folder or set hydra.run.dir=<a writable path>.")


def _one_line(error: BaseException) -> str:
    """Hydra's messages span lines (and end with a link to the grammar docs): keep the substance, one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().startswith("See ")]
    text = ""
    for line in lines[:3]:
        text += line if not text else (" " if text.endswith((".", ":")) else "; ") + line
    override = getattr(error, "override", None)   # Hydra's parse errors: name the override
    if isinstance(override, str) and override not in text:
        text = f"{override}: {text}"
    return text or type(error).__name__


@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="train")
def _app(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the best mean evaluation success (for sweepers)."""
    run_dir = HydraConfig.get().runtime.output_dir
    if cfg.get("resume") is not None and os.path.isdir(str(cfg.resume)):
        run_dir = str(cfg.resume)
    try:
        summary = run(cfg, run_dir=run_dir)
    except (ConfigError, CheckpointError, CheckpointWriteError) as error:
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
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_command_line(argv)
    except (UsageError, ConfigError) as error:
        print(f"mtrl.train: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    _app()


if __name__ == "__main__":
    main()
