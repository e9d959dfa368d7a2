"""FairGrad: α-fair resource allocation among the tasks' first-order improvements."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtrl.aggregation._alpha_fair import WarmStarted
from mtrl.aggregation._base import Aggregator, TaskStats, register


@register("fairgrad")
class FairGrad(WarmStarted, Aggregator):
    """FairGrad: weights ``w > 0`` with ``(K w)_i = w_i^(-1/α)`` for every task, ``K = G Gᵀ``.

    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, Eq. 4 / Algorithm 1: the
    update ``d = wᵀG`` maximises the α-fair utility ``Σ_i (g_iᵀ d)^(1-α)/(1-α)`` in a ball, whose KKT
    condition is ``(Gᵀ G w)_i = w_i^(-1/α)``. α = 1 is Nash-MTL (proportional fairness), α = 2 is
    PIVRG with ω = 1 (minimum potential delay), α → ∞ approaches max-min fairness. Solved by the
    shared α-fair solver (:mod:`mtrl.aggregation._alpha_fair`).

    Args:
        alpha: the fairness exponent α ≥ 0 (default 1.0, as the authors' code and MT10 config,
            ``fairgrad_alpha: 1.0``). ``alpha = 0`` (utilitarian) gives equal weights ``1/k``.

    .. note:: Solver. The authors' supervised code solves the equation with
       ``scipy.optimize.least_squares(Kw − w^(-1/α), x0 = 1/k, bounds=(0, ∞))`` on the raw Gramian;
       their MT10 code runs 20 steps of SGD (lr 0.1, momentum 0.5) on ``‖Kw − (w + 1e-8)^(-1/α)‖²``
       and keeps the best iterate. Both stop short of the solution on ill-conditioned Gramians. We
       solve the same equation on the same raw Gramian by damped Newton in float64 to a relative
       residual of 1e-10 (no normalisation: ``w`` scales as ``‖G‖^(-2α/(1+α))``), warm-started from the
       previous step's weights, on the Jacobian's device without host reads.

    .. note:: Gradient clipping. The authors clip the shared gradient to norm ``max_norm = 1.0``; here
       that is the caller's job (``torch.nn.utils.clip_grad_norm_(shared_params, 1.0)``).

    .. note:: Degenerate inputs. The equation has no solution at a Pareto-stationary point: see
       :mod:`mtrl.aggregation._alpha_fair` for the fallbacks (zero rows get weight 0; otherwise the
       bounded least-squares point of the residual, which is what the authors' ``least_squares`` call
       returns, by a fixed budget of Gauss-Newton steps), each counted in ``fallbacks``.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"Parameter `alpha` should be a non-negative finite number. Found `alpha = {alpha!r}`.")
        self.alpha = alpha
        super().__init__()

    def __str__(self) -> str:
        return f"{self.name}{self.alpha:g}"

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        assert jacobian is not None
        k = jacobian.shape[0]
        if self.alpha == 0:
            return torch.full((k,), 1.0 / k, dtype=jacobian.dtype, device=jacobian.device)
        return self._solve(jacobian, float(self.alpha)).to(dtype=jacobian.dtype)
