"""``python -m mtrl.supervised bench=<name> agg=<aggregator> [noise=<level>] [seed=<n>] [device=auto|cpu|cuda]``.

The config is ``configs/supervised.yaml`` with the groups ``bench`` and ``agg``; see that file for every
option. Every value is checked before anything is written (:mod:`mtrl.supervised.config`); the work is
:func:`mtrl.supervised.bench.run`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from mtrl import validation
from mtrl.supervised.bench import run
from mtrl.supervised.benchmarks import BenchmarkDataError
from mtrl.supervised.config import COMMAND

log = logging.getLogger("mtrl.supervised")


@hydra.main(version_base="1.3", config_path=str(validation.CONFIGS), config_name="supervised")
def _app(cfg: DictConfig) -> float | None:
    with validation.job() as out_dir:
        try:
            results = run(cfg, out_dir)
        except BenchmarkDataError as error:   # the folder's contents, judged by the loader: one line, exit 2
            raise validation.ConfigError(" ".join(line.strip() for line in str(error).splitlines() if line.strip()))
        log.info("Results in %s", out_dir)
        return results.get("clean_metric") if isinstance(results, dict) else None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mtrl.supervised``: bad input exits 2 with one line, before anything is written; then Hydra runs."""
    validation.run_hydra(COMMAND, _app, argv)


if __name__ == "__main__":
    main()
