"""One benchmark harness: ``python -m mtrl.bench <what> [--quick] [--device D] [--out PATH]``.

Each benchmark is a module of this package that defines

* ``HELP``: one line for ``--help``;
* ``add_arguments(parser)``: its own options (the common ones below are already there);
* ``run(args) -> dict``: measures, prints its table(s) with :func:`print_table`, and returns a JSON-able
  dict. The harness adds the machine's description under ``"machine"`` and writes the dict to ``--out``.

Conventions (README "Benchmarks"): absolute numbers and the ratios derived from them are measured in the
same process, one after another, because the machines are shared and noisy; every ratio sits under a key
whose name contains ``ratio``. ``--quick`` shrinks every benchmark to a CI-sized run (seconds), which the
tests use to check that each one runs and writes its JSON; the numbers of a quick run mean nothing.

Benchmarks (``BENCHMARKS``, in the order ``--help`` lists them):
``env``, ``jacobian``, ``update``, ``aggregators``, ``train``, ``learn``, ``supervised``, ``gpu-check``.
"""

from __future__ import annotations

from mtrl.bench._common import machine_info, print_table, timed_median, write_json

__all__ = ["BENCHMARKS", "machine_info", "print_table", "timed_median", "write_json"]

#: subcommand -> module in this package (``gpu-check`` -> ``gpu_check``).
BENCHMARKS: dict[str, str] = {
    "env": "env",
    "jacobian": "jacobian",
    "update": "update",
    "aggregators": "aggregators",
    "train": "train",
    "learn": "learn",
    "supervised": "supervised",
    "gpu-check": "gpu_check",
}
