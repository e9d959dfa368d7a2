"""``python -m mtrl.train``: multi-task SAC on Meta-World with a gradient aggregator.

* :mod:`mtrl.training.config` — config checks and resume merging (:func:`prepare`), before any env starts;
* :mod:`mtrl.training.loop` — the :class:`Trainer` (act → send → update → receive → store; eval on a thread; checkpoints);
* :mod:`mtrl.training.logger` — TensorBoard tags; :mod:`mtrl.training.tracking` — success history and Δm;
* :mod:`mtrl.training.checkpoint` — atomic writes and RNG states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mtrl.training.config import ConfigError, TrainSettings, prepare
from mtrl.training.loop import Trainer, TrainingInterrupted

__all__ = ["run", "prepare", "ConfigError", "TrainSettings", "Trainer", "TrainingInterrupted"]


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train with the composed config ``cfg``; returns the summary (also in ``<run_dir>/summary.json``).

    ``run_dir`` defaults to the resumed run's directory (``resume=``) or Hydra's output directory.

    Raises:
        ConfigError: bad input, before any environment starts.
        TrainingInterrupted: after ctrl-C, once the checkpoint is written.
    """
    settings = prepare(cfg)
    if run_dir is None:
        if settings.resume is not None:
            run_dir = settings.resume
        else:
            from hydra.core.hydra_config import HydraConfig

            if not HydraConfig.initialized():
                raise ValueError("run(cfg) outside a Hydra app needs run_dir=...")
            run_dir = HydraConfig.get().runtime.output_dir
    return Trainer(settings, run_dir).train()
