"""mtrl: multi-task reinforcement learning with pluggable gradient aggregation.

Subpackages: :mod:`mtrl.aggregation` (the aggregation layer), :mod:`mtrl.experiment` (the loop behind
``python -m mtrl.train``), :mod:`mtrl.supervised` (the supervised adapter and benchmarks),
:mod:`mtrl.bench` (the benchmark harness), :mod:`mtrl.report` (tables and figures of a sweep). The agent and environments live in the top-level
packages ``agents`` and ``envs``.
"""

__version__ = "0.1.0"
