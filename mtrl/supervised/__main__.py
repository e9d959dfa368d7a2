"""``python -m mtrl.supervised bench=<name> agg=<aggregator> [noise=<level>] [seed=<n>] [device=auto|cpu|cuda]``.

The config is ``configs/supervised.yaml`` with the groups ``bench`` and ``agg``; see that file for every
option. The work is :func:`mtrl.supervised.bench.run`.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mtrl.supervised.bench import BenchError, run

log = logging.getLogger("mtrl.supervised")


@hydra.main(version_base="1.3", config_path="../../configs", config_name="supervised")
def main(cfg: DictConfig) -> float | None:
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        results = run(cfg, out_dir)
    except (BenchError, FileNotFoundError) as error:
        log.error("%s", error)
        print(f"mtrl.supervised: error: {error}", file=sys.stderr)
        sys.exit(2)
    log.info("Results in %s", out_dir)
    value = results.get("clean_metric") if isinstance(results, dict) else None
    return value


if __name__ == "__main__":
    main()
