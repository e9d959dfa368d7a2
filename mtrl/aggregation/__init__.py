"""Gradient aggregation for multi-task learning: ``weights = agg(jacobian, stats)``.

Build a method with :func:`make` (names from :func:`available`), then let :func:`mtl_backward`
compute the per-task Jacobian on the shared parameters (only when the method needs it), aggregate,
and write ``.grad``. One private module per method; each class's docstring names its paper, the
equation it solves and every knowing deviation.
"""

from mtrl.aggregation._base import Aggregator, TaskStats, available, make, options, register
from mtrl.aggregation._backward import mtl_backward, task_jacobian, task_partitioned_jacobian

# Each import registers the method under its `make` name.
from mtrl.aggregation._ls import LS
from mtrl.aggregation._rlw import RLW
# --- gradient-based baselines (rgw, pcgrad, cagrad, mgda, imtlg) and loss weighting (uw, dwa, famo)
# --- fairness family (nashmtl, fairgrad, pivrg), excessmtl, performance-informed variants (pi_*)

__all__ = [
    "Aggregator", "TaskStats", "available", "make", "options", "register",
    "mtl_backward", "task_jacobian", "task_partitioned_jacobian",
    "LS", "RLW",
]
