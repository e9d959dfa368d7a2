"""Independent reference solutions for the fairness family and ExcessMTL (test-only).

Each follows the authors' formulation, written out here from their papers and public code, with a
different numerical method from ours (cvxpy convex programs, scipy least squares, a plain loop), so
that agreement checks the equation and not just our solver.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor


def nash_mtl_ccp(gramian: np.ndarray, iterations: int = 10, utility_weights: np.ndarray | None = None) -> np.ndarray:
    """Nash-MTL weights by the authors' concave-convex procedure (Navon et al. 2022, Sec. 3.2).

    The authors' formulation: the Gramian divided by its Frobenius norm ``ν``, a non-negative variable
    α, constraints ``−log(ν α_i) − log((K̃ α)_i) ≤ 0`` (i.e. ``α_i (Kα)_i ≥ 1`` on the raw Gramian) and
    the objective ``Σ_i (K̃ α)_i + φ̃(α)/ν``, with φ̃ the first-order expansion of
    ``φ(α) = −Σ_i log α_i − Σ_i log (K̃ α)_i`` around the previous iterate, re-solved ``iterations``
    times from α = 1. Solved with CLARABEL (the authors use ECOS, not installed here).
    ``utility_weights`` ω turn the constraints into ``α_i (Kα)_i ≥ ω_i`` (PI-Nash-MTL).
    """
    import cvxpy as cp

    k = gramian.shape[0]
    omega = np.ones(k) if utility_weights is None else utility_weights
    scale = float(np.linalg.norm(gramian))
    normalised = gramian / scale
    alpha = cp.Variable(k, nonneg=True)
    previous = np.ones(k)
    for _ in range(iterations):
        utilities = normalised @ previous
        gradient_of_phi = -1.0 / previous - (1.0 / utilities) @ normalised
        phi = gradient_of_phi @ (alpha - previous)
        # −φ's linearisation enters with a minus sign in the authors' code: they define
        # prvs_phi_tag = 1/α + (1/Gα) G, i.e. −∇φ, and add it to the objective.
        objective = cp.Minimize(cp.sum(normalised @ alpha) - phi / scale)
        utility = normalised @ alpha
        constraints = [-cp.log(alpha[i] * scale / omega[i]) - cp.log(utility[i]) <= 0 for i in range(k)]
        problem = cp.Problem(objective, constraints)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            problem.solve(solver=cp.CLARABEL)
        current = np.asarray(alpha.value, dtype=np.float64)
        if np.linalg.norm(current - previous) < 1e-10 * np.linalg.norm(previous):
            previous = current
            break
        previous = current
    return previous


def fairgrad_least_squares(gramian: np.ndarray, alpha: float, utility_weights: np.ndarray | None = None) -> np.ndarray:
    """``(K w)_i = c_i w_i^(-1/α)`` by ``scipy.optimize.least_squares`` from ``1/k`` with ``w ≥ 0``.

    The FairGrad authors' solver (their ``objfn(x) = A @ x − (1/x)^(1/α)``; the PIVRG paper follows it
    for Eq. 8), with tight tolerances; ``c = ω^(1/α)``.
    """
    from scipy.optimize import least_squares

    k = gramian.shape[0]
    constants = np.ones(k) if utility_weights is None else utility_weights ** (1.0 / alpha)

    def residual(x: np.ndarray) -> np.ndarray:
        return gramian @ x - constants * np.power(1.0 / x, 1.0 / alpha)

    result = least_squares(residual, np.ones(k) / k, bounds=(0, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15,
                           max_nfev=10_000)
    return result.x


def excess_mtl_authors(jacobians: list[Tensor], robust_step_size: float) -> list[Tensor]:
    """The ExcessMTL authors' weight sequence (their LibMTL ``ExcessMTL.backward``), one per Jacobian.

    Weights start at 1; each call adds ``g_i²`` to the accumulator and computes
    ``w_i = Σ_j g_ij² / √(S_ij + 1e-7)``; the first call stores ``w`` as the initial excess risk and
    leaves the weights unchanged; later calls multiply the weights by ``exp(η w_i / w_i⁰)`` and
    renormalise them to sum to ``k``.
    """
    k = jacobians[0].shape[0]
    weights = torch.ones(k, dtype=torch.float64)
    accumulator = torch.zeros_like(jacobians[0], dtype=torch.float64)
    initial = None
    sequence = []
    for jacobian in jacobians:
        accumulator += jacobian.double() ** 2
        excess = torch.stack([(jacobian[i].double() ** 2 / torch.sqrt(accumulator[i] + 1e-7)).sum()
                              for i in range(k)])
        if initial is None:
            initial = excess
        else:
            weights = weights * torch.exp(robust_step_size * excess / initial)
            weights = weights / weights.sum() * k
        sequence.append(weights.clone())
    return sequence


def quadratic_variance_run(name: str, curvature: Tensor, steps: int = 60, step_length: float = 0.05,
                           **options) -> list[float]:
    """Var[Δm_i] along a run of ``name`` on quadratic tasks that share their optimum.

    Task i's loss is ``ℓ_i(θ) = ½ Σ_j C_ij (θ_j − 1)²`` (row i of ``curvature`` is its curvature
    profile), starting from θ = 0. Its performance drop is measured against a single-task reference
    loss of half its initial loss, ``Δm_i = 100 (ℓ_i − r_i) / r_i``, so every task starts at
    Δm = 100 and improves; tasks with low curvature improve slowly under plain averaging. Each step
    moves θ by ``step_length`` along the aggregated direction (normalised, so that methods differ
    only in the direction they choose, as with the authors' gradient clipping).
    """
    import mtrl.aggregation as agg
    from mtrl.aggregation import TaskStats

    k, n = curvature.shape
    theta = torch.zeros(n, dtype=torch.float64)

    def losses(point: Tensor) -> Tensor:
        return 0.5 * ((point - 1.0) ** 2 * curvature).sum(dim=1)

    reference = 0.5 * losses(theta)
    method = agg.make(name, **options)
    variances = []
    for _ in range(steps):
        delta_m = 100.0 * (losses(theta) - reference) / reference
        variances.append(float(delta_m.var(unbiased=False)))
        jacobian = curvature * (theta - 1.0)  # [k, n]: row i is ∇ℓ_i
        weights = method(jacobian if method.needs_jacobian else None,
                         TaskStats(losses(theta), performance=delta_m))
        direction = weights @ jacobian
        theta = theta - step_length * direction / direction.norm()
    return variances


def random_curvatures(seed: int, k: int = 4) -> Tensor:
    """A curvature matrix with diagonal log-uniform in [0.1, 10] and small positive coupling."""
    generator = torch.Generator().manual_seed(seed)
    diagonal = torch.exp(torch.empty(k, dtype=torch.float64).uniform_(np.log(0.1), np.log(10.0), generator=generator))
    curvature = 0.1 * diagonal.mean() * torch.rand(k, k, generator=generator, dtype=torch.float64)
    curvature[range(k), range(k)] = diagonal
    return curvature
