"""PIVRG: performance-informed variance reduction gradient aggregation."""

from __future__ import annotations

from torch import Tensor

from mtrl.aggregation._alpha_fair import WarmStarted
from mtrl.aggregation._base import Aggregator, TaskStats, register
from mtrl.aggregation._performance import OMEGA_LOWER, OMEGA_UPPER, TAU_MIN, PerformanceInformed


@register("pivrg")
class PIVRG(PerformanceInformed, WarmStarted, Aggregator):
    """PIVRG: weights ``α > 0`` with ``(K α)_i² · α_i = ω_i``, ``K = G Gᵀ``, ω from the Δm's.

    "Rethinking Fairness Representation in Multi-Task Learning: a Performance-Informed Variance
    Reduction Approach" (PIVRG paper). The update ``d = αᵀG`` minimises ``(1/k) Σ_i ω_i / (g_iᵀ d)``
    in a ball (Eq. 4); its stationarity condition (Eq. 7) with ``d = Σ α_i g_i`` gives
    ``(GᵀG α)² = ω/α`` (Eq. 8), the weighted α-fair equation with α = 2 solved by the shared solver
    (:mod:`mtrl.aggregation._alpha_fair`). The task weights are
    ``ω = k · softmax(Δm/τ)``, ``τ = max((Δm_max − Δm_min)/ln s, τ*)``, ``s = min(1/ω_lower, ω_upper)``
    (Eq. 5, Prop. 1, App. A.1) — see :func:`mtrl.aggregation._performance.performance_weights` — so
    a task further behind its single-task reference (larger Δm_i, ``stats.performance``) gets a larger
    ω_i, Σ ω = k and ω ∈ [ω_lower, ω_upper]. Without ``stats.performance`` ω = 1 and PIVRG is FairGrad
    with α = 2. Each call records ``last_omega`` and ``last_var_delta_m`` (Var[Δm_i], Prop. 2).

    Args:
        omega_lower: lower bound of ω, in (0, 1) (default 0.5, the low end of the paper's range
            [0.5, 0.8]).
        omega_upper: upper bound of ω, > 1 (default 2.0, the high end of the paper's range [1.2, 2]).
        tau_min: the temperature floor τ* in percentage points of Δm (default 10; the paper sets a
            threshold τ* without giving its value).

    .. note:: No code of the authors is public and the paper's Algorithm 1 is not in the text we
       have; defaults are our choices within the paper's stated ranges (see above).

    .. note:: Scale. The paper drops the multiplier ``2kλ`` of Eq. 7 ("adjusted by the step size")
       and, following FairGrad, solves Eq. 8 on the raw Gramian with scipy least squares; we solve the
       same equation on the same raw Gramian (no normalisation of α or of ``d``: α scales as
       ``‖G‖^(-4/3)``, ``‖d‖`` as ``‖G‖^(-1/3)``) to a relative residual of 1e-10 by damped Newton,
       warm-started from the previous step's weights, on the Jacobian's device without host reads
       (ω too), so the call can be captured in a CUDA graph.
       The paper's MT10 runs use the MTRL codebase of Nash-MTL/FairGrad, which clips the shared
       gradient norm (``max_norm = 1.0``); clipping is the caller's job here.

    .. note:: ω is computed from whatever Δm the caller passes; the paper uses Δm on a validation set
       where one exists, on the training set otherwise, and success rates on MT10.

    .. note:: The toy of App. B.1 (``python -m mtrl.supervised bench=toy agg=pivrg``). On and near the front
       the two gradients are nearly opposite, and both the exact solve and the least-squares fallback move a
       start along the front until ``ω_1 ‖g_1‖^(1+α) = ω_2 ‖g_2‖^(1+α)`` (α = 2), where the update's component
       along the front changes sign. On the front ``‖g_2‖/‖g_1‖ = |θ1 + 7| / |7 − θ1|``: the toy as the paper
       states it (``bench.scale=1``) has equal norms at θ1 = 0, where Δm_1 = Δm_2 and ω = 1, so PIVRG ends at
       the balanced point of the paper's Fig. 2. With Nash-MTL's variant (``bench.scale=0.1``: L1 scaled by
       0.1, norms ratio ×10) balance would need ``ω_1/ω_2 = 10³``, far outside the paper's bounds on ω, which
       we keep: PIVRG then stops where ω_1/ω_2 reaches its cap ``s``, short of the balanced point.

    .. note:: Degenerate inputs. Eq. 8 has no solution at a Pareto-stationary point (the paper's
       Assumption 1 rules this out): see :mod:`mtrl.aggregation._alpha_fair` for the fallbacks (zero
       rows get weight 0; otherwise the bounded least-squares point of the equation's residual, as
       the authors' ``scipy.optimize.least_squares(bounds=(0, ∞))`` returns, by a fixed budget of
       Gauss-Newton steps), each counted in ``fallbacks``.
    """

    def __init__(self, omega_lower: float = OMEGA_LOWER, omega_upper: float = OMEGA_UPPER,
                 tau_min: float = TAU_MIN) -> None:
        self._set_performance_options(omega_lower, omega_upper, tau_min)
        super().__init__()

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        assert jacobian is not None
        omega = self._performance_weights(stats)
        return self._solve(jacobian, 2.0, omega).to(dtype=jacobian.dtype)
