"""Performance-informed variants of LS, RLW and Nash-MTL (PIVRG paper Sec. 4.4, Table 5).

Each adds PIVRG's ω (:func:`mtrl.aggregation._performance.performance_weights`) to its base method,
which it reuses unchanged: loss-weighting methods replace the losses ``L`` by ``ω ⊙ L``, so their
weights are multiplied by ω; Nash-MTL replaces the equal sum of log-utilities by the ω-weighted sum.
With ``stats.performance`` missing (Δm = 0) ω = 1 and each equals its base method.
"""

from __future__ import annotations

from torch import Tensor

from mtrl.aggregation._base import TaskStats, register
from mtrl.aggregation._ls import LS
from mtrl.aggregation._nashmtl import NashMTL
from mtrl.aggregation._performance import OMEGA_LOWER, OMEGA_UPPER, TAU_MIN, PerformanceInformed
from mtrl.aggregation._rlw import RLW


@register("pi_ls")
class PILS(PerformanceInformed, LS):
    """PI-LS: linear scalarisation of ``ω ⊙ L``: weights ``ω_i / k`` (PIVRG paper Sec. 4.4, Table 5).

    ω is PIVRG's ``k · softmax(Δm/τ)`` (Eq. 5, Prop. 1), so the weights stay positive, sum to 1 like
    LS's, and lean towards the tasks furthest behind their single-task reference. Needs no Jacobian.

    Args:
        omega_lower, omega_upper, tau_min: ω's bounds and temperature floor, as for
            :class:`~mtrl.aggregation.PIVRG` (defaults 0.5, 2.0, 10).

    .. note:: The paper gives no defaults for ω's bounds and τ*; ours are those of PIVRG.
    """

    def __init__(self, omega_lower: float = OMEGA_LOWER, omega_upper: float = OMEGA_UPPER,
                 tau_min: float = TAU_MIN) -> None:
        self._set_performance_options(omega_lower, omega_upper, tau_min)
        super().__init__()

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        weights = super()._weights(jacobian, stats)
        return weights * self._performance_weights(stats).to(dtype=weights.dtype, device=weights.device)


@register("pi_rlw")
class PIRLW(PerformanceInformed, RLW):
    """PI-RLW: random loss weighting of ``ω ⊙ L``: weights ``ω_i λ_i``, λ = softmax(N(0, I)).

    PIVRG paper Sec. 4.4, Table 5, on top of Lin et al.'s RLW (TMLR 2022). The random draw is RLW's,
    from the aggregator's own seeded generator; ω is PIVRG's ``k · softmax(Δm/τ)``, so
    ``E[w_i] = ω_i / k``. Needs no Jacobian.

    Args:
        distribution, seed: as for :class:`~mtrl.aggregation.RLW`.
        omega_lower, omega_upper, tau_min: as for :class:`~mtrl.aggregation.PIVRG`.

    .. note:: The paper gives no defaults for ω's bounds and τ*; ours are those of PIVRG.
    """

    def __init__(self, distribution: str = "normal", seed: int | None = None, omega_lower: float = OMEGA_LOWER,
                 omega_upper: float = OMEGA_UPPER, tau_min: float = TAU_MIN) -> None:
        self._set_performance_options(omega_lower, omega_upper, tau_min)
        super().__init__(distribution=distribution, seed=seed)

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        weights = super()._weights(jacobian, stats)
        return weights * self._performance_weights(stats).to(dtype=weights.dtype, device=weights.device)


@register("pi_nashmtl")
class PINashMTL(PerformanceInformed, NashMTL):
    """PI-Nash-MTL: maximise ``Σ_i ω_i log(g_iᵀ d)``, i.e. weights with ``α_i (K α)_i = ω_i``.

    PIVRG paper Sec. 4.4, Table 5: Nash-MTL's equal sum of log-utilities becomes the ω-weighted sum;
    the KKT condition becomes ``α_i (Kα)_i = ω_i`` (so ``g_iᵀ d = ω_i/α_i`` and ‖d‖² = Σ ω = k),
    solved by Nash-MTL's own code path with ω as the utility weights (α-fair solver, α = 1). ω is
    PIVRG's ``k · softmax(Δm/τ)``, recomputed whenever the weights are (every
    ``update_weights_every`` calls).

    Args:
        update_weights_every: as for :class:`~mtrl.aggregation.NashMTL` (default 1).
        omega_lower, omega_upper, tau_min: as for :class:`~mtrl.aggregation.PIVRG`.

    .. note:: Every note of :class:`~mtrl.aggregation.NashMTL` applies (solver, clipping by the
       caller, unweighted heads by default, fallbacks). The paper gives no defaults for ω's bounds and
       τ*; ours are those of PIVRG.
    """

    def __init__(self, update_weights_every: int = 1, omega_lower: float = OMEGA_LOWER,
                 omega_upper: float = OMEGA_UPPER, tau_min: float = TAU_MIN) -> None:
        self._set_performance_options(omega_lower, omega_upper, tau_min)
        super().__init__(update_weights_every=update_weights_every)

    def _utility_weights(self, stats: TaskStats) -> Tensor | None:
        return self._performance_weights(stats)
