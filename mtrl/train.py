"""Train multi-task SAC on Meta-World with a gradient aggregator.

    python -m mtrl.train env=mt10 agg=pivrg seed=3 steps=2000000 device=auto
    python -m mtrl.train --multirun agg=pivrg,ls seed=0,1,2
    python -m mtrl.train resume=runs/mt10/pivrg/seed3/<time>
    tensorboard --logdir runs

The config lives in the repository's ``configs/`` (``train.yaml`` and the groups ``env``, ``protocol``,
``agg``, ``agent``); the loop is :mod:`mtrl.training`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtrl.training import ConfigError, TrainingInterrupted, run
from mtrl.training.checkpoint import CHECKPOINT_NAME

log = logging.getLogger("mtrl.train")


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


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the best mean evaluation success (for sweepers)."""
    run_dir = HydraConfig.get().runtime.output_dir
    if cfg.get("resume") is not None and os.path.isdir(str(cfg.resume)):
        run_dir = str(cfg.resume)
    threads = cfg.get("torch_threads")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            print(f"mtrl.train: error: torch_threads should be a positive integer or null, got {threads!r}.",
                  file=sys.stderr)
            sys.exit(2)
        torch.set_num_threads(threads)
    try:
        summary = run(cfg, run_dir=run_dir)
    except ConfigError as error:
        log.error("%s", error)
        print(f"mtrl.train: error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted:
        sys.exit(130)   # the trainer logged where the checkpoint is and how to resume
    log.info("Done: %d steps, final mean success %s, best %s. Summary: %s", summary["steps"],
             summary["final_mean_success"], summary["best_mean_success"], os.path.join(run_dir, "summary.json"))
    return summary["best_mean_success"]


if __name__ == "__main__":
    main()
