"""MGDA: the minimum-norm element of the convex hull of the task gradients."""

from __future__ import annotations

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
       exactly (up to rounding) by a primal active-set method on the Jacobian's device in float64
       (:func:`~mtrl.aggregation._linalg.min_norm_weights`: each face's minimiser is one linear solve,
       ``2k + 10`` iterations, no host read). If the Frank-Wolfe duality gap is still above 1e-10
       after them, the best point found is used and the call is counted in ``fallbacks``.
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
            normalizer = self._normalizers(K, stats.losses.detach().to(device=K.device, dtype=torch.float64))
            K = K / torch.outer(normalizer, normalizer)
        weights, converged = min_norm_weights(K)
        self._count_fallback(~converged)
        return weights.to(dtype=jacobian.dtype)

    def _normalizers(self, K: Tensor, losses: Tensor) -> Tensor:
        norms = torch.diagonal(K).clamp_min(0.0).sqrt()
        normalizer = torch.ones_like(losses)
        if self.normalization in ("l2", "loss+"):
            normalizer = torch.where(norms**2 > TINY, norms, normalizer)
        if self.normalization in ("loss", "loss+"):
            good = losses > 0
            self._count_fallback(~good.all())
            normalizer = normalizer * torch.where(good, losses, torch.ones_like(losses))
        return normalizer / normalizer.max()  # only ratios matter; keeps K / (n nᵀ) finite
