"""MGDA: the minimum-norm element of the convex hull of the task gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, check_choice, register
from mtrl.aggregation._linalg import TINY, gramian, min_norm_weights

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@register("mgda")
class MGDA(Aggregator):
    """Multiple-gradient descent: the common descent direction of minimum norm.

    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, the
    min-norm problem of MGDA on the shared parameters (not the MGDA-UB representation bound):

        ``w* = argmin_{w ∈ Δ} ‖Σ_i w_i g_i‖² = argmin_{w ∈ Δ} wᵀKw``,  ``K = J Jᵀ``,

    and the shared update is ``Σ_i w*_i g_i`` (the weights sum to 1, the LS scale). The solution
    satisfies the simplex KKT conditions ``(K w*)_i ≥ w*ᵀK w*`` for all ``i``, with equality where
    ``w*_i > 0``; ``w* @ J = 0`` iff the point is Pareto-stationary.

    Args:
        normalization: the authors' optional gradient normalisation before the solve
            (``gradient_normalizers`` in their ``min_norm_solvers.py``): ``"none"`` (default),
            ``"l2"`` (``g_i / ‖g_i‖``), ``"loss"`` (``g_i / L_i``) or ``"loss+"`` (``g_i / (L_i ‖g_i‖)``).
            As in the authors' ``train_multi_task.py``, the weights found on the normalised gradients
            are applied to the *raw* gradients.

    .. note:: Default ``normalization="none"``: the paper's method (the authors' code calls the
       normalisation "optional and not included in the paper"), the default of the Nash-MTL
       codebase's MGDA, and torchjd's. The authors' own sample config uses ``"loss+"``.
    .. note:: Solver. The authors use projected gradient descent from the best 2-task solution
       (``MAX_ITER = 250``, ``STOP_CRIT = 1e-5``), or the paper's Frank-Wolfe. Here the QP is solved
       exactly by non-negative least squares (:func:`~mtrl.aggregation._linalg.min_norm_weights`),
       in float64; if NNLS fails, pairwise Frank-Wolfe (up to 5000 steps, linear convergence) is used
       instead and the call is counted in ``fallbacks``.
    .. note:: Head gradients: the paper's algorithm updates each task-specific parameter with its
       own unweighted gradient, which is what ``loss_weighting = False`` gives; the authors' and the
       Nash-MTL code backpropagate ``Σ_i w_i L_i`` through the heads as well (and Nash-MTL multiplies
       the weights by ``k``).
    .. note:: A zero-norm gradient (``"l2"``/``"loss+"``) or a non-positive or zero loss
       (``"loss"``/``"loss+"``) cannot be normalised; that task keeps normaliser 1 and, for a bad
       loss, the call is counted in ``fallbacks``. With all gradients zero every ``w`` is optimal and
       ``1/k`` is returned.
    """

    def __init__(self, normalization: str = "none") -> None:
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        super().__init__()

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        assert jacobian is not None
        K = gramian(jacobian)
        if self.normalization != "none":
            normalizer = self._normalizers(K, stats.losses.detach().to("cpu", torch.float64).numpy())
            K = K / np.outer(normalizer, normalizer)
        weights, exact = min_norm_weights(K)
        if not exact:
            self._count_fallback(True)
        return torch.from_numpy(weights).to(dtype=jacobian.dtype, device=jacobian.device)

    def _normalizers(self, K: np.ndarray, losses: np.ndarray) -> np.ndarray:
        norms = np.sqrt(np.clip(np.diag(K), 0.0, None))
        normalizer = np.ones(K.shape[0])
        if self.normalization in ("l2", "loss+"):
            normalizer = np.where(norms**2 > TINY, norms, 1.0)
        if self.normalization in ("loss", "loss+"):
            good = losses > 0
            if not good.all():
                self._count_fallback(True)
            normalizer = normalizer * np.where(good, losses, 1.0)
        return normalizer / normalizer.max()  # only ratios matter; keeps K / (n nᵀ) finite
