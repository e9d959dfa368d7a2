"""One experiment of ``python -m mtrl.train`` (the command): multi-task SAC on Meta-World with a gradient
aggregator, from its checked config to its ``summary.json``.

* :mod:`mtrl.experiment.config` — config checks and resume merging (:func:`prepare`), before any env starts;
* :mod:`mtrl.experiment.loop` — the :class:`Trainer`, which composes the units below and runs the schedule;
* :mod:`mtrl.experiment.build` — building a run (and restoring it on resume);
* :mod:`mtrl.experiment.stepping` — one training step: act → send → update → receive → store;
* :mod:`mtrl.experiment.evaluation` — evaluations, in a worker process or inline;
* :mod:`mtrl.experiment.checkpoint` — atomic writes, checkpoints, incremental replay-buffer chunks, RNG states;
* :mod:`mtrl.experiment.logger` — TensorBoard tags; :mod:`mtrl.experiment.summary` — ``summary.json``;
* :mod:`mtrl.experiment.progress` — the progress bar; :mod:`mtrl.experiment.tracking` — success history and Δm;
* :mod:`mtrl.experiment.divergence` — the divergence guard (``on_nonfinite=stop|skip``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mtrl.experiment.checkpoint import CheckpointError
from mtrl.experiment.config import ConfigError, TrainSettings, prepare
from mtrl.experiment.divergence import TrainingDiverged
from mtrl.experiment.loop import CheckpointWriteError, Trainer, TrainingInterrupted

__all__ = ["run", "prepare", "ConfigError", "CheckpointError", "CheckpointWriteError", "TrainSettings", "Trainer",
           "TrainingInterrupted", "TrainingDiverged"]


def run(cfg: DictConfig, run_dir: str | Path | None = None, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Train with the composed config ``cfg``; returns the summary (also in ``<run_dir>/summary.json``).

    ``run_dir`` defaults to the resumed run's directory (``resume=``) or Hydra's output directory.
    ``overrides``: the command line's ``key=value`` strings, the only values a resume changes in the
    saved config (default: Hydra's, when under Hydra).

    Raises:
        ConfigError: bad input, before any environment starts.
        CheckpointError: the resumed checkpoint's buffer chunks are missing or damaged.
        TrainingInterrupted: after ctrl-C, once the checkpoint is written.
        TrainingDiverged: non-finite state; the last good checkpoint is kept.
        CheckpointWriteError: a file of the run could not be written (full disk); the last checkpoint is intact.
    """
    settings = prepare(cfg, overrides)
    if settings.torch_threads is not None:   # restored from the saved config on resume, too
        torch.set_num_threads(settings.torch_threads)
    if run_dir is None:
        if settings.resume is not None:
            run_dir = settings.resume
        else:
            from hydra.core.hydra_config import HydraConfig

            if not HydraConfig.initialized():
                raise ValueError("run(cfg) outside a Hydra app needs run_dir=...")
            run_dir = HydraConfig.get().runtime.output_dir
    return Trainer(settings, run_dir).train()
