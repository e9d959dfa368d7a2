"""Numerical routines shared by the Gramian-based aggregators and the learned loss weightings.

* :func:`gramian` — the ``[k, k]`` Gramian ``K ∝ J Jᵀ`` in float64 (PCGrad, CAGrad, MGDA, IMTL-G).
* :func:`min_norm_weights` — the minimum-norm point of the convex hull of the gradients, exactly
  (MGDA; CAGrad's inner problem).
* :func:`adam_step` — one step of Adam on a small parameter vector the aggregator owns (UW, FAMO),
  written out so that its state is plain tensors that ``state_dict`` round-trips exactly.

Everything works on ``k × k`` matrices in float64 on the CPU: with ``k`` up to a few hundred tasks this
costs microseconds to milliseconds, far less than building the Jacobian.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

__all__ = [
    "gramian", "coordinates", "min_norm_weights", "min_norm_weights_from_coordinates", "frank_wolfe_min_norm",
    "adam_step", "TINY",
]

#: Squared norms at or below this (in the units of :func:`gramian`, where the largest entry of the
#: Jacobian is 1) are treated as exact zeros: such a row is a zero gradient.
TINY = 1e-300
_BLOCK_ELEMENTS = 2**24


def gramian(jacobian: Tensor) -> np.ndarray:
    """``K = c · J Jᵀ`` in float64 for some ``c > 0`` (a symmetric ``[k, k]`` numpy array).

    ``J`` is divided by its largest absolute entry before the product, so rows of magnitude 1e-8 next
    to rows of magnitude 1e8 neither underflow nor overflow (nor do float64 inputs far beyond that).
    Every caller is invariant to a positive rescaling of ``K``. The product runs on the Jacobian's
    device, over column blocks so that the float64 copy stays below 128 MiB; only the ``k × k``
    result moves to the host.
    """
    matrix = jacobian.detach()
    k = matrix.shape[0]
    if matrix.numel() == 0:
        return np.zeros((k, k))
    scale = matrix.abs().max()
    if not bool(scale > 0):
        return np.zeros((k, k))
    scale = scale.to(torch.float64)
    columns = max(1, _BLOCK_ELEMENTS // max(k, 1))  # float64 copies of at most 128 MiB at a time
    product = torch.zeros(k, k, dtype=torch.float64, device=matrix.device)
    for start in range(0, matrix.shape[1], columns):
        block = matrix[:, start:start + columns].to(torch.float64) / scale
        product += block @ block.T
    product = product.cpu().numpy()
    return 0.5 * (product + product.T)


def coordinates(K: np.ndarray) -> np.ndarray:
    """``R`` with ``R Rᵀ = K`` (``K`` symmetric PSD up to rounding): row ``i`` stands for gradient ``i``."""
    eigenvalues, eigenvectors = np.linalg.eigh(K)
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def frank_wolfe_min_norm(K: np.ndarray, start: np.ndarray | None = None, iterations: int = 5000,
                         tolerance: float = 1e-15) -> np.ndarray:
    """Pairwise Frank-Wolfe with exact line search for ``min wᵀKw`` on the simplex.

    Each step moves weight from the worst task in the support (largest ``(Kw)_i``) to the best one
    (smallest ``(Kw)_i``), which converges linearly on the simplex, unlike the plain Frank-Wolfe of
    Sener & Koltun. Always returns a point of the simplex; used as the fallback of
    :func:`min_norm_weights`.
    """
    k = K.shape[0]
    w = np.full(k, 1.0 / k) if start is None else np.clip(start, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else np.full(k, 1.0 / k)
    scale = float(np.max(np.abs(np.diag(K)))) or 1.0
    for _ in range(iterations):
        Kw = K @ w
        toward = int(np.argmin(Kw))
        support = np.flatnonzero(w > 0)
        away = int(support[np.argmax(Kw[support])])
        gap = float(Kw[away] - Kw[toward])  # duality gap of the pairwise direction
        if gap <= tolerance * scale:
            break
        curvature = float(K[toward, toward] - 2.0 * K[toward, away] + K[away, away])
        step = w[away] if curvature <= 0 else min(w[away], gap / curvature)
        w[toward] += step
        w[away] -= step
    return w


def min_norm_weights(K: np.ndarray) -> tuple[np.ndarray, bool]:
    """Weights ``w`` of the minimum-norm point of the convex hull of the gradients: ``min wᵀKw`` over
    the simplex, solved exactly.

    The problem reduces to non-negative least squares: for ``u ≥ 0`` write ``u = s·w`` with ``w`` on
    the simplex; with ``R Rᵀ = K`` and ``q = wᵀKw``, ``‖Rᵀu‖² + (1ᵀu − 1)² = s²q + (s − 1)²`` is
    smallest at ``s = 1/(1 + q)``, where it equals ``q/(1 + q)``, increasing in ``q``. So
    ``u* = argmin_{u ≥ 0} ‖[Rᵀ; 1ᵀ] u − e_{k+1}‖²`` (Lawson–Hanson: finite, exact up to rounding, robust
    to duplicated and linearly dependent rows) gives ``w* = u*/1ᵀu*``. The rows are first divided by
    the largest row norm (the argmin is scale-free), so ``q ≤ 1`` and ``1ᵀu* ≥ 1/2``.

    Returns:
        ``(w, exact)``: ``exact`` is False when NNLS failed (iteration limit, non-finite output, or a
        KKT violation above 1e-9) and the result comes from :func:`frank_wolfe_min_norm` instead; the
        caller counts that as a fallback. All-zero ``K`` (every point has norm 0) gives ``1/k``.
    """
    k = K.shape[0]
    if k == 1:
        return np.ones(1), True
    if not np.isfinite(K).all() or not float(np.max(np.diag(K))) > TINY:
        return np.full(k, 1.0 / k), True
    return min_norm_weights_from_coordinates(coordinates(K / float(np.max(np.diag(K)))))


def min_norm_weights_from_coordinates(R: np.ndarray) -> tuple[np.ndarray, bool]:
    """:func:`min_norm_weights` for points given by coordinates: row ``i`` of ``R`` is point ``i``."""
    k = R.shape[0]
    if k == 1:
        return np.ones(1), True
    largest = float(np.max(np.einsum("ij,ij->i", R, R)))
    if not np.isfinite(R).all() or not largest > TINY:
        return np.full(k, 1.0 / k), True
    R = R / math.sqrt(largest)
    A = np.vstack([R.T, np.ones((1, k))])
    target = np.zeros(k + 1)
    target[-1] = 1.0
    try:
        u, _ = nnls(A, target, maxiter=50 * k)
        total = float(u.sum())
        if not (np.isfinite(u).all() and total > 0):
            raise RuntimeError("non-finite NNLS solution")
        w = u / total
        x = R.T @ w
        Kw = R @ x
        if float(np.min(Kw) - x @ x) < -1e-9:
            raise RuntimeError("KKT violated")
        return w, True
    except (RuntimeError, np.linalg.LinAlgError, ValueError):
        return frank_wolfe_min_norm(R @ R.T), False


def adam_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, lr: float,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0) -> tuple[Tensor, Tensor, Tensor, int]:
    """One step of ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, not AdamW).

    Functional: returns ``(param, exp_avg, exp_avg_sq, step)`` as new tensors, the same arithmetic as
    the single-tensor path of ``torch.optim.Adam`` so that a method that owns its parameters (UW's
    log-variances, FAMO's logits) follows its authors' optimizer exactly.
    """
    beta1, beta2 = betas
    if weight_decay != 0:
        grad = grad + weight_decay * param
    step += 1
    exp_avg = exp_avg.lerp(grad, 1 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    denom = exp_avg_sq.sqrt() / math.sqrt(bias_correction2) + eps
    param = param - (lr / bias_correction1) * (exp_avg / denom)
    return param, exp_avg, exp_avg_sq, step
