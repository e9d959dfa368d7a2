"""Performance drops Δm (PIVRG paper Eq. 3), shared by the RL agent and the supervised adapter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def performance_drop(metrics: Tensor, reference: Tensor, higher_is_better: bool | Sequence[bool] = True) -> Tensor:
    """Per-task performance drop in percent, ``Δm_i = (-1)^δ_i (M_i - M_i^STL) / M_i^STL · 100``.

    δ_i = 1 when higher is better for task ``i`` (accuracy, success rate), so that a positive Δm_i
    always means *worse* than the single-task reference ``reference`` (PIVRG paper Eq. 3).

    Raises:
        ValueError: shapes differ, or a reference value is zero or not finite (Δm would be undefined).
    """
    metrics = torch.as_tensor(metrics, dtype=torch.float64)
    reference = torch.as_tensor(reference, dtype=torch.float64)
    if metrics.shape != reference.shape or metrics.ndim != 1:
        raise ValueError(f"metrics {tuple(metrics.shape)} and reference {tuple(reference.shape)} must both be [k].")
    bad = (~torch.isfinite(reference)) | (reference == 0)
    if bad.any():
        raise ValueError(
            f"Single-task reference metrics must be finite and non-zero; tasks {bad.nonzero().flatten().tolist()} are not."
        )
    higher = torch.as_tensor(higher_is_better, dtype=torch.bool).expand_as(metrics)
    sign = torch.where(higher, -1.0, 1.0).to(torch.float64)
    return sign * (metrics - reference) / reference.abs() * 100.0


def success_drop(success: Tensor, stl_success: Tensor | float = 1.0) -> Tensor:
    """Δm from success rates (PIVRG paper Sec. 4.3): ``100 · (s_i^STL - s_i) / s_i^STL``."""
    success = torch.as_tensor(success, dtype=torch.float64)
    reference = torch.as_tensor(stl_success, dtype=torch.float64).expand_as(success)
    return performance_drop(success, reference, higher_is_better=True)
