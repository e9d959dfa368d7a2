"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, check_choice, check_positive, register
from mtrl.aggregation._linalg import TINY, coordinates, gramian, min_norm_weights_from_coordinates

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
       gradient, ``+1e-8`` inside the square root). Here the dual is solved exactly through
       ``√φ‖x‖ = min_{t>0} ‖x‖²/(2t) + φt/2``: for a fixed ``t`` the minimisation over the simplex is
       the minimum-norm point of the shifted gradients ``g_i + t g_0`` (exact NNLS,
       :func:`~mtrl.aggregation._linalg.min_norm_weights`), and the remaining function of ``t`` is
       convex with its minimum where ``‖g_w(t)‖ = √φ t``, found by Brent's root finder on ``log t``
       (``t* ≤ max_i ‖g_i‖/√φ``). It reaches the same optimum (duality gap ~1e-13 in the tests)
       without SLSQP's tolerance (``ftol = 1e-6``) and in a few milliseconds for ``k = 50``, where
       SLSQP took ~0.4 s here. Everything runs in float64 on the Gramian normalised by its largest
       diagonal entry (the weights are scale-free).
    .. note:: Degenerate cases. ``c = 0`` or ``g_0 = 0`` gives ``d = g_0`` (the ball is a point). When
       the optimal ``g_w`` vanishes (``‖g_w‖ ≤ 1e-7 · max_i ‖g_i‖``: 0 is in the hull, e.g. a zero
       task gradient), ``d = g_0 + √φ g_w/‖g_w‖`` is undefined; ``d = g_0`` is used, which is what the
       authors' formula ``g_0 + √φ g_w/(‖g_w‖ + 1e-8)`` gives for ``g_w = 0`` (torchjd returns zero
       weights there). If the inner NNLS fails, its pairwise Frank-Wolfe fallback is used and the
       call is counted in ``fallbacks``.
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
        weights = self.solve(gramian(jacobian))
        return torch.from_numpy(weights).to(dtype=jacobian.dtype, device=jacobian.device)

    def solve(self, K: np.ndarray) -> np.ndarray:
        """CAGrad weights for the Gramian ``K`` (float64 numpy, any positive scale)."""
        k = K.shape[0]
        mean = np.full(k, 1.0 / k)
        factor = self._rescale_factor()
        largest = float(np.max(np.diag(K)))
        if not largest > TINY:
            return mean / factor
        K = K / largest  # now max_i ‖g_i‖ = 1
        R = coordinates(K)  # row i: coordinates of g_i
        r0 = mean @ R  # coordinates of g_0
        sqrt_phi = self.c * float(np.linalg.norm(r0))
        if sqrt_phi <= 1e-12:
            return mean / factor

        failed = False

        def hull_point(log_t: float) -> tuple[np.ndarray, float]:
            """w(t) = argmin_w ⟨g_w, g_0⟩ + ‖g_w‖²/(2t) (min-norm point of g_i + t g_0), and ‖g_w(t)‖."""
            nonlocal failed
            w, exact = min_norm_weights_from_coordinates(R + math.exp(log_t) * r0)
            failed = failed or not exact
            return w, float(np.linalg.norm(w @ R))

        # The optimal t solves ‖g_w(t)‖ = √φ t; ‖g_w(t)‖/t is non-increasing (the dual in t is convex).
        upper = math.log(2.0 / sqrt_phi)  # ‖g_w‖ ≤ 1 < √φ t there
        lower = upper - math.log(1e12)
        w, gw_norm = hull_point(lower)
        if gw_norm - sqrt_phi * math.exp(lower) > 0:
            log_t = brentq(lambda s: hull_point(s)[1] - sqrt_phi * math.exp(s), lower, upper,
                           xtol=1e-12, rtol=1e-14, maxiter=200)
            w, gw_norm = hull_point(log_t)
        if failed:
            self._count_fallback(True)
        if gw_norm <= _ZERO_GW:
            return mean / factor
        return (mean + (sqrt_phi / gw_norm) * w) / factor
