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
1e8 in one matrix are fine). The scaled problem is solved in float64 by damped Newton on ``f``: a
fraction-to-boundary rule keeps the iterates positive, an Armijo search tries all its step lengths at
once and keeps the longest that passes, and after each step that is not already small the iterate moves
to the best point on its ray ``t·v`` (``f`` restricted to the ray has a closed-form minimiser). Newton starts from the exact
solution for orthogonal rows or from the caller's previous weights (``start``), whichever is better.

The ray step matters where (*) has no solution of moderate size: there ``f`` decreases (almost) without
bound along a positive direction of (almost) zero curvature, Newton's steps only grow the iterate by the
factor ``1 + 1/p`` each, and the ray step jumps along that direction at once, so the divergence shows
within a few iterations instead of the whole budget.

Flow. One loop of at most ``MAX_ITERATIONS`` Newton iterations (``WARM_ITERATIONS`` from a warm start),
then one of ``LEAST_SQUARES_ITERATIONS`` fallback iterations, every branch a mask: iterates that have
converged or failed stay put, and the fallback's point replaces Newton's by mask where Newton did not
solve (*). A call reads nothing back to the host, traces whole under ``torch.compile`` and can be
captured in a CUDA graph. On the CPU outside a trace the loops stop early
(:func:`~mtrl.aggregation._linalg.may_stop`): Newton once it has converged or failed, the fallback at
once where Newton solved (*) — the same weights either way.

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
"""

from __future__ import annotations

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
#: Newton steps that change some ``v_i`` by more than this fraction are followed by the ray step.
RAY_STEP_MIN_CHANGE = 1e-2


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
        validate: check ω's values (a host read); ``False`` replaces a bad ω by ones (callers that
            defer their checks have recorded a bad Δm already).

    Returns:
        The weights in float64 on the Jacobian's device, and whether a fallback was needed.
    """
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"Parameter `alpha` should be a positive finite number. Found `alpha = {alpha!r}`.")
    k, device = jacobian.shape[0], jacobian.device
    omega = None if utility_weights is None else utility_weights.detach().to(device=device, dtype=torch.float64)
    if omega is not None and omega.shape != (k,):
        raise ValueError(f"utility_weights must be {k} positive finite numbers, got shape {tuple(omega.shape)}.")
    if validate and omega is not None and not bool((omega > 0).all() & torch.isfinite(omega).all()):
        raise ValueError(f"utility_weights must be {k} positive finite numbers, got {omega.cpu()}.")
    # No autograd bookkeeping on the solver's small operations. (Not inference mode: its tensors cannot be
    # traced by torch.compile's aot_autograd.)
    with torch.no_grad():
        problem = _ScaledProblem.of(*_linalg.scaled_gramian(jacobian), omega, 1.0 / alpha)
        v, solved = _newton(problem, _first_iterate(problem, start),
                            MAX_ITERATIONS if start is None else WARM_ITERATIONS)
        return problem.solution(torch.where(solved, v, _bounded_least_squares(problem, solved)), solved)


@dataclass
class _ScaledProblem:
    """(*) in the scaled variables ``v = γ^(-1/(1+p)) · D w`` (``D = diag(‖g_i‖)``): ``(C v)_i = c_i v_i^(-p)``
    with ``C`` the cosine matrix and ``c`` of geometric mean 1 (see the module docstring).

    Zero rows (``active`` False) become decoupled dummies, ``(C v)_i = v_i`` with ``c_i = 1``, and get weight
    0 when unscaled; ``all_zero`` marks a Jacobian with no non-zero row.
    """

    p: float
    cosines: Tensor
    abs_cosines: Tensor
    constants: Tensor
    active: Tensor
    all_zero: Tensor
    relative_norms: Tensor   # row norms / the largest (1 for inactive rows): the fallback's residual weights
    shift: Tensor            # log w − log v: log γ / (1 + p) − log ‖g_i‖ on the active rows

    @classmethod
    def of(cls, gramian: Tensor, scale: Tensor, omega: Tensor | None, p: float) -> _ScaledProblem:
        """The problem for the Gramian ``G Gᵀ / scale²`` and ω (``None``, or one that is not positive and
        finite, for ones: callers that defer their checks report a bad ω separately)."""
        squared = torch.diagonal(gramian)
        largest = squared.max()
        active = squared > ZERO_ROW_RELATIVE_NORM ** 2 * largest   # none when all rows are zero
        norms = torch.where(active, squared, 1.0).sqrt()
        cosines = torch.where(active[:, None] & active[None, :], (gramian / torch.outer(norms, norms)).clamp(-1.0, 1.0),
                              0.0)
        cosines.diagonal().fill_(1.0)
        log_norms = torch.where(active, norms.log() + scale.log(), 0.0)
        # c'_i = ω_i^(1/α) ‖g_i‖^(p-1), divided by its geometric mean γ over the active rows.
        log_constants = (p - 1.0) * log_norms
        if omega is not None:
            log_omega = omega.log()
            log_constants = log_constants + p * torch.where(torch.isfinite(log_omega.sum()), log_omega, 0.0)
        log_constants = torch.where(active, log_constants, 0.0)
        log_gamma = log_constants.sum() / active.sum().clamp_min(1)
        constants = torch.where(active, (log_constants - log_gamma).exp(), 1.0)
        return cls(p, cosines, cosines.abs(), constants, active, ~(largest > 0),
                   torch.where(active, norms / largest.sqrt(), 1.0), torch.where(active, log_gamma / (1.0 + p) - log_norms, 0.0))

    def solution(self, scaled: Tensor, solved: Tensor) -> AlphaFairSolution:
        """The weights ``w = γ^(1/(1+p)) · scaled / ‖g‖`` on the active rows, 0 on the others (``1/k`` for an
        all-zero Jacobian), and the flags: zero rows, no solution, all rows zero, any."""
        k, all_zero = scaled.shape[0], self.all_zero
        weights = torch.where(all_zero, 1.0 / k, torch.where(self.active, scaled * self.shift.exp(), 0.0))
        zero_rows, no_solution = ~self.active.all() & ~all_zero, ~solved & ~all_zero
        return AlphaFairSolution(weights, zero_rows, no_solution, all_zero, zero_rows | no_solution | all_zero)


def _orthogonal_start(constants: Tensor, p: float) -> Tensor:
    """The solution when the rows are orthonormal, ``v_i^(1+p) = c_i``."""
    return constants ** (1.0 / (1.0 + p))


def _barrier(v: Tensor, p: float) -> Tensor:
    """``h(v)``: ``log v`` (p = 1) or ``v^(1-p)/(1-p)``, with ``h'(v) = v^(-p)``."""
    return v.log() if p == 1.0 else v ** (1.0 - p) / (1.0 - p)


def _on_best_point_of_ray(cosines: Tensor, constants: Tensor, p: float, v: Tensor) -> Tensor:
    """``t·v`` with ``t`` minimising ``f`` on the ray, ``t^(1+p) = Σ c_i v_i^(1-p) / vᵀCv``; ``v`` is ``[..., k]``.
    Where ``vᵀCv ≤ 1e-12 vᵀv`` — ``f`` decreases without bound along the ray, up to the rounding of ``C`` (the
    cosines of opposite rows are −1 only to float64 precision) — there is no solution: ``t`` is infinite."""
    curvature = ((v @ cosines) * v).sum(-1, keepdim=True)   # (C symmetric)
    curvature = torch.where(curvature > 1e-12 * (v * v).sum(-1, keepdim=True), curvature, 0.0)
    return v * (((v ** (1.0 - p) * constants).sum(-1, keepdim=True) / curvature) ** (1.0 / (1.0 + p)))


def _first_iterate(problem: _ScaledProblem, start: Tensor | None) -> Tensor:
    """Newton's first iterate: the orthogonal-rows solution or the caller's ``start`` (the previous weights),
    each moved to the best point on its ray, whichever has the lower potential. Neither start is always the
    better: consecutive batches' Gramians can differ enough that the previous weights start further away."""
    cosines, constants, p = problem.cosines, problem.constants, problem.p
    orthogonal = _orthogonal_start(constants, p)
    if start is None:
        return _on_best_point_of_ray(cosines, constants, p, orthogonal)
    guess = torch.where(problem.active, start.log() - problem.shift, 0.0).exp()
    usable = torch.isfinite(guess.log().sum())   # finite and positive on every row
    candidates = _on_best_point_of_ray(cosines, constants, p, torch.stack([orthogonal, torch.where(usable, guess, orthogonal)]))
    potential = 0.5 * ((candidates @ cosines) * candidates).sum(-1) - _barrier(candidates, p) @ constants
    return torch.where(potential[1] < potential[0], candidates[1], candidates[0])   # (NaN: the orthogonal start)


def _newton(problem: _ScaledProblem, v: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Solve ``(C v)_i = c_i v_i^(-p)``, ``v > 0``, from ``v`` by damped Newton (:func:`_newton_step`), at most
    ``iterations`` steps: ``(v, solved)``, ``solved`` a 0-dim bool tensor (converged; not solved: no descent,
    no acceptable step, divergence, or the iterations ran out)."""
    cosines = problem.cosines
    fractions = 0.5 ** torch.arange(LINE_SEARCH_STEPS, dtype=cosines.dtype, device=cosines.device)
    done = settled = torch.zeros((), dtype=torch.bool, device=cosines.device)
    for _ in range(iterations):
        v, done, settled = _newton_step(problem, v, done, settled, fractions)
        if _linalg.may_stop(settled):
            break
    return v, done


def _newton_step(problem: _ScaledProblem, v: Tensor, done: Tensor, settled: Tensor,
                 fractions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One safeguarded Newton iteration on ``f``: ``(v, done, settled)`` after it, ``settled`` = converged or
    failed (every branch a mask; a settled iterate stays put).

    The step ``s`` solves ``(C + diag(p c v^(-p-1))) s = −∇f``; a fraction-to-boundary rule (iterates stay
    positive) bounds its length, the Armijo search tries the lengths ``t_max · fractions`` at once and keeps
    the longest that passes, and (unless the step was small) the moved point goes to the best point on its ray.
    """
    cosines, constants, p = problem.cosines, problem.constants, problem.p
    target = constants * v ** (-p)
    cv = cosines @ v
    descent = target - cv   # −∇f
    step = torch.linalg.solve_ex(cosines + torch.diag_embed(p * target / v), descent).result   # unchecked: masked below
    relative = step / v
    error = descent.abs()
    residual = (error / target).max()
    # Stalled at float64 precision: a task with a tiny gradient next to large ones has a utility that is
    # a nearly cancelling sum, which float64 cannot resolve to a small *relative* residual. Accept a
    # residual at rounding level relative to the size of the terms. (A diverging iterate never stalls.)
    change = relative.abs().max()
    stalled = change < 1e-12
    backward = (error / (problem.abs_cosines @ v + target)).max()
    finished = (residual < TOLERANCE) | (stalled & ((residual < 1e-8) | (backward < STALLED_TOLERANCE)))
    decrement = descent @ step   # > 0: Newton directions descend a convex f
    t_max = 0.99 / (-relative.min()).clamp_min(0.99)   # ≤ 1, and 0.99 of the way to the boundary
    lengths = t_max * fractions
    accepted = _decrease(cosines, cv, constants, p, v, step, relative, lengths) <= -1e-4 * decrement * lengths
    # In the last, quadratically convergent steps the decrease is below float64 resolution of f: a full
    # step with a tiny Newton decrement is taken as is.
    tiny_decrement = decrement <= 1e-12 * (1.0 + v @ cv)
    t = torch.where(tiny_decrement, t_max, torch.where(accepted, lengths, 0.0).max())   # the longest accepted
    moved = v + t * step
    # The ray step pays in the damped phase; near the solution, where Newton converges quadratically, its factor
    # (a ratio of sums that cancel along a direction of small curvature) would only add rounding noise.
    moved = torch.where(t * change > RAY_STEP_MIN_CHANGE, _on_best_point_of_ray(cosines, constants, p, moved), moved)
    # NaN fails every comparison, so a non-finite step counts as bad.
    good = (decrement > 0) & (t > 0) & (moved.max() <= DIVERGENCE) & ~stalled
    done = done | (finished & ~settled)
    settled = settled | finished | ~good
    return torch.where(settled, v, moved), done, settled


def _decrease(cosines: Tensor, cv: Tensor, constants: Tensor, p: float, v: Tensor, step: Tensor, relative: Tensor,
              lengths: Tensor) -> Tensor:
    """``f(v + t·s) − f(v)`` for each length ``t`` (``cv = Cv``, ``relative = s / v``):
    ``t sᵀCv + ½ t² sᵀCs − Σ_i c_i (h(v_i + t s_i) − h(v_i))``.

    The quadratic part is exact in ``t``, and the barrier's differences are formed without cancellation
    (``log1p``, ``expm1``), so the Armijo test resolves decreases far below the size of ``f`` itself.
    Needs ``t s_i / v_i > −1`` (the fraction-to-boundary rule).
    """
    growth = torch.log1p(lengths[:, None] * relative)          # log((v_i + t s_i) / v_i)
    if p == 1.0:
        barrier = growth @ constants
    else:
        barrier = torch.expm1((1.0 - p) * growth) @ (constants * v ** (1.0 - p) / (1.0 - p))
    return lengths * (step @ cv + (0.5 * (step @ (cosines @ step))) * lengths) - barrier


def _bounded_least_squares(problem: _ScaledProblem, solved: Tensor) -> Tensor:
    """The fallback: minimise the residual of (*) over ``w > 0``, as the authors' ``least_squares(bounds=(0, ∞))``
    (not needed, and skipped on the CPU, where Newton ``solved`` (*)).

    On the raw problem the residual is ``r_i = (K w)_i − c_i w_i^(-p)``; in the scaled variables it is
    ``‖g_i‖ · ((C v)_i − c_i v_i^(-p))`` up to one common factor, so we minimise
    ``Σ_i n_i² ((C v)_i − c_i v_i^(-p))²`` (``n`` the row norms relative to the largest): the
    authors' objective, with the same minimisers. Gauss-Newton in ``x = log v`` (which keeps ``v > 0``,
    the bound) from the orthogonal-rows start, for a fixed number of iterations, each step damped
    (Levenberg-Marquardt with a fixed damping) and softly capped (``c · tanh(δ/c)`` per coordinate):
    every operation is continuous and nothing is accepted or refused, so the result is a continuous
    function of the Gramian and ω.
    """
    cosines, constants, p, norms = problem.cosines, problem.constants, problem.p, problem.relative_norms
    cap = LEAST_SQUARES_MAX_LOG_STEP
    v = _orthogonal_start(constants, p)
    for _ in range(LEAST_SQUARES_ITERATIONS):
        if _linalg.may_stop(solved):
            break
        target = constants * v ** (-p)
        # The residual and its derivative in x: J = diag(n) · (C diag(v) + diag(p c v^(-p))).
        jacobian = norms[:, None] * (cosines * v + torch.diag_embed(p * target))
        normal = jacobian.T @ jacobian
        # Marquardt's scaling, plus a floor relative to the largest curvature that keeps the system regular
        # where JᵀJ is rank deficient (opposite rows).
        diagonal = normal.diagonal()
        regulariser = LEAST_SQUARES_DAMPING * diagonal + (1e-10 * diagonal.max() + 1e-300)
        step = torch.linalg.solve_ex(normal + torch.diag_embed(regulariser),
                                     jacobian.T @ (norms * (cosines @ v - target))).result
        v = v * torch.exp(-cap * torch.tanh(torch.nan_to_num(step) / cap))
    return v


class WarmStarted:
    """Mixin for the α-fair aggregators: the last weights, kept as a device tensor updated in place, are a
    candidate start of the next solve (:func:`_first_iterate` takes it where its potential is lower than the
    orthogonal-rows start's), which also sets the iteration budget (``WARM_ITERATIONS`` instead of
    ``MAX_ITERATIONS``). The state changes how fast a solve converges, not its solution, and being a device
    tensor updated in place it lives inside a captured CUDA graph too (``capturable``)."""

    capturable = True
    _state_attributes: tuple[str, ...] = ("last_weights",)
    _added_state_attributes: tuple[str, ...] = ("last_weights",)  # checkpoints from before the warm start

    def _init_state(self) -> None:
        super()._init_state()  # type: ignore[misc]
        self.last_weights: Tensor | None = None

    def _solve(self, jacobian: Tensor, alpha: float, utility_weights: Tensor | None = None) -> Tensor:
        """Solve from the last weights (when they fit), count a fallback, remember the weights. (ω comes from
        Δm, which the call's input check has validated: eagerly raised, or recorded for ``check()``.)"""
        k = jacobian.shape[0]
        previous = self.last_weights
        fits = previous is not None and previous.shape == (k,) and previous.device == jacobian.device
        solution = solve_alpha_fair(jacobian, alpha, utility_weights, start=previous if fits else None, validate=False)
        self._count_fallback(solution.fallback)  # type: ignore[attr-defined]
        if fits:
            previous.copy_(solution.weights)  # in place: a captured graph's replays update it too
        else:
            self.last_weights = solution.weights.clone()
        return solution.weights
