"""Benchmark scripts (not tests), each run as ``python -m mtrl.benchmarks.<name> --help``.

* ``sac_update_time``: wall time of one ``MultiTaskSAC.update`` per aggregator.
* ``jacobian_cost``: the per-task Jacobian's cost relative to one backward pass.
"""
