"""The shared weighted α-fair solver: ``(K w)_i = ω_i^(1/α) w_i^(-1/α)`` (Nash-MTL, FairGrad, PIVRG)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from mtrl.aggregation import _alpha_fair as alpha_fair
from mtrl.aggregation import _linalg
from mtrl.aggregation._alpha_fair import solve_alpha_fair


def random_jacobian(k: int, n: int, seed: int, spread: float = 0.0) -> torch.Tensor:
    """Gaussian rows (linearly independent for n ≥ k), each scaled by exp(spread · N(0, 1))."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(k, n, generator=generator, dtype=torch.float64)
    return rows * torch.exp(spread * torch.randn(k, 1, generator=generator, dtype=torch.float64))


def relative_residual(jacobian: torch.Tensor, weights: torch.Tensor, alpha: float,
                      omega: torch.Tensor | None = None) -> float:
    omega = torch.ones_like(weights) if omega is None else omega
    utilities = jacobian @ jacobian.T @ weights
    return float((utilities / (omega ** (1 / alpha) * weights ** (-1 / alpha)) - 1).abs().max())


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_solves_the_equation_on_well_posed_problems(alpha: float, k: int) -> None:
    for seed in range(3):
        jacobian = random_jacobian(k, 2 * k + 8, seed, spread=1.0)
        omega = torch.rand(k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.5
        solution = solve_alpha_fair(jacobian, alpha, omega)
        assert not solution.fallback, solution.reason
        assert (solution.weights > 0).all()
        assert relative_residual(jacobian, solution.weights, alpha, omega) < 1e-8


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_weights_scale_as_the_jacobian_to_the_power_minus_2alpha_over_1_plus_alpha(alpha: float) -> None:
    jacobian = random_jacobian(4, 12, seed=1)
    base = solve_alpha_fair(jacobian, alpha).weights
    for scale in (1e-8, 1e-3, 1e3, 1e8):
        scaled = solve_alpha_fair(scale * jacobian, alpha).weights
        torch.testing.assert_close(scaled, base * scale ** (-2 * alpha / (1 + alpha)), rtol=1e-9, atol=0)


def test_nash_weights_follow_each_task_scale_inversely() -> None:
    """α = 1 is invariant to rescaling one task: its weight scales inversely, the others stay."""
    jacobian = random_jacobian(3, 9, seed=2)
    base = solve_alpha_fair(jacobian, 1.0).weights
    rescaled = jacobian.clone()
    rescaled[1] *= 1e6
    weights = solve_alpha_fair(rescaled, 1.0).weights
    torch.testing.assert_close(weights, base * torch.tensor([1.0, 1e-6, 1.0], dtype=torch.float64), rtol=1e-9, atol=0)


def test_mixed_magnitudes_are_solved_without_fallback() -> None:
    jacobian = random_jacobian(4, 30, seed=3) * torch.tensor([1e-8, 1.0, 1e4, 1e8], dtype=torch.float64)[:, None]
    for alpha in (1.0, 2.0):
        solution = solve_alpha_fair(jacobian, alpha)
        assert not solution.fallback, solution.reason
        assert torch.isfinite(solution.weights).all() and (solution.weights > 0).all()
        # Every task's utility g_iᵀd is positive: the update conflicts with none.
        assert (jacobian @ (solution.weights @ jacobian) > 0).all()


def test_duplicated_and_nearly_collinear_rows_have_exact_solutions() -> None:
    g = random_jacobian(2, 10, seed=4)
    duplicated = torch.stack([g[0], g[0], g[1]])
    solution = solve_alpha_fair(duplicated, 1.0)
    assert not solution.fallback
    assert solution.weights[0] == pytest.approx(float(solution.weights[1]), rel=1e-10)
    assert relative_residual(duplicated, solution.weights, 1.0) < 1e-8
    direction = g[0] / g[0].norm()
    nearly = torch.stack([direction + 1e-9 * random_jacobian(1, 10, seed=5 + i)[0] for i in range(4)])
    solution = solve_alpha_fair(nearly, 2.0)
    assert not solution.fallback
    assert torch.isfinite(solution.weights).all()


def test_zero_row_gets_weight_zero_and_the_rest_solve_the_reduced_problem() -> None:
    g = random_jacobian(3, 10, seed=6)
    with_zero = torch.cat([g[:1], torch.zeros(1, 10, dtype=torch.float64), g[1:]])
    solution = solve_alpha_fair(with_zero, 2.0)
    assert solution.fallback and "zero row" in solution.reason
    assert solution.weights[1] == 0
    torch.testing.assert_close(solution.weights[[0, 2, 3]], solve_alpha_fair(g, 2.0).weights, rtol=1e-12, atol=0)


def test_all_zero_rows_give_equal_weights() -> None:
    solution = solve_alpha_fair(torch.zeros(4, 7), 1.0)
    assert solution.fallback
    torch.testing.assert_close(solution.weights, torch.full((4,), 0.25, dtype=torch.float64))


def pareto_stationary_jacobian(case: str) -> torch.Tensor:
    g = random_jacobian(1, 6, seed=7)[0]
    return {
        "opposite": torch.stack([g, -g]),
        "more_tasks_than_params": random_jacobian(12, 5, seed=8),
        "conflicting_rank_one": torch.outer(torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64), g),
    }[case]


@pytest.mark.parametrize("case", ["opposite", "more_tasks_than_params", "conflicting_rank_one"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_pareto_stationary_points_fall_back_to_bounded_least_squares(case: str, alpha: float) -> None:
    """No positive solution exists: the least-squares fallback gives finite positive weights, flagged."""
    jacobian = pareto_stationary_jacobian(case)
    solution = solve_alpha_fair(jacobian, alpha)
    assert solution.fallback and "least squares" in solution.reason
    assert torch.isfinite(solution.weights).all() and (solution.weights > 0).all()
    assert torch.isfinite(solution.weights @ jacobian).all()


# ------------------------------------------------- the fallback against scipy.optimize.least_squares
def scipy_bounded_least_squares(jacobian: torch.Tensor, alpha: float, omega: torch.Tensor) -> np.ndarray:
    """The authors' solver (FairGrad / PIVRG code): ``least_squares(Kw − c w^(-1/α), 1/k, bounds=(0, ∞))``."""
    gramian = (jacobian @ jacobian.T).numpy()
    constants = omega.numpy() ** (1 / alpha)
    k = gramian.shape[0]
    result = least_squares(lambda w: gramian @ w - constants * w ** (-1 / alpha), np.full(k, 1 / k),
                           bounds=(0, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return result.x


def residual_cost(jacobian: torch.Tensor, weights: np.ndarray, alpha: float, omega: torch.Tensor) -> float:
    gramian = (jacobian @ jacobian.T).numpy()
    residual = gramian @ weights - omega.numpy() ** (1 / alpha) * weights ** (-1 / alpha)
    return float(residual @ residual)


@pytest.fixture
def fallback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the exact solve give up, so that every call returns the least-squares fallback."""
    monkeypatch.setattr(alpha_fair, "_newton", lambda problem, v, iterations: (v, torch.zeros((), dtype=torch.bool)))


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_fallback_is_the_least_squares_solution_where_the_equation_is_solvable(fallback_only, k: int,
                                                                            alpha: float) -> None:
    """Where (*) has a solution, the residual's minimiser is that solution: scipy and the fallback agree."""
    for seed in range(3):
        jacobian = random_jacobian(k, 2 * k + 3, seed=20 + seed, spread=0.5)
        omega = torch.rand(k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.5
        solution = solve_alpha_fair(jacobian, alpha, omega)
        assert solution.fallback
        reference = scipy_bounded_least_squares(jacobian, alpha, omega)
        np.testing.assert_allclose(solution.weights.numpy(), reference, rtol=1e-6)


@pytest.mark.parametrize("case", ["opposite", "conflicting_rank_one", "scaled_opposite"])
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fallback_at_pareto_stationary_points_moves_where_scipy_least_squares_moves(case: str, alpha: float) -> None:
    """No minimiser exists here (the residual → 0 only as w → ∞ along the vanishing combination), so
    any bounded least-squares solver stops at a point its budget decides; ours and scipy's must make
    the residual small and give update directions that favour the same task."""
    g = random_jacobian(1, 6, seed=7)[0]
    jacobian = pareto_stationary_jacobian(case) if case != "scaled_opposite" else torch.stack([0.3 * g, -g])
    k = jacobian.shape[0]
    for omega in (torch.ones(k, dtype=torch.float64), torch.linspace(0.5, 2.0, k, dtype=torch.float64),
                  torch.linspace(2.0, 0.5, k, dtype=torch.float64)):
        weights = solve_alpha_fair(jacobian, alpha, omega).weights
        reference = scipy_bounded_least_squares(jacobian, alpha, omega)
        start = np.full(k, 1 / k)
        assert residual_cost(jacobian, weights.numpy(), alpha, omega) < 0.1 * residual_cost(jacobian, start, alpha, omega)
        ours, theirs = jacobian @ (weights @ jacobian), jacobian @ (torch.from_numpy(reference) @ jacobian)
        if case == "opposite" and bool((omega == 1).all()):  # exact balance: no task to favour
            assert float(ours.abs().max()) < 1e-9
            continue
        # Utilities g_iᵀd: the same tasks improve (> 0) and the same tasks give way (< 0).
        assert torch.equal(torch.sign(ours), torch.sign(theirs)), (ours, theirs)


def test_at_a_pareto_stationary_point_the_larger_omega_task_is_favoured_continuously() -> None:
    """PIVRG (α = 2) with g2 = −g1: the update improves the task with the larger ω, the weights move
    continuously with ω and cross over where ω1 = ω2 (the issue's behaviour test)."""
    g = random_jacobian(1, 4, seed=11)[0]
    jacobian = torch.stack([g, -g])
    ratios = torch.logspace(-0.3, 0.3, 61, dtype=torch.float64)  # ω1/ω2 from 1/2 to 2
    progress, previous = [], None
    for ratio in ratios:
        omega = 2 * torch.stack([ratio, torch.ones((), dtype=torch.float64)]) / (1 + ratio)
        solution = solve_alpha_fair(jacobian, 2.0, omega)
        assert solution.fallback
        weights = solution.weights
        progress.append(float(g @ (weights @ jacobian)))  # task 1's first-order improvement g1ᵀd
        if previous is not None:  # continuity: neighbouring ω give neighbouring weights
            assert float(((weights - previous).abs() / previous).max()) < 1e-3
        previous = weights
    progress = torch.tensor(progress)
    assert (progress[ratios > 1.001] > 0).all() and (progress[ratios < 0.999] < 0).all()
    assert abs(float(progress[30])) < 1e-9 * float(progress.abs().max())  # ω1 = ω2: no preference
    assert (progress.diff() > 0).all()  # more ω1 → more progress for task 1


def test_float32_and_other_devices_keep_the_jacobian_device() -> None:
    jacobian = random_jacobian(3, 8, seed=9).float()
    solution = solve_alpha_fair(jacobian, 1.0)
    assert solution.weights.dtype == torch.float64 and solution.weights.device == jacobian.device
    assert relative_residual(jacobian.double(), solution.weights, 1.0) < 1e-5


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_float32_jacobian_takes_the_float32_gramian_and_agrees_with_float64(alpha: float) -> None:
    """The agent's float32 Jacobians go through the shared float32 Gramian: same weights to float32 rounding,
    on the raw scale (weights scale as ‖G‖^(-2/(1+p)), so a wrong scale would show at once)."""
    torch.manual_seed(3)
    jacobian = 1e-3 * torch.randn(5, 4000, dtype=torch.float64)
    omega = torch.tensor([0.5, 1.0, 1.5, 2.0, 1.0], dtype=torch.float64)
    exact = solve_alpha_fair(jacobian, alpha, omega)
    single = solve_alpha_fair(jacobian.float(), alpha, omega)
    assert not exact.fallback and not single.fallback
    torch.testing.assert_close(single.weights, exact.weights, rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_alpha_is_rejected(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        solve_alpha_fair(random_jacobian(2, 4, seed=0), alpha)


def test_bad_utility_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="utility_weights"):
        solve_alpha_fair(random_jacobian(2, 4, seed=0), 1.0, torch.tensor([1.0, -1.0]))


# ------------------------------------------------------------------------ warm starts and the device path
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_any_usable_warm_start_reaches_the_cold_solution(alpha: float) -> None:
    """The start changes how fast Newton converges, not where: far, near and unusable starts all give
    the cold solve's weights; an unusable start (non-finite, non-positive, wrong scale) is ignored."""
    jacobian = random_jacobian(6, 20, seed=30, spread=1.0)
    omega = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    cold = solve_alpha_fair(jacobian, alpha, omega).weights
    starts = [cold * 1.01, cold * 1e6, torch.full((6,), 1e-9, dtype=torch.float64),
              torch.tensor([1.0, float("nan"), 1, 1, 1, 1], dtype=torch.float64),
              torch.tensor([1.0, -1.0, 1, 1, 1, 1], dtype=torch.float64)]
    for start in starts:
        warm = solve_alpha_fair(jacobian, alpha, omega, start=start)
        assert not warm.fallback, start
        torch.testing.assert_close(warm.weights, cold, rtol=1e-9, atol=0)


def test_a_nearby_warm_start_converges_in_a_few_newton_iterations(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the warm start: the previous step's weights for a slightly changed Jacobian solve in
    ≤ 3 iterations (a cold start needs more: with 3 it does not converge here and falls back)."""
    monkeypatch.setattr(alpha_fair, "WARM_ITERATIONS", 3)
    monkeypatch.setattr(alpha_fair, "MAX_ITERATIONS", 3)
    jacobian = random_jacobian(10, 40, seed=31, spread=1.0)
    previous = solve_alpha_fair(jacobian, 2.0, start=torch.ones(10, dtype=torch.float64))  # 3 iterations only
    assert previous.fallback
    monkeypatch.setattr(alpha_fair, "MAX_ITERATIONS", 30)
    previous = solve_alpha_fair(jacobian, 2.0).weights
    nudged = jacobian + 1e-3 * random_jacobian(10, 40, seed=32)
    warm = solve_alpha_fair(nudged, 2.0, start=previous)
    assert not warm.fallback
    assert relative_residual(nudged, warm.weights, 2.0) < 1e-8


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_the_fixed_count_gives_the_early_exit_weights(alpha: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Traced or captured, the loops run their fixed counts and the fallback is chosen by mask; on the CPU
    they stop once settled. Both give the same weights and flags, solvable or Pareto-stationary, cold and warm."""
    cases = [random_jacobian(5, 12, seed=40, spread=1.0), pareto_stationary_jacobian("opposite"),
             pareto_stationary_jacobian("more_tasks_than_params"),
             torch.cat([random_jacobian(2, 6, seed=41), torch.zeros(1, 6, dtype=torch.float64)])]
    early_exit = _linalg.may_stop
    for jacobian in cases:
        omega = torch.linspace(0.5, 2.0, jacobian.shape[0], dtype=torch.float64)
        early = solve_alpha_fair(jacobian, alpha, omega)
        warm_early = solve_alpha_fair(jacobian, alpha, omega, start=early.weights * 1.3 + 0.01)
        monkeypatch.setattr(_linalg, "may_stop", lambda settled: False)
        fixed = solve_alpha_fair(jacobian, alpha, omega)
        warm_fixed = solve_alpha_fair(jacobian, alpha, omega, start=early.weights * 1.3 + 0.01)
        monkeypatch.setattr(_linalg, "may_stop", early_exit)
        for a, b in ((early, fixed), (warm_early, warm_fixed)):
            assert bool(a.fallback) == bool(b.fallback) and a.reason == b.reason
            torch.testing.assert_close(b.weights, a.weights, rtol=1e-12, atol=0)


def potential(cosines: torch.Tensor, constants: torch.Tensor, p: float, v: torch.Tensor) -> torch.Tensor:
    """``f(v) = ½ vᵀCv − Σ c_i h(v_i)``, ``h = log`` (p = 1) or ``v^(1-p)/(1-p)``, for ``v`` of shape ``[..., k]``."""
    barrier = torch.log(v) if p == 1.0 else v ** (1.0 - p) / (1.0 - p)
    return 0.5 * ((v @ cosines) * v).sum(-1) - (barrier * constants).sum(-1)


@pytest.mark.parametrize("p", [1.0, 0.5, 2.0])
def test_the_armijo_decrease_equals_the_potential_difference(p: float) -> None:
    """The line search's ``f(v + t s) − f(v)``, expanded (exact quadratic part, barrier differences by log1p /
    expm1), equals the difference of the potential evaluated at both points, for a Newton step on a random
    problem, at every trial length down to the smallest; and it stays accurate where that difference is lost
    to cancellation (``t·s`` tiny next to ``v``)."""
    problem = alpha_fair._ScaledProblem.of(*_linalg.scaled_gramian(random_jacobian(6, 15, seed=70, spread=1.0)),
                                           torch.linspace(0.5, 2.0, 6, dtype=torch.float64), p)
    cosines, constants = problem.cosines, problem.constants
    v = alpha_fair._orthogonal_start(constants, p) * torch.linspace(0.7, 1.4, 6, dtype=torch.float64)
    target = constants * v ** (-p)
    cv = cosines @ v
    gradient = cv - target
    step = -torch.linalg.solve(cosines + torch.diag(p * target / v), gradient)
    slope = gradient @ step
    boundary = torch.where(step < 0, -v / step, math.inf).min()
    lengths = torch.clamp(0.99 * boundary, max=1.0) * 0.5 ** torch.arange(alpha_fair.LINE_SEARCH_STEPS,
                                                                        dtype=torch.float64)
    expanded = alpha_fair._decrease(cosines, cv, constants, p, v, step, step / v, lengths)
    at = potential(cosines, constants, p, v[None, :] + lengths[:, None] * step[None, :])
    direct = at - potential(cosines, constants, p, v)
    scale = potential(cosines, constants, p, v).abs() + 1.0
    torch.testing.assert_close(expanded, direct, rtol=0, atol=1e-14 * float(scale))
    # Long steps: agreement to the relative accuracy of the difference itself.
    torch.testing.assert_close(expanded[:10], direct[:10], rtol=1e-9, atol=0)
    # Tiny steps: the decrease is −t·|slope| to first order, which the direct difference cannot resolve.
    torch.testing.assert_close(expanded[-1] / lengths[-1], slope, rtol=1e-6, atol=0)


# ------------------------------------------------ properties on random and degenerate Jacobians
def backward_error(jacobian: torch.Tensor, weights: torch.Tensor, alpha: float, omega: torch.Tensor) -> float:
    """(*) in the utilities, ``u_i = ω_i^(1/α) w_i^(-1/α)``, over the non-zero rows: the mismatch relative to the
    size of the terms that make up each side."""
    nonzero = jacobian.norm(dim=1) > 0
    gramian = (jacobian @ jacobian.T)[nonzero][:, nonzero]
    w = weights[nonzero]
    wanted = omega[nonzero] ** (1 / alpha) * w ** (-1 / alpha)
    return float(((gramian @ w - wanted).abs() / (gramian.abs() @ w + wanted)).max())


def jacobian_family(case: str) -> torch.Tensor:
    g = random_jacobian(4, 12, seed=80, spread=1.0)
    unit = g[0] / g[0].norm()
    return {
        "random": g,
        "duplicated_rows": torch.stack([g[0], g[1], g[1], g[2]]),
        "zero_row": torch.stack([g[0], torch.zeros(12, dtype=torch.float64), g[1], g[2]]),
        "nearly_opposite": torch.stack([unit, -unit + 1e-3 * g[1] / g[1].norm(), g[2] / g[2].norm()]),
        "magnitudes_1e-8_to_1e8": g * torch.tensor([1e-8, 1e-3, 1e3, 1e8], dtype=torch.float64)[:, None],
    }[case]


FAMILIES = ["random", "duplicated_rows", "zero_row", "nearly_opposite", "magnitudes_1e-8_to_1e8"]


@pytest.mark.parametrize("case", FAMILIES)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
def test_weights_meet_the_optimality_conditions_of_the_alpha_fair_problem(case: str, alpha: float) -> None:
    """KKT of ``max Σ ω_i u_i^(1-α)/(1-α)`` over a ball: every non-zero task improves (``u_i = g_iᵀd > 0``) and
    ``ω_i u_i^(-α) = w_i`` (the utility's gradient ``Gᵀ(ω ⊙ u^(-α))`` is the update ``d = Gᵀw`` itself), up to
    rounding relative to the size of the terms (a tiny row next to a 1e8 one has a nearly cancelling
    utility); zero rows get weight 0 and a flagged fallback, the others solve the reduced problem.
    (From α ≈ 5 on, magnitudes 1e-6 and 1e6 in one matrix put the scaled solution over more than 50 orders of
    magnitude, beyond the Newton budget: such a solve falls back; so does α = 3 on the nearly opposite rows,
    whose solution there spreads over more orders of magnitude than the budget reaches.)"""
    jacobian = jacobian_family(case)
    if case == "nearly_opposite" and alpha > 2.5:   # outside the budget: flagged, finite, non-negative weights
        solution = solve_alpha_fair(jacobian, alpha, torch.linspace(0.5, 2.0, 3, dtype=torch.float64))
        assert bool(solution.fallback) and torch.isfinite(solution.weights).all() and (solution.weights >= 0).all()
        return
    k = jacobian.shape[0]
    omega = torch.linspace(0.5, 2.0, k, dtype=torch.float64)
    solution = solve_alpha_fair(jacobian, alpha, omega)
    weights = solution.weights
    nonzero = jacobian.norm(dim=1) > 0
    assert bool(solution.fallback) == (case == "zero_row"), solution.reason
    assert torch.isfinite(weights).all() and (weights[nonzero] > 0).all() and (weights[~nonzero] == 0).all()
    utilities = jacobian[nonzero] @ (weights @ jacobian)
    assert (utilities > 0).all()
    assert backward_error(jacobian, weights, alpha, omega) < 1e-10


@pytest.mark.parametrize("case", FAMILIES)
def test_weights_are_equivariant_to_task_order_and_invariant_to_rotations_of_the_parameters(case: str) -> None:
    """The problem depends on the Gramian only: a rotation ``G Q`` leaves the weights, a permutation of the
    tasks (and of ω) permutes them; ``G → sG`` scales them by ``s^(-2α/(1+α))``."""
    jacobian = jacobian_family(case)
    k, n = jacobian.shape
    omega = torch.linspace(0.5, 2.0, k, dtype=torch.float64)
    base = solve_alpha_fair(jacobian, 2.0, omega).weights
    rotation, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(81)))
    torch.testing.assert_close(solve_alpha_fair(jacobian @ rotation, 2.0, omega).weights, base, rtol=1e-8, atol=0)
    order = torch.randperm(k, generator=torch.Generator().manual_seed(82))
    torch.testing.assert_close(solve_alpha_fair(jacobian[order], 2.0, omega[order]).weights, base[order], rtol=1e-9, atol=0)
    for scale in (1e-8, 1e8):
        torch.testing.assert_close(solve_alpha_fair(scale * jacobian, 2.0, omega).weights,
                                   base * scale ** (-4 / 3), rtol=1e-9, atol=0)


def test_a_nearly_stationary_point_is_solved_exactly_and_an_exactly_stationary_one_falls_back() -> None:
    """Opposite rows with a small angle between them have a large but finite solution, found exactly (the ray
    step jumps to its size at once); at the rounding level of the cosine there is no solution: the fallback."""
    g = random_jacobian(2, 8, seed=83)
    unit, other = g[0] / g[0].norm(), g[1] / g[1].norm()
    for tilt, solvable in ((1e-4, True), (1e-9, False)):
        jacobian = torch.stack([unit, -unit + tilt * other])
        solution = solve_alpha_fair(jacobian, 2.0, torch.tensor([1.5, 0.5], dtype=torch.float64))
        assert bool(solution.fallback) != solvable, (tilt, solution.reason)
        if solvable:   # (the utilities are sums that cancel to 1e-8 of their terms: a relative residual means little)
            assert backward_error(jacobian, solution.weights, 2.0, torch.tensor([1.5, 0.5], dtype=torch.float64)) < 1e-10
