"""Benchmark scripts (not tests), each run as ``python -m mtrl.benchmarks.<name> --help``.

* ``mt1_sac_vs_sb3``: our multi-task SAC (k = 1) beside stable-baselines3 SAC on one Meta-World task.
"""
