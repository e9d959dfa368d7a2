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
the exact solution for orthogonal rows or the caller's previous weights (``start``), whichever is better
after each is rescaled to the best point on its ray (:func:`_prepare`); it converges quadratically,
typically in 5-15 iterations for ``k`` up to 50, in 1-3 from a nearby warm start (MT10 training: 5 in most
solves, up to 10).

Device. Everything runs in torch on the Jacobian's device, in float64, with every branch taken by a mask
(``torch.where``): the Armijo search tries all its step lengths at once and keeps the longest that
passes, and iterates that have converged or failed stay put. A call reads nothing back to the host, so
it can be captured in a CUDA graph; on a GPU (or with ``_linalg.EARLY_EXIT_ON_CPU`` off) it runs its fixed
iteration counts (``MAX_ITERATIONS`` from a cold start, ``WARM_ITERATIONS`` from a warm one) and always
computes the fallback, chosen by mask, its iterations beside Newton's (:func:`_paired_step`). On CUDA a
solve is three stages fused by ``torch.compile`` (``_linalg.FUSE_ON_DEVICES``): :func:`_prepare`, the iteration
pairs and :func:`_conclude`; a pair's two k×k systems (Newton's and the fallback's) are solved as one
batch, one Triton launch (``_linalg.solve_spd``). ``python -m mtrl.bench launches`` counts them from
inductor's Triton output: at k = 10 a warm solve is 8 + 12 × 12 + 2 launches, against ~170 + 12 × 31 before
the stages, the solve kernel, the batched solve and the expanded line search (:func:`_decrease`). On the CPU,
where reading a value costs nothing, it stops as soon as Newton has converged or failed and computes the
fallback only when it is used: the same arithmetic, so the same weights. The price of one path: a CPU
solve of a tiny problem is dominated by per-operation overhead (k = 2: ~0.8 ms warm, ~3.5 ms on a Pareto
front where Newton fails and the fallback runs), several times the NumPy solver this replaced.

(*) has a positive solution exactly when no non-negative combination of the rows vanishes, i.e. the
point is not Pareto stationary (Navon et al. 2022, Claim 3.1; PIVRG paper Assumption 1). Where it has
none — a zero row, opposite rows, any Pareto-stationary point (typical with more tasks than
parameters) — ``f`` has no minimiser and Newton diverges. The fallbacks, each reported as ``fallback=True``:

1. zero rows (``‖g_i‖ ≤ 1e-20 · max_j ‖g_j‖``) are left out of the solve and get weight 0 — their
   gradient contributes nothing to the update whatever their weight; all rows zero gives ``1/k``;
2. if the exact solve fails (no convergence within its iterations, divergence, a singular or
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

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.aggregation import _linalg

__all__ = ["AlphaFairSolution", "solve_alpha_fair", "WarmStarted"]


#: Rows whose norm is below this fraction of the largest row norm are treated as zero rows.
ZERO_ROW_RELATIVE_NORM = 1e-20
#: Newton iterations from the cold (orthogonal-rows) start, and from a caller's warm start.
MAX_ITERATIONS = 30
WARM_ITERATIONS = 12
#: Step lengths the Armijo search tries at once: t_max · 2^-j, j < this (down to ~1e-12 · t_max).
LINE_SEARCH_STEPS = 40
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
    """``weights``: ``[k]`` float64 on the Jacobian's device; ``fallback``: a 0-dim bool tensor on that
    device, whether a fallback was used (``bool()`` of it reads it back); ``reason``: which one (empty
    when the exact equation was solved), built from the flags only when asked for."""

    weights: Tensor
    zero_rows: Tensor
    no_solution: Tensor
    all_zero: Tensor
    fallback: Tensor   # any of the three

    @property
    def reason(self) -> str:
        if bool(self.all_zero):
            return "all rows zero"
        reasons = (["zero row(s) given weight 0"] if bool(self.zero_rows) else []) + (
            ["no solution (Pareto-stationary or degenerate rows); bounded least squares"]
            if bool(self.no_solution) else [])
        return "; ".join(reasons)


def _log_row_norms(gramian: Tensor, scale: Tensor) -> Tensor:
    """The rows' true log norms (``-inf`` for zero rows) from the Gramian ``K' = G Gᵀ / s²`` of
    :func:`~._linalg.scaled_gramian` (float32 Jacobians, the agent's: ``s = 1``; float64 ones are divided by
    their largest entry first, so that no input magnitude overflows)."""
    return 0.5 * torch.log(torch.diagonal(gramian).clamp_min(0.0)) + torch.log(scale)


def solve_alpha_fair(jacobian: Tensor, alpha: float, utility_weights: Tensor | None = None,
                     start: Tensor | None = None, validate: bool = True) -> AlphaFairSolution:
    """Solve ``(K w)_i = ω_i^(1/α) · w_i^(-1/α)``, ``K = G Gᵀ``, for ``w > 0`` (see the module docstring).

    Args:
        jacobian: ``[k, n]`` per-task gradients ``G`` (any float dtype and device; finite).
        alpha: the fairness exponent α > 0 (1: Nash bargaining / proportional fairness).
        utility_weights: ``[k]`` positive ω (default all ones).
        start: ``[k]`` weights to start Newton from (the previous step's, for a warm start): only where
            it is finite and positive on every non-zero row, else the cold start; it changes how fast
            the solve converges, not the solution.
        validate: check ω's values (a host read); ``False`` (deferred checks) replaces a bad ω by ones.

    Returns:
        The weights in float64 on the Jacobian's device, and whether a fallback was needed.
    """
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"Parameter `alpha` should be a positive finite number. Found `alpha = {alpha!r}`.")
    # No autograd bookkeeping on the solver's ~100 small operations per iteration (~15% of a CPU solve).
    # (Not inference mode: its tensors cannot be traced by torch.compile's aot_autograd.)
    with torch.no_grad():
        return _solve(jacobian, alpha, utility_weights, start, validate)


def _solve(jacobian: Tensor, alpha: float, utility_weights: Tensor | None, start: Tensor | None,
           validate: bool) -> AlphaFairSolution:
    """:func:`solve_alpha_fair`'s body (without autograd): scale, Newton, the fallback where it fails, unscale.

    Three stages, each fused into a few kernels on a GPU (:func:`~._linalg.fused`): :func:`_prepare` (the scaled
    problem and the first iterate), the iterations (:func:`_newton`), :func:`_conclude` (the weights)."""
    k, device, p = jacobian.shape[0], jacobian.device, 1.0 / alpha
    omega = None if utility_weights is None else utility_weights.detach().to(device=device, dtype=torch.float64)
    if omega is not None and omega.shape != (k,):
        raise ValueError(f"utility_weights must be {k} positive finite numbers, got shape {tuple(omega.shape)}.")
    if validate and omega is not None and not bool((omega > 0).all() & torch.isfinite(omega).all()):
        raise ValueError(f"utility_weights must be {k} positive finite numbers, got {omega.cpu()}.")
    if start is not None:
        start = start.detach().to(device=device, dtype=torch.float64)
    gramian, scale = _linalg.scaled_gramian(jacobian)
    problem, v = _linalg.fused(_prepare, device)(gramian, scale, omega, p, start)

    # With fixed iteration counts (a GPU, or traced) the fallback is always computed, and its iterations
    # run beside Newton's. On the CPU Newton runs alone and stops once settled; the fallback only follows
    # where it failed.
    early = _linalg.early_exit(device)
    iterations = MAX_ITERATIONS if start is None else WARM_ITERATIONS
    newton = _newton(problem, v, iterations, not early)
    if newton is None:  # (tests force the fallback this way: Newton "failed" at its start)
        false = torch.zeros((), dtype=torch.bool, device=device)
        newton = v, false, ~false, None
    v, done, failed, fallback = newton
    if fallback is None and (not early or not bool(_solved(problem, v, done, failed))):
        fallback = _bounded_least_squares(problem.cosines, problem.constants, p, problem.relative_norms)
    return AlphaFairSolution(*_linalg.fused(_conclude, device)(problem, v, done, failed, fallback))


@dataclass
class _ScaledProblem:
    """(*) in the scaled variables ``v = γ^(-1/(1+p)) · D w`` (``D = diag(‖g_i‖)``): ``(C v)_i = c_i v_i^(-p)``
    with ``C`` the cosine matrix and ``c`` of geometric mean 1 (see the module docstring).

    Zero rows (``active`` False) become decoupled dummies, ``(C v)_i = v_i`` with ``c_i = 1``, and get weight
    0 when unscaled; ``all_zero`` marks a Jacobian with no non-zero row.
    """

    p: float
    cosines: Tensor
    constants: Tensor
    active: Tensor
    all_zero: Tensor
    relative_norms: Tensor   # row norms / the largest (1 for inactive rows): the fallback's residual weights
    log_norms: Tensor        # true log row norms (0 for inactive rows)
    log_gamma: Tensor

    @classmethod
    def of(cls, gramian: Tensor, scale: Tensor, omega: Tensor | None, p: float) -> _ScaledProblem:
        """The problem for the Gramian ``G Gᵀ / scale²`` and ω (``None``, or one that is not positive and
        finite, for ones: callers that defer their checks report a bad ω separately)."""
        k = gramian.shape[0]
        ones = torch.ones(k, dtype=torch.float64, device=gramian.device)
        if omega is not None:
            omega = torch.where((omega > 0).all() & torch.isfinite(omega).all(), omega, ones)
        log_norms = _log_row_norms(gramian, scale)
        relative = torch.exp(log_norms - log_norms.max())  # 0/0 → nan when all rows are zero
        all_zero = ~torch.isfinite(log_norms.max())
        active = (relative > ZERO_ROW_RELATIVE_NORM) & ~all_zero
        norms = torch.where(active, torch.sqrt(torch.diagonal(gramian).clamp_min(0.0)), 1.0)
        cosines = gramian / (norms[:, None] * norms[None, :])
        cosines = (0.5 * (cosines + cosines.T)).clamp(-1.0, 1.0)
        eye = torch.eye(k, dtype=torch.float64, device=gramian.device)
        cosines = torch.where(active[:, None] & active[None, :], cosines, 0.0) * (1 - eye) + eye
        log_norms = torch.where(active, log_norms, 0.0)
        # c'_i = ω_i^(1/α) ‖g_i‖^(p-1), divided by its geometric mean γ over the active rows.
        log_omega = 0.0 if omega is None else p * torch.log(omega)
        log_constants = torch.where(active, log_omega + (p - 1.0) * log_norms, 0.0)
        log_gamma = log_constants.sum() / active.sum().clamp_min(1)
        constants = torch.where(active, torch.exp(log_constants - log_gamma), 1.0)
        return cls(p, cosines, constants, active, all_zero, torch.where(active, relative, 1.0), log_norms, log_gamma)

    def to_weights(self, scaled: Tensor) -> Tensor:
        """``w = γ^(1/(1+p)) · scaled / ‖g‖`` on the active rows, 0 on the others."""
        shift = self.log_gamma / (1.0 + self.p) - self.log_norms
        return torch.where(self.active, torch.exp(torch.log(scaled) + shift), 0.0)

    def warm_start(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """``weights`` in the scaled variables, and whether they are usable (finite and positive)."""
        shift = self.log_norms - self.log_gamma / (1.0 + self.p)
        guess = torch.where(self.active, torch.exp(torch.log(weights) + shift), 1.0)
        return guess, (torch.isfinite(guess) & (guess > 0)).all()


def _orthogonal_start(constants: Tensor, p: float) -> Tensor:
    """The solution when the rows are orthonormal, ``v_i^(1+p) = c_i``."""
    return constants ** (1.0 / (1.0 + p))


def _potential(cosines: Tensor, constants: Tensor, p: float, v: Tensor, cv: Tensor | None = None) -> Tensor:
    """``f(v) = ½ vᵀCv − Σ c_i h(v_i)``, ``h(v) = log v`` (p = 1) or ``v^(1-p)/(1-p)``; ``v`` is ``[..., k]``;
    ``cv = Cv`` where the caller has it already."""
    barrier = torch.log(v) if p == 1.0 else v ** (1.0 - p) / (1.0 - p)
    cv = _linalg.matvec(cosines, v) if cv is None else cv
    return 0.5 * (cv * v).sum(-1) - (barrier * constants).sum(-1)


def _decrease(cv: Tensor, curvature: Tensor, constants: Tensor, p: float, v: Tensor, step: Tensor,
              lengths: Tensor) -> Tensor:
    """``f(v + t·s) − f(v)`` for each length ``t`` (``cv = Cv``, ``curvature = sᵀCs``):
    ``t sᵀCv + ½ t² sᵀCs − Σ_i c_i (h(v_i + t s_i) − h(v_i))``.

    The quadratic part is exact in ``t``, and the barrier's differences are formed without cancellation
    (``log1p``, ``expm1``), so the Armijo test resolves decreases far below the size of ``f`` itself. It
    needs no product with ``C`` per trial length: on a GPU two of an iteration's kernels fewer than
    evaluating ``f`` at every trial point. Needs ``t s_i / v_i > −1`` (the fraction-to-boundary rule).
    """
    growth = torch.log1p(lengths[:, None] * (step / v)[None, :])          # log((v_i + t s_i) / v_i)
    barrier = growth if p == 1.0 else v ** (1.0 - p) * torch.expm1((1.0 - p) * growth) / (1.0 - p)
    return lengths * _linalg.dot(step, cv) + 0.5 * lengths ** 2 * curvature - (barrier * constants).sum(-1)


def _ray_rescaled(cosines: Tensor, constants: Tensor, p: float, v: Tensor) -> Tensor:
    """The best point on the ray ``t·v``: ``t^(1+p) = Σ c_i v_i^(1-p) / vᵀCv`` (``v`` itself when vᵀCv ≤ 0)."""
    curvature = _linalg.dot(v, _linalg.matvec(cosines, v))
    bounded = curvature > 1e-12 * _linalg.dot(v, v)
    factor = (_linalg.dot(constants, v ** (1.0 - p)) / torch.where(bounded, curvature, 1.0)) ** (1.0 / (1.0 + p))
    return torch.where(bounded, v * factor, v)


def _prepare(gramian: Tensor, scale: Tensor, omega: Tensor | None, p: float,
             start: Tensor | None) -> tuple[_ScaledProblem, Tensor]:
    """The scaled problem and Newton's first iterate: the orthogonal-rows solution or the caller's ``start``
    (the previous weights), each rescaled to the best point on its ray, whichever has the lower potential.

    The damped phase of Newton's method shortens with the potential's excess over its minimum, and neither
    start is always the better: over the first 600 pivrg updates of an MT10 run (CPU, 1,600 solves),
    Newton needed 4-5 iterations from the orthogonal start in most solves (up to 10) and 6-7 from the
    previous weights (up to 11): consecutive batches' Gramians differ that much. A nearby start (the
    same Gramian, slowly changing ones) wins where it exists."""
    problem = _ScaledProblem.of(gramian, scale, omega, p)
    cosines, constants = problem.cosines, problem.constants
    v = _ray_rescaled(cosines, constants, p, _orthogonal_start(constants, p))
    if start is not None:
        guess, usable = problem.warm_start(start)
        warm = _ray_rescaled(cosines, constants, p, torch.where(usable, guess, v))
        better = usable & (_potential(cosines, constants, p, warm) < _potential(cosines, constants, p, v))
        v = torch.where(better, warm, v)
    return problem, v


def _newton(problem: _ScaledProblem, v: Tensor, iterations: int,
            with_fallback: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None] | None:
    """Solve ``(C v)_i = c_i v_i^(-p)``, ``v > 0``, from ``v``: ``(v, done, failed, fallback)``, the flags 0-dim
    bool tensors (``done``: converged; ``failed``: no descent, no acceptable step or divergence).

    Damped Newton on the convex potential (:func:`_newton_step`), at most ``iterations`` steps. An iterate
    that has converged or failed stays put; on the CPU (``_linalg.early_exit``) the loop stops there.

    ``with_fallback`` (fixed iteration counts): the iterations of :func:`_bounded_least_squares` run beside
    Newton's, each pair in one fused call (:func:`_paired_step`): the two are independent, so the numbers
    are those of running them one after the other, with half the calls and, on a GPU, half the launches.
    ``fallback`` is that point, or ``None`` without ``with_fallback``.
    """
    cosines, constants, p, device = problem.cosines, problem.constants, problem.p, problem.cosines.device
    false, fractions, eye = _iteration_constants(cosines.shape[0], cosines.dtype, device)
    done = failed = false
    step, paired = _linalg.fused(_newton_step, device), _linalg.fused(_paired_step, device)
    x, norms = (_least_squares_start(constants, p), problem.relative_norms) if with_fallback else (None, None)
    early_exit = x is None and _linalg.early_exit(device)
    for iteration in range(iterations):
        if x is not None and iteration < LEAST_SQUARES_ITERATIONS:
            v, done, failed, x = paired(cosines, constants, p, norms, v, done, failed, x, fractions, eye)
        else:
            v, done, failed = step(cosines, constants, p, v, done, failed, fractions, eye)
        if early_exit and bool(done | failed):
            break
    for _ in range(iterations, LEAST_SQUARES_ITERATIONS if x is not None else 0):   # (none: Newton has more)
        x = _linalg.fused(_least_squares_step, device)(cosines, constants, p, norms, x, eye)
    return v, done, failed, None if x is None else torch.exp(x)


def _iteration_constants(k: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``False``, the Armijo fractions ``0.5^j`` and the identity: built once per size and device, since each
    would be a kernel launch per solve on a GPU. Only ever read (the iterations return new tensors).
    Traced by ``torch.compile`` they are built in the graph (dynamo would trace past the cache anyway)."""
    if torch.compiler.is_compiling():
        return _build_iteration_constants(k, dtype, device)
    return _cached_iteration_constants(k, dtype, device)


def _build_iteration_constants(k: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    false = torch.zeros((), dtype=torch.bool, device=device)
    return false, 0.5 ** torch.arange(LINE_SEARCH_STEPS, dtype=dtype, device=device), torch.eye(k, dtype=dtype, device=device)


@functools.cache
def _cached_iteration_constants(k: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    with torch.inference_mode(False):   # normal tensors, whatever mode the first call ran in
        return _build_iteration_constants(k, dtype, device)


def _solved(problem: _ScaledProblem, v: Tensor, done: Tensor, failed: Tensor) -> Tensor:
    """Whether Newton's ``v`` solves (*): converged, or within tolerance when the iterations ran out."""
    target = problem.constants * v ** (-problem.p)
    return ~failed & (done | (((_linalg.matvec(problem.cosines, v) - target).abs() / target).max() < TOLERANCE))


def _conclude(problem: _ScaledProblem, v: Tensor, done: Tensor, failed: Tensor,
              fallback: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The weights (Newton's point where it solved (*), else the fallback's; ``1/k`` for an all-zero
    Jacobian) and the flags of :class:`AlphaFairSolution`: zero rows, no solution, all rows zero, any."""
    solved = _solved(problem, v, done, failed)
    scaled = v if fallback is None else torch.where(solved, v, fallback)
    k, all_zero = v.shape[0], problem.all_zero
    weights = torch.where(all_zero, 1.0 / k, problem.to_weights(scaled))
    zero_rows, no_solution = ~problem.active.all() & ~all_zero, ~solved & ~all_zero
    return weights, zero_rows, no_solution, all_zero, zero_rows | no_solution | all_zero


def _newton_step(cosines: Tensor, constants: Tensor, p: float, v: Tensor, done: Tensor, failed: Tensor,
                 fractions: Tensor, eye: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One safeguarded Newton iteration on ``f``: ``(v, done, failed)`` after it (every branch a mask).

    The step has a fraction-to-boundary rule (iterates stay positive) and an Armijo search over the
    lengths ``t_max · fractions`` tried at once, keeping the longest that passes.
    """
    target, cv, gradient, hessian = _newton_system(cosines, constants, p, v, eye)
    step = -_linalg.solve_spd(hessian, gradient)  # unchecked: a bad step is masked below
    return _newton_move(cosines, constants, p, v, done, failed, fractions, target, cv, gradient, step)


def _newton_system(cosines: Tensor, constants: Tensor, p: float, v: Tensor,
                   eye: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The Newton system at ``v``: ``(target, Cv, ∇f, ∇²f)``, ``target_i = c_i v_i^(-p)``."""
    target = constants * v ** (-p)
    cv = _linalg.matvec(cosines, v)
    return target, cv, cv - target, cosines + eye * (p * target / v)


def _newton_move(cosines: Tensor, constants: Tensor, p: float, v: Tensor, done: Tensor, failed: Tensor,
                 fractions: Tensor, target: Tensor, cv: Tensor, gradient: Tensor,
                 step: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The safeguarded move along the Newton ``step`` (the system's solution, unchecked)."""
    residual = (gradient.abs() / target).max()
    converged = residual < TOLERANCE
    finite_step = torch.isfinite(step).all() & torch.isfinite(residual)
    step = torch.where(finite_step, step, 0.0)
    # Stalled at float64 precision: a task with a tiny gradient next to large ones has a utility that is
    # a nearly cancelling sum, which float64 cannot resolve to a small *relative* residual. Accept a
    # residual at rounding level relative to the size of the terms. (A diverging iterate never stalls.)
    stalled = (step.abs() / v).max() < 1e-12
    backward = (gradient.abs() / (_linalg.matvec(cosines.abs(), v) + target)).max()
    stalled_ok = stalled & ((residual < 1e-8) | (backward < STALLED_TOLERANCE))
    slope = (gradient * step).sum()  # < 0: Newton directions descend a convex f
    shrinking = step < 0
    boundary = torch.where(shrinking, -v / torch.where(shrinking, step, -1.0), math.inf).min()
    t_max = torch.clamp(0.99 * boundary, max=1.0)
    current = _potential(cosines, constants, p, v, cv)
    # Armijo; in the last, quadratically convergent steps the decrease is below float64 resolution of f,
    # so a full step with a tiny Newton decrement is taken as is.
    lengths = t_max * fractions
    # sᵀCs from the Newton system (C + D) s = −∇f, D = diag(p c_i v_i^(-p-1)): −slope − sᵀDs, no product with C.
    curvature = -slope - (p * target / v * step * step).sum()
    accepted = _decrease(cv, curvature, constants, p, v, step, lengths) <= 1e-4 * lengths * slope
    tiny_decrement = -slope <= 1e-12 * (1.0 + current.abs())
    first = torch.argmax(accepted.to(torch.int8))  # the longest accepted length (0 when none is)
    t = torch.where(tiny_decrement, t_max, lengths.gather(0, first.reshape(1)).squeeze(0))
    moved = v + t * step
    finished = converged | stalled_ok
    bad = (~finite_step | (stalled & ~stalled_ok) | (slope >= 0) | (~tiny_decrement & ~accepted.any())
           | ~torch.isfinite(moved).all() | (moved.max() > DIVERGENCE) | (moved.min() <= 0))
    failed = failed | (~done & ~finished & bad)
    done = done | (finished & ~failed)
    return torch.where(done | failed, v, moved), done, failed


def _bounded_least_squares(cosines: Tensor, constants: Tensor, p: float, norms: Tensor) -> Tensor:
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
    x = _least_squares_start(constants, p)
    eye = _iteration_constants(cosines.shape[0], cosines.dtype, cosines.device)[2]
    step = _linalg.fused(_least_squares_step, cosines.device)
    for _ in range(LEAST_SQUARES_ITERATIONS):
        x = step(cosines, constants, p, norms, x, eye)
    return torch.exp(x)


def _least_squares_start(constants: Tensor, p: float) -> Tensor:
    """The fallback's start, the orthogonal-rows solution, in its variable ``x = log v``."""
    return torch.log(_orthogonal_start(constants, p))


def _paired_step(cosines: Tensor, constants: Tensor, p: float, norms: Tensor, v: Tensor, done: Tensor,
                 failed: Tensor, x: Tensor, fractions: Tensor, eye: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A Newton iteration and a fallback iteration, independent of each other, as one function to fuse;
    their two k×k systems are solved as one batch (one launch of the small-solve kernel on a GPU)."""
    target, cv, gradient, hessian = _newton_system(cosines, constants, p, v, eye)
    normal, rhs = _least_squares_system(cosines, constants, p, norms, x, eye)
    steps = -_linalg.solve_spd(torch.stack([hessian, normal]), torch.stack([gradient, rhs]))
    return (*_newton_move(cosines, constants, p, v, done, failed, fractions, target, cv, gradient, steps[0]),
            _least_squares_move(x, steps[1]))


def _least_squares_step(cosines: Tensor, constants: Tensor, p: float, norms: Tensor, x: Tensor,
                        eye: Tensor) -> Tensor:
    """One damped, capped Gauss-Newton step of the fallback in ``x = log v``."""
    return _least_squares_move(x, -_linalg.solve_spd(*_least_squares_system(cosines, constants, p, norms, x, eye)))


def _least_squares_system(cosines: Tensor, constants: Tensor, p: float, norms: Tensor, x: Tensor,
                          eye: Tensor) -> tuple[Tensor, Tensor]:
    """The fallback's damped Gauss-Newton system at ``x``: ``(JᵀJ + damping, Jᵀr)``; its solution is minus the step."""
    v = torch.exp(x)
    target = constants * torch.exp(-p * x)
    residual = norms * (_linalg.matvec(cosines, v) - target)
    # J = diag(n) · (C diag(v) + diag(p c v^(-p))): the residual's derivative in x.
    jacobian = norms[:, None] * (cosines * v[None, :] + eye * (p * target))
    normal = (jacobian[:, :, None] * jacobian[:, None, :]).sum(0)   # JᵀJ
    # Marquardt's scaling, plus a floor relative to the largest curvature that keeps the system regular
    # where JᵀJ is rank deficient (opposite rows).
    diagonal = torch.diagonal(normal)
    regulariser = LEAST_SQUARES_DAMPING * diagonal + 1e-10 * diagonal.max() + 1e-300
    return normal + eye * regulariser, _linalg.matvec(jacobian.T, residual)


def _least_squares_move(x: Tensor, step: Tensor) -> Tensor:
    """``x`` moved by the Gauss-Newton ``step``, softly capped per coordinate (``c · tanh(δ/c)``)."""
    cap = LEAST_SQUARES_MAX_LOG_STEP
    return x + cap * torch.tanh(torch.nan_to_num(step) / cap)


class WarmStarted:
    """Mixin for the α-fair aggregators: the last weights, kept as a device tensor updated in place, are a
    candidate start of the next solve (:func:`_prepare` takes it where its potential is lower than the
    orthogonal-rows start's: from nearby weights Newton needs 1-3 iterations instead of 5-15). It also sets
    the iteration budget of fixed-count solves (``WARM_ITERATIONS`` instead of ``MAX_ITERATIONS``). The
    state changes how fast a solve converges, not its solution, and being a device tensor updated in place
    it lives inside a captured CUDA graph too (``capturable``)."""

    capturable = True
    _state_attributes: tuple[str, ...] = ("last_weights",)
    _added_state_attributes: tuple[str, ...] = ("last_weights",)  # checkpoints from before the warm start

    def _init_state(self) -> None:
        super()._init_state()  # type: ignore[misc]
        self.last_weights: Tensor | None = None

    def _solve(self, jacobian: Tensor, alpha: float, utility_weights: Tensor | None = None) -> Tensor:
        """Solve from the last weights (when they fit), count a fallback, remember the weights."""
        k = jacobian.shape[0]
        previous = self.last_weights
        fits = previous is not None and previous.shape == (k,) and previous.device == jacobian.device
        solution = solve_alpha_fair(jacobian, alpha, utility_weights, start=previous if fits else None,
                                    validate=not self._deferring())  # type: ignore[attr-defined]
        self._count_fallback(solution.fallback)  # type: ignore[attr-defined]
        if fits:
            previous.copy_(solution.weights)  # in place: a captured graph's replays update it too
        else:
            self.last_weights = solution.weights.clone()
        return solution.weights
