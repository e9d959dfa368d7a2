"""Δm over a benchmark's metric columns (PIVRG paper Eq. 3), its variance, and PIVRG's per-task scores.

* ``Δm_j = (−1)^δ_j (M_j − M_j^STL) / M_j^STL · 100`` per metric column ``j`` (δ_j = 1 where higher is
  better): positive means worse than the single-task reference.
* The benchmark's Δm is the mean over all **metric columns**, not over tasks: PIVRG Table 1's LS row gives
  5.59 only as the mean of its nine metrics (the mean of the three task means would be −0.88).
* ``Var[Δm_i]`` is the population variance of the same per-column Δm's (Table 5's LS row: 259.1).
* PIVRG's per-task score, the Δm its ω is computed from, is the mean of that task's columns (the PIVRG
  authors' code: segmentation = mean of 2, depth = mean of 2, normals = mean of 5 on NYUv2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mtrl.supervised.benchmarks._base import MetricColumn

__all__ = ["metric_deltas", "delta_m", "delta_m_variance", "task_scores"]


def metric_deltas(values: Mapping[str, float], reference: Mapping[str, float],
                  columns: Sequence[MetricColumn]) -> dict[str, float]:
    """Per-column Δm in percent (PIVRG Eq. 3). Raises ``ValueError`` on a missing, zero or non-finite reference."""
    deltas = {}
    for column in columns:
        base = reference.get(column.name)
        if base is None or not np.isfinite(base) or base == 0:
            raise ValueError(f"The single-task reference of `{column.name}` must be a finite non-zero number; found {base!r}.")
        sign = -1.0 if column.higher_is_better else 1.0
        deltas[column.name] = sign * (float(values[column.name]) - float(base)) / abs(float(base)) * 100.0
    return deltas


def delta_m(deltas: Mapping[str, float]) -> float:
    """The benchmark's Δm: the mean of the per-column Δm's."""
    return float(np.mean(list(deltas.values())))


def delta_m_variance(deltas: Mapping[str, float]) -> float:
    """``Var[Δm_i]``: the population variance of the per-column Δm's (PIVRG Tables 1 and 5)."""
    return float(np.var(list(deltas.values())))


def task_scores(deltas: Mapping[str, float], columns: Sequence[MetricColumn], tasks: Sequence[str]) -> list[float]:
    """``[k]`` per-task scores: the mean Δm of each task's columns (what PIVRG's ω reads)."""
    return [float(np.mean([deltas[c.name] for c in columns if c.task == task])) for task in tasks]
