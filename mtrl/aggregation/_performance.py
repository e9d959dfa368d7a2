"""PIVRG's performance-informed task weights ω (PIVRG paper Sec. 3.2, Eq. 5, Prop. 1, App. A.1).

``ω = k · softmax(Δm / τ)`` with ``τ = max((Δm_max − Δm_min) / ln s, τ*)`` and
``s = min(1/ω_lower, ω_upper)``, so that (Prop. 1) ``ω_i ∈ [1/s, s] ⊆ [ω_lower, ω_upper]``,
``Σ_i ω_i = k`` (Property 2) and ω grows with Δm_i (Property 1: a task further behind its
single-task reference gets a larger weight). Δm_i is the performance drop in percent
(PIVRG paper Eq. 3, positive = worse than the reference).

:class:`PerformanceInformed` is the mixin that gives an aggregator the three options and the
bookkeeping (``last_omega``, ``last_var_delta_m``) that PIVRG and the ``pi_*`` variants share.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtrl.aggregation._base import TaskStats

__all__ = ["performance_weights", "performance_variance", "PerformanceInformed",
           "OMEGA_LOWER", "OMEGA_UPPER", "TAU_MIN"]

#: Defaults. The paper gives ranges only ("we typically choose ω_lower ∈ [0.5, 0.8] and
#: ω_upper ∈ [1.2, 2]", Sec. 3.2) and no value of τ*; no code is public. We take the widest bounds
#: of those ranges, 0.5 and 2 (then s = 1/ω_lower = ω_upper = 2: both bounds are reachable), and
#: τ* = 10 percentage points (ω is then saturated, ω_max/ω_min = 2, only once the spread of Δm
#: exceeds 10·ln 2 ≈ 6.9 points, and tends to 1 smoothly as the spread shrinks).
OMEGA_LOWER = 0.5
OMEGA_UPPER = 2.0
TAU_MIN = 10.0


def check_performance_options(omega_lower: float, omega_upper: float, tau_min: float) -> None:
    """Validate ω bounds and τ* in the torchjd style (the error names the bad value)."""
    for name, value in (("omega_lower", omega_lower), ("omega_upper", omega_upper), ("tau_min", tau_min)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"Parameter `{name}` should be a finite number. Found `{name} = {value!r}`.")
    if not 0 < omega_lower < 1:
        raise ValueError(f"Parameter `omega_lower` should be in (0, 1). Found `omega_lower = {omega_lower!r}`.")
    if not omega_upper > 1:
        raise ValueError(f"Parameter `omega_upper` should be greater than 1. Found `omega_upper = {omega_upper!r}`.")
    if not tau_min > 0:
        raise ValueError(f"Parameter `tau_min` should be positive. Found `tau_min = {tau_min!r}`.")


def performance_weights(delta_m: Tensor, omega_lower: float = OMEGA_LOWER, omega_upper: float = OMEGA_UPPER,
                        tau_min: float = TAU_MIN, validate: bool = True) -> Tensor:
    """``ω = k · softmax(Δm / τ)``, ``τ = max((Δm_max − Δm_min)/ln s, τ*)``, ``s = min(1/ω_lower, ω_upper)``.

    Args:
        delta_m: ``[k]`` per-task performance drops in percent (positive = worse than reference).
        omega_lower, omega_upper: the bounds ω must respect (0 < ω_lower < 1 < ω_upper).
        tau_min: the temperature floor τ* (in the units of Δm, percentage points).
        validate: check that Δm is finite (a host read). Aggregators with deferred checks pass
            ``False``: their own input check has recorded a non-finite Δm already, and ω is computed
            on the device without reading back.

    Returns:
        ``[k]`` float64 tensor on ``delta_m``'s device: positive, summing to ``k``, each entry in
        ``[1/s, s] ⊆ [ω_lower, ω_upper]``, ordered like ``delta_m``.
    """
    check_performance_options(omega_lower, omega_upper, tau_min)
    delta_m = delta_m.detach().to(torch.float64)
    if delta_m.ndim != 1 or delta_m.numel() == 0 or (validate and not torch.isfinite(delta_m).all()):
        raise ValueError(f"delta_m must be a non-empty finite [k] tensor, got {delta_m}.")
    s = min(1.0 / omega_lower, omega_upper)
    tau = ((delta_m.max() - delta_m.min()) / math.log(s)).clamp_min(float(tau_min))
    return delta_m.numel() * torch.softmax(delta_m / tau, dim=0)


def performance_variance(delta_m: Tensor) -> Tensor:
    """``Var[Δm_i]`` over tasks, the population variance of PIVRG paper Prop. 2 (``(1/k) Σ (Δm_i − Δm)²``),
    as a 0-dim float64 tensor on ``delta_m``'s device."""
    delta_m = delta_m.detach().to(torch.float64)
    return delta_m.var(unbiased=False) if delta_m.numel() > 1 else delta_m.new_zeros(())


class PerformanceInformed:
    """Mixin for aggregators that read ``stats.performance`` through PIVRG's ω.

    Call :meth:`_set_performance_options` in ``__init__`` before the base constructor. Each call of
    :meth:`_performance_weights` records ``last_omega`` (``[k]`` float64, on the device of Δm) and
    ``last_var_delta_m`` (a float, read back only when asked for) so that a trainer can log
    ``agg/omega/<task>`` and ``agg/var_dm`` at log time. A missing ``stats.performance``
    is read as Δm = 0, i.e. ω = 1: the method then reduces to its base.
    """

    uses_performance = True

    def _set_performance_options(self, omega_lower: float, omega_upper: float, tau_min: float) -> None:
        check_performance_options(omega_lower, omega_upper, tau_min)
        self.omega_lower = omega_lower
        self.omega_upper = omega_upper
        self.tau_min = tau_min

    def _init_state(self) -> None:
        super()._init_state()  # type: ignore[misc]
        self.last_omega: Tensor | None = None
        self._var_delta_m: Tensor | None = None

    @property
    def last_var_delta_m(self) -> float | None:
        """Var[Δm] at the last call (reading it waits for the device: read it at log time)."""
        return None if self._var_delta_m is None else float(self._var_delta_m)

    def _performance_weights(self, stats: TaskStats) -> Tensor:
        """ω on the device of the losses, without a host read when the aggregator defers its checks."""
        delta_m = (torch.zeros(stats.num_tasks, dtype=torch.float64, device=stats.losses.device)
                   if stats.performance is None else stats.performance.detach().to(torch.float64))
        # (Δm went through the call's input check already: eagerly raised, or recorded for check().)
        omega = performance_weights(delta_m, self.omega_lower, self.omega_upper, self.tau_min, validate=False)
        self.last_omega = omega
        self._var_delta_m = performance_variance(delta_m)
        return omega
