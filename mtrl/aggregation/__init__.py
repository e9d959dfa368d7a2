"""Gradient aggregation for multi-task learning: ``weights = agg(jacobian, stats)``.

Build a method with :func:`make` (names from :func:`available`), then let :func:`mtl_backward`
compute the per-task Jacobian on the shared parameters (only when the method needs it), aggregate,
and write ``.grad``. One private module per method; each class's docstring names its paper, the
equation it solves and every knowing deviation.
"""

from mtrl.aggregation._base import Aggregator, TaskStats, available, make, options, register
from mtrl.aggregation._backward import (mtl_backward, replicate_for_tasks, task_jacobian, task_linear,
                                       task_partitioned_gradients)

# Each import registers the method under its `make` name.
from mtrl.aggregation._ls import LS
from mtrl.aggregation._rlw import RLW
# --- gradient-based baselines (rgw, pcgrad, cagrad, mgda, imtlg) and loss weighting (uw, dwa, famo)
from mtrl.aggregation._rgw import RGW
from mtrl.aggregation._pcgrad import PCGrad
from mtrl.aggregation._cagrad import CAGrad
from mtrl.aggregation._mgda import MGDA
from mtrl.aggregation._imtlg import IMTLG
from mtrl.aggregation._uw import UW
from mtrl.aggregation._dwa import DWA
from mtrl.aggregation._famo import FAMO
# --- fairness family (nashmtl, fairgrad, pivrg), excessmtl, performance-informed variants (pi_*)
from mtrl.aggregation._nashmtl import NashMTL
from mtrl.aggregation._fairgrad import FairGrad
from mtrl.aggregation._pivrg import PIVRG
from mtrl.aggregation._excessmtl import ExcessMTL
from mtrl.aggregation._pi_variants import PILS, PINashMTL, PIRLW
from mtrl.aggregation._performance import performance_weights

__all__ = [
    "Aggregator", "TaskStats", "available", "make", "options", "register",
    "mtl_backward", "task_jacobian", "replicate_for_tasks", "task_linear", "task_partitioned_gradients",
    "LS", "RLW",
    "RGW", "PCGrad", "CAGrad", "MGDA", "IMTLG", "UW", "DWA", "FAMO",
    "NashMTL", "FairGrad", "PIVRG", "ExcessMTL", "PILS", "PIRLW", "PINashMTL", "performance_weights",
]
