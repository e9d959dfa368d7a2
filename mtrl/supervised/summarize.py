"""Alias of ``python -m mtrl.report`` for the supervised benchmarks (kept for existing commands).

    python -m mtrl.supervised.summarize runs/supervised/multirun/<time> [more dirs ...] [--out DIR] [--no-plot]

Prints the mean ± std table per (benchmark, aggregator, noise level) of the ``results.json`` files below the
directories and writes ``summary.json``, ``summary.md`` and, with several noise levels, ``noise_sweep.png``
(:func:`mtrl.supervised.bench.summarize`); RL runs found there get the RL report too.
"""

from __future__ import annotations

import sys

from mtrl.report import main

if __name__ == "__main__":
    sys.exit(main())
