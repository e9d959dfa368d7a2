"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, check_choice, check_positive, register
from mtrl.aggregation._linalg import TINY, gramian, simplex_active_set

#: ``‖g_w‖`` at or below this fraction of the largest task-gradient norm counts as ``g_w = 0``.
_ZERO_GW = 1e-7


@register("cagrad")
class CAGrad(Aggregator):
    """Conflict-averse direction: maximise the worst task's improvement near the average gradient.

    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021 (the CAGrad
    problem, its dual, and Algorithm 1): with ``g_0 = (1/k) Σ_i g_i``,

        ``max_d min_i ⟨g_i, d⟩  s.t.  ‖d − g_0‖ ≤ c ‖g_0‖``,

    solved through its dual over the simplex ``min_w F(w) = ⟨g_w, g_0⟩ + √φ ‖g_w‖`` (``g_w = Σ_i w_i g_i``,
    ``√φ = c ‖g_0‖``), whose solution gives ``d = g_0 + (√φ / ‖g_w‖) g_w``. As in the authors' code
    (``cagrad(grads, alpha, rescale)`` in their NYUv2 ``utils.py``, also Nash-MTL's and FAMO's
    ``weight_methods.py``) the direction is then divided by ``1 + c²`` (``rescale=1``), ``1 + c``
    (``rescale=2``) or left as is (``rescale=0``). The weights returned are
    ``w_i = (1/k + (√φ / ‖g_w‖) w*_i) / rescale-factor``, so ``w @ J = d``; on the LS (mean) scale.

    Args:
        c: radius of the ball around ``g_0`` relative to ``‖g_0‖``; 0 gives LS. Default 0.4: the
            authors' NYUv2 script (``--alpha 0.4``) and the default of Nash-MTL's and FAMO's code.
        rescale: 0, 1 (default, the authors' default) or 2, see above.

    .. note:: Solver. The authors minimise ``F`` with ``scipy.optimize.minimize`` (SLSQP, numerical
       gradient, ``+1e-8`` inside the square root). Here the dual is solved exactly (up to rounding)
       by a primal active-set method on the simplex (:func:`~mtrl.aggregation._linalg.simplex_active_set`),
       on the Jacobian's device in float64 with ``2k + 10`` iterations and no host read: through
       ``√φ‖x‖ = min_{t>0} ‖x‖²/(2t) + φt/2`` the minimiser of ``F`` on each face of the simplex has a
       closed form (one linear solve and the root of ``‖g_w(t)‖ = √φ t``, a quadratic), and faces
       without a minimiser are left along their descent direction. It reaches the same optimum as
       cvxpy (the tests check the duality gap), without SLSQP's tolerance (``ftol = 1e-6``) and without
       SLSQP's cost at large ``k``. Everything runs on the Gramian normalised by its largest diagonal
       entry (the weights are scale-free). If the Frank-Wolfe duality gap is still above 1e-10 after
       the iterations, the best point found is used and the call is counted in ``fallbacks``.
    .. note:: Degenerate cases. ``c = 0`` or ``g_0 = 0`` gives ``d = g_0`` (the ball is a point). When
       the optimal ``g_w`` vanishes (``‖g_w‖ ≤ 1e-7 · max_i ‖g_i‖``: 0 is in the hull, e.g. a zero
       task gradient), ``d = g_0 + √φ g_w/‖g_w‖`` is undefined; ``d = g_0`` is used, which is what the
       authors' formula ``g_0 + √φ g_w/(‖g_w‖ + 1e-8)`` gives for ``g_w = 0`` (torchjd returns zero
       weights there). These cases are chosen by mask, on the device.
    .. note:: The authors' MT10 script (``mtrl_files/run.sh`` in their repository) uses ``c = 0.9``
       (MT50: 0.5) with an approximate inner solver (20 SGD steps on softmax logits); set ``c=0.9``
       to reproduce their MT10 setting.
    """

    def __init__(self, c: float = 0.4, rescale: int = 1) -> None:
        self.c = check_positive("c", c, allow_zero=True)
        if isinstance(rescale, bool):
            raise ValueError(f"Parameter `rescale` should be one of (0, 1, 2). Found `rescale = {rescale!r}`.")
        self.rescale = check_choice("rescale", rescale, (0, 1, 2))
        super().__init__()

    def _rescale_factor(self) -> float:
        return {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        assert jacobian is not None
        weights, converged = self.solve(gramian(jacobian))
        self._count_fallback(~converged)
        return weights.to(dtype=jacobian.dtype)

    def solve(self, K: Tensor) -> tuple[Tensor, Tensor]:
        """CAGrad weights for the Gramian ``K`` (float64, any positive scale) and whether the solve
        converged (0-dim bool tensor)."""
        k = K.shape[0]
        factor = self._rescale_factor()
        mean = torch.full((k,), 1.0 / k, dtype=K.dtype, device=K.device)
        largest = torch.diagonal(K).max()
        K = K / largest.clamp_min(TINY)  # now max_i ‖g_i‖ = 1 (or K = 0)
        b = K @ mean  # ⟨g_i, g_0⟩
        sqrt_phi = self.c * (mean @ b).clamp_min(0.0).sqrt()  # c ‖g_0‖
        degenerate = (largest <= TINY) | (sqrt_phi <= 1e-12)  # the ball is a point: d = g_0
        w, _, converged = simplex_active_set(K, b, torch.where(degenerate, torch.ones_like(sqrt_phi), sqrt_phi))
        gw_norm = (w @ K @ w).clamp_min(0.0).sqrt()
        use_mean = degenerate | (gw_norm <= _ZERO_GW)
        weights = mean + (sqrt_phi / torch.where(use_mean, torch.ones_like(gw_norm), gw_norm)) * w
        return torch.where(use_mean, mean, weights) / factor, converged | degenerate
