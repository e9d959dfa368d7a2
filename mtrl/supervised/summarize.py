"""Mean ± std over seeds of the data benchmarks' ``results.json`` files under a directory.

    python -m mtrl.supervised.summarize runs/supervised/multirun/<time> [more dirs ...]

Prints a Markdown table per (benchmark, aggregator, noise level) and writes ``summary.json``,
``summary.md`` and, with several noise levels, ``noise_sweep.png`` (ExcessMTL Fig. 6) into the first
directory (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys

from mtrl.supervised.bench import load_results, summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtrl.supervised.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="directories searched (recursively) for results.json")
    parser.add_argument("--out", default=None, help="where summary.json/.md and the plot go (default: the first dir)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the noise-sweep plot")
    args = parser.parse_args(argv)
    results = [r for d in args.dirs for r in load_results(d)]
    if not results:
        print(f"No data-benchmark results.json under {', '.join(args.dirs)}.", file=sys.stderr)
        return 1
    summarize(results, args.out or args.dirs[0], plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
