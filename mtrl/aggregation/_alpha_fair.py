"""The weighted α-fair direction shared by Nash-MTL, FairGrad, PIVRG and PI-Nash-MTL.

All four methods look for an update ``d = Σ_i w_i g_i`` (``g_i`` the rows of the ``[k, n]`` Jacobian
``G``, Gramian ``K = G Gᵀ``) that maximises a weighted α-fair utility of the tasks' first-order
improvements ``u_i = g_iᵀ d`` in a ball ``‖d‖ ≤ ε``::

    max_d  Σ_i ω_i · u_i^(1-α) / (1-α)        (α = 1: Σ_i ω_i log u_i)

The KKT stationarity condition ``Σ_i ω_i u_i^(-α) g_i = λ d`` gives ``w_i = ω_i u_i^(-α)`` (the
multiplier λ is absorbed by the step size), i.e. with ``u = K w``::

    (K w)_i = c_i · w_i^(-p),      p = 1/α,   c_i = ω_i^(1/α),   w > 0.                (*)

* Nash-MTL (Navon et al. 2022):        α = 1, ω = 1      → w_i (K w)_i = 1
* FairGrad (Ban & Ji 2024, Eq. 4):     α,     ω = 1      → (K w)_i = w_i^(-1/α)
* PIVRG (PIVRG paper Eq. 4, 8):        α = 2, ω from Δm  → (K w)_i² · w_i = ω_i
* PI-Nash-MTL (PIVRG paper Sec. 4.4):  α = 1, ω from Δm  → w_i (K w)_i = ω_i

:func:`solve_alpha_fair` solves (*) on the *raw* Gramian (no normalisation of the result: the weights
scale as ``‖G‖^(-2/(1+p))``, as in the authors' code, which solves on the raw Gramian or, for
Nash-MTL, in constraints stated on the raw Gramian).

Method. (*) is the stationarity condition of the strictly convex potential
``f(w) = ½ wᵀKw − Σ_i c_i h(w_i)`` with ``h'(w) = w^(-p)`` on the positive orthant. The rows are first
normalised, ``K = D C D`` with ``D = diag(‖g_i‖)`` and ``C`` the cosine matrix (unit diagonal), which
turns (*) into ``(C v)_i = c_i ‖g_i‖^(p-1) v_i^(-p)`` for ``v = D w``; the constants are then divided
by their geometric mean. This makes the solve independent of the gradients' magnitudes (1e-8 and
1e8 in one matrix are fine). The scaled problem is solved in float64 by damped Newton on ``f`` with
a fraction-to-boundary rule that keeps the iterates positive and an Armijo line search, started from
the exact solution for orthogonal rows rescaled to the best point on its ray; it converges
quadratically, typically in 5-15 iterations, for ``k`` up to 50.

(*) has a positive solution exactly when no non-negative combination of the rows vanishes, i.e. the
point is not Pareto stationary (Navon et al. 2022, Claim 3.1; PIVRG paper Assumption 1). Where it has
none — a zero row, opposite rows, any Pareto-stationary point (typical with more tasks than
parameters) — ``f`` has no minimiser and Newton diverges. The fallbacks, each reported as ``fallback=True``:

1. zero rows (``‖g_i‖ ≤ 1e-20 · max_j ‖g_j‖``) are left out of the solve and get weight 0 — their
   gradient contributes nothing to the update whatever their weight; all rows zero gives ``1/k``;
2. if the exact solve fails (no convergence in 30 Newton iterations, divergence, a singular or
   non-finite step), the weights are the bounded least-squares point of the equation's residual,
   ``min_{w ≥ 0} ‖K w − c ⊙ w^(-p)‖²`` — what the authors of FairGrad and PIVRG compute
   (``scipy.optimize.least_squares(..., x0=1/k, bounds=(0, ∞))``) — by a fixed budget of damped
   Gauss-Newton steps (:func:`_bounded_least_squares`). Where (*) is solvable that point *is* the
   exact solution (zero residual), so the fallback continues the exact solve. Where it is not, the
   residual tends to 0 only as ``w → ∞`` along the vanishing combination: no minimiser exists, and every
   least-squares solver (scipy's included) stops where its budget or tolerance says. Ours stops after a
   fixed number of steps, a continuous function of ``G`` and ω, with the authors' qualitative
   behaviour: the update ``d = Gᵀw`` leans towards the task whose ``c_i ‖g_i‖^(1+p)`` is larger — at a
   Pareto-stationary two-task point with equal gradient norms, the task with the larger ω (PIVRG,
   PI-Nash-MTL), so such a point keeps moving along the front towards the task that is behind.
   The ridge ``K + μ diag(K)`` used before this did not: its solution favoured the same end of the front
   whichever task was behind (issue 9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregation import _linalg

__all__ = ["AlphaFairSolution", "solve_alpha_fair"]

#: Rows whose norm is below this fraction of the largest row norm are treated as zero rows.
ZERO_ROW_RELATIVE_NORM = 1e-20
MAX_ITERATIONS = 30
#: Levenberg-Marquardt iterations of the least-squares fallback (fixed: no convergence test).
LEAST_SQUARES_ITERATIONS = 12
#: Levenberg-Marquardt damping of the fallback's Gauss-Newton steps (relative to JᵀJ's diagonal).
LEAST_SQUARES_DAMPING = 1e-3
#: Largest change of ``log v_i`` in one fallback iteration: at a Pareto-stationary point the residual
#: decreases only as ``v → ∞``, and this caps how fast the iterates may run there.
LEAST_SQUARES_MAX_LOG_STEP = 2.0
#: Relative residual ``max_i |(Cv)_i v_i^p / c_i − 1|`` that counts as solved.
TOLERANCE = 1e-10
#: Once Newton stalls at float64 precision: accepted backward error
#: ``max_i |(Cv)_i − c_i v_i^(-p)| / ((|C| v)_i + c_i v_i^(-p))``.
STALLED_TOLERANCE = 1e-10
#: Iterates beyond this size (the scaled problem's solution is O(1) when well posed) mean divergence.
DIVERGENCE = 1e6


@dataclass
class AlphaFairSolution:
    """``weights``: ``[k]`` float64 on the Jacobian's device; ``fallback``: whether a fallback was used;
    ``reason``: which one (empty when the exact equation was solved)."""

    weights: Tensor
    fallback: bool
    reason: str = ""


def _unit_gramian(jacobian: Tensor) -> tuple[np.ndarray, float]:
    """The Gramian of the rows scaled to a largest row norm of 1 (float64, host), and that largest norm.

    float32 Jacobians (the SAC agent's) take the shared float32 product of :func:`~._linalg.gramian`
    (``c = 1``: the raw ``J Jᵀ``), about 9× cheaper than a float64 copy of a 10 × 684,800 critic Jacobian;
    float64 ones are scaled before the product, so that no input magnitude overflows.
    """
    if jacobian.dtype != torch.float64:
        raw = _linalg.gramian(jacobian).cpu().numpy()
        largest = math.sqrt(max(float(np.diag(raw).max()), 0.0))
        return (raw / largest**2 if largest > 0 else raw), largest
    rows = jacobian.detach()
    largest = float(torch.linalg.vector_norm(rows, dim=1).max())
    if not largest > 0:
        return np.zeros((rows.shape[0],) * 2), largest
    rows = rows / largest  # largest row norm 1: no overflow in the Gramian for any input magnitude
    if rows.device.type == "cpu":
        # numpy's BLAS: torch's float64 kernels on a loaded CPU are up to 30x slower for these shapes.
        rows_np = rows.numpy()
        return rows_np @ rows_np.T, largest
    return (rows @ rows.T).cpu().numpy(), largest


def solve_alpha_fair(jacobian: Tensor, alpha: float, utility_weights: Tensor | None = None) -> AlphaFairSolution:
    """Solve ``(K w)_i = ω_i^(1/α) · w_i^(-1/α)``, ``K = G Gᵀ``, for ``w > 0`` (see the module docstring).

    Args:
        jacobian: ``[k, n]`` per-task gradients ``G`` (any float dtype and device; finite).
        alpha: the fairness exponent α > 0 (1: Nash bargaining / proportional fairness).
        utility_weights: ``[k]`` positive ω (default all ones).

    Returns:
        The weights in float64 on the Jacobian's device, and whether a fallback was needed.
    """
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"Parameter `alpha` should be a positive finite number. Found `alpha = {alpha!r}`.")
    k = jacobian.shape[0]
    device = jacobian.device
    p = 1.0 / alpha
    omega = (np.ones(k) if utility_weights is None
             else utility_weights.detach().to(device="cpu", dtype=torch.float64).numpy())
    if omega.shape != (k,) or not (omega > 0).all() or not np.isfinite(omega).all():
        raise ValueError(f"utility_weights must be {k} positive finite numbers, got {omega}.")

    gramian, largest = _unit_gramian(jacobian)
    if not largest > 0:
        return AlphaFairSolution(torch.full((k,), 1.0 / k, dtype=torch.float64, device=device), True, "all rows zero")
    norms = np.sqrt(np.maximum(np.diag(gramian), 0.0))
    active = norms > ZERO_ROW_RELATIVE_NORM
    norms = norms[active]
    cosines = gramian[np.ix_(active, active)] / np.outer(norms, norms)
    cosines = np.clip(0.5 * (cosines + cosines.T), -1.0, 1.0)
    np.fill_diagonal(cosines, 1.0)
    log_norms = np.log(norms) + math.log(largest)
    # (C v)_i = c'_i v_i^(-p) with c'_i = ω_i^(1/α) ‖g_i‖^(p-1); divide c' by its geometric mean γ.
    log_constants = p * np.log(omega[active]) + (p - 1.0) * log_norms
    log_gamma = float(log_constants.mean())
    constants = np.exp(log_constants - log_gamma)

    reason = "" if active.all() else "zero row(s) given weight 0"
    scaled = _newton(cosines, constants, p)
    if scaled is None:
        scaled = _bounded_least_squares(cosines, constants, p, norms)
        reason = _join(reason, "no solution (Pareto-stationary or degenerate rows); bounded least squares")

    # Undo the scalings: v = γ^(1/(1+p)) · scaled, w = v / ‖g‖.
    log_weights = np.log(scaled) + log_gamma / (1.0 + p) - log_norms
    weights = np.zeros(k)
    weights[active] = np.exp(log_weights)
    return AlphaFairSolution(torch.from_numpy(weights).to(device), bool(reason), reason)


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second


def _orthogonal_start(constants: np.ndarray, p: float) -> np.ndarray:
    """The solution when the rows are orthonormal, ``v_i^(1+p) = c_i``."""
    return constants ** (1.0 / (1.0 + p))


def _potential(cosines: np.ndarray, constants: np.ndarray, p: float, v: np.ndarray) -> float:
    """``f(v) = ½ vᵀCv − Σ c_i h(v_i)``, ``h(v) = log v`` (p = 1) or ``v^(1-p)/(1-p)``."""
    barrier = np.log(v) if p == 1.0 else v ** (1.0 - p) / (1.0 - p)
    return 0.5 * float(v @ cosines @ v) - float(constants @ barrier)


def _newton(cosines: np.ndarray, constants: np.ndarray, p: float) -> np.ndarray | None:
    """Solve ``(C v)_i = c_i v_i^(-p)``, ``v > 0``; ``None`` when it has no (reachable) solution."""
    with np.errstate(all="ignore"):
        v = _orthogonal_start(constants, p)
        # Best point on the ray t·v: t^(1+p) = Σ c_i v_i^(1-p) / vᵀCv (skipped when vᵀCv ≤ 0).
        curvature = float(v @ cosines @ v)
        if curvature > 1e-12 * float(v @ v):
            v = v * (float(constants @ v ** (1.0 - p)) / curvature) ** (1.0 / (1.0 + p))
        for _ in range(MAX_ITERATIONS):
            target = constants * v ** (-p)
            gradient = cosines @ v - target
            residual = float(np.max(np.abs(gradient) / target))
            if not np.isfinite(residual):
                return None
            if residual < TOLERANCE:
                return v
            hessian = cosines + np.diag(p * target / v)
            try:
                step = np.linalg.solve(hessian, -gradient)
            except np.linalg.LinAlgError:
                return None
            if not np.isfinite(step).all():
                return None
            if float(np.max(np.abs(step) / v)) < 1e-12:
                # Newton has stalled at float64 precision: a task with a tiny gradient next to large ones
                # has a utility (C v)_i that is a nearly cancelling sum, which float64 cannot resolve to
                # a small *relative* residual. Accept a residual at rounding level relative to the size
                # of the terms. (A diverging iterate never stalls: its steps are as large as v.)
                backward = float(np.max(np.abs(gradient) / (np.abs(cosines) @ v + target)))
                return v if residual < 1e-8 or backward < STALLED_TOLERANCE else None
            slope = float(gradient @ step)  # < 0: Newton directions descend a convex f
            if slope >= 0:
                return None
            shrinking = step < 0
            t = min(1.0, 0.99 * float(np.min(-v[shrinking] / step[shrinking]))) if shrinking.any() else 1.0
            current = _potential(cosines, constants, p, v)
            # Armijo backtracking; in the last, quadratically convergent steps the decrease is below
            # float64 resolution of f, so a full step with a tiny Newton decrement is taken as is.
            if -slope > 1e-12 * (1.0 + abs(current)):
                while not _potential(cosines, constants, p, v + t * step) <= current + 1e-4 * t * slope:
                    t *= 0.5
                    if t < 1e-12:
                        return None
            v = v + t * step
            if not np.isfinite(v).all() or float(v.max()) > DIVERGENCE or float(v.min()) <= 0:
                return None
    return None


def _bounded_least_squares(cosines: np.ndarray, constants: np.ndarray, p: float, norms: np.ndarray) -> np.ndarray:
    """The fallback: minimise the residual of (*) over ``w > 0``, as the authors' ``least_squares(bounds=(0, ∞))``.

    On the raw problem the residual is ``r_i = (K w)_i − c_i w_i^(-p)``; in the scaled variables it is
    ``‖g_i‖ · ((C v)_i − c_i v_i^(-p))`` up to one common factor, so we minimise
    ``Σ_i n_i² ((C v)_i − c_i v_i^(-p))²`` (``n`` the row norms relative to the largest): the
    authors' objective, with the same minimisers. Gauss-Newton in ``x = log v`` (which keeps ``v > 0``,
    the bound) from the orthogonal-rows start, for a fixed number of iterations, each step damped
    (Levenberg-Marquardt with a fixed damping) and softly capped (``c · tanh(δ/c)`` per coordinate):
    every operation is continuous and nothing is accepted or refused, so the result is a continuous
    function of the Gramian and ω.
    """
    x = np.log(_orthogonal_start(constants, p))
    with np.errstate(all="ignore"):
        for _ in range(LEAST_SQUARES_ITERATIONS):
            v = np.exp(x)
            target = constants * np.exp(-p * x)
            residual = norms * (cosines @ v - target)
            # J = diag(n) · (C diag(v) + diag(p c v^(-p))): the residual's derivative in x.
            jacobian = norms[:, None] * (cosines * v[None, :] + np.diag(p * target))
            normal = jacobian.T @ jacobian
            # Marquardt's scaling, plus a floor relative to the largest curvature that keeps the
            # system regular where JᵀJ is rank deficient (opposite rows).
            diagonal = np.diag(normal)
            regulariser = LEAST_SQUARES_DAMPING * diagonal + 1e-10 * float(np.max(diagonal)) + 1e-300
            step = -np.linalg.solve(normal + np.diag(regulariser), jacobian.T @ residual)
            cap = LEAST_SQUARES_MAX_LOG_STEP
            x = x + cap * np.tanh(np.nan_to_num(step) / cap)
    return np.exp(x)
