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
    monkeypatch.setattr(alpha_fair, "_newton", lambda *args: None)


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
def test_the_fixed_count_device_path_gives_the_early_exit_weights(alpha: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the solver runs its fixed iteration counts and computes the fallback by mask; on the CPU it
    stops once settled. Both must give the same weights and flags, solvable or Pareto-stationary."""
    cases = [random_jacobian(5, 12, seed=40, spread=1.0), pareto_stationary_jacobian("opposite"),
             pareto_stationary_jacobian("more_tasks_than_params"),
             torch.cat([random_jacobian(2, 6, seed=41), torch.zeros(1, 6, dtype=torch.float64)])]
    for jacobian in cases:
        omega = torch.linspace(0.5, 2.0, jacobian.shape[0], dtype=torch.float64)
        early = solve_alpha_fair(jacobian, alpha, omega)
        monkeypatch.setattr(_linalg, "EARLY_EXIT_ON_CPU", False)
        fixed = solve_alpha_fair(jacobian, alpha, omega)
        monkeypatch.setattr(_linalg, "EARLY_EXIT_ON_CPU", True)
        assert bool(early.fallback) == bool(fixed.fallback) and early.reason == fixed.reason
        torch.testing.assert_close(fixed.weights, early.weights, rtol=1e-12, atol=0)


def test_the_fused_iterations_trace_whole_and_give_the_same_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU each Newton and least-squares iteration runs through ``torch.compile`` (fullgraph: no graph
    break, no host read). The CPU check uses the ``aot_eager`` backend: the traced graphs must give the
    weights of the plain iterations, on a solvable and a Pareto-stationary case, cold and warm."""
    monkeypatch.setattr(_linalg, "EARLY_EXIT_ON_CPU", False)
    cases = [random_jacobian(5, 12, seed=50, spread=1.0), pareto_stationary_jacobian("opposite")]
    omega = [torch.linspace(0.5, 2.0, 5, dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64)]
    plain = [solve_alpha_fair(j, 2.0, w) for j, w in zip(cases, omega)]
    monkeypatch.setattr(_linalg, "FUSE_ON_DEVICES", ("cpu",))
    monkeypatch.setattr(_linalg, "FUSE_BACKEND", "aot_eager")
    monkeypatch.setattr(_linalg, "_FUSED", {})
    monkeypatch.setattr(_linalg, "_FUSE_FAILED", [])
    for jacobian, weights, reference in zip(cases, omega, plain):
        fused = solve_alpha_fair(jacobian, 2.0, weights)
        warm = solve_alpha_fair(jacobian, 2.0, weights, start=reference.weights * 1.1)
        assert not _linalg._FUSE_FAILED, _linalg._FUSE_FAILED
        assert bool(fused.fallback) == bool(reference.fallback)
        torch.testing.assert_close(fused.weights, reference.weights, rtol=1e-12, atol=0)
        if not bool(reference.fallback):
            torch.testing.assert_close(warm.weights, reference.weights, rtol=1e-9, atol=0)
    # The three stages; Newton's iterations paired with the fallback's while it has some (fixed counts run
    # both side by side).
    assert {function.__name__ for function, _ in _linalg._FUSED} == {"_prepare", "_newton_step", "_paired_step",
                                                                          "_conclude"}


def _traced(function, *arguments):
    """``function(*arguments)`` through ``torch.compile`` (whole graph), and the FX graph dynamo traced."""
    graphs: list[torch.fx.GraphModule] = []

    def recording(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        graphs.append(graph)
        return graph.forward

    return torch.compile(function, backend=recording, fullgraph=True)(*arguments), graphs[-1]


@pytest.mark.parametrize("k", [1, 2, 5, 10, _linalg.UNROLLED_SOLVE_MAX_K + 1])
def test_the_spd_solve_under_compile_is_unrolled_and_matches_lapack(k: int) -> None:
    """Traced by ``torch.compile``, ``solve_spd`` eliminates without pivoting in element-wise operations (no
    library call in the graph) up to ``UNROLLED_SOLVE_MAX_K``, and calls the library beyond. On SPD
    matrices of condition 10 and 1e10 the result has a backward error at rounding level and, where the
    condition allows, equals LAPACK's pivoted solve."""
    generator = torch.Generator().manual_seed(k)
    basis, _ = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=torch.float64))
    for condition in (10.0, 1e10):
        torch._dynamo.reset()
        matrix = basis @ torch.diag(torch.logspace(0, math.log10(condition), k, dtype=torch.float64)) @ basis.T
        matrix = 0.5 * (matrix + matrix.T)
        rhs = torch.randn(k, generator=generator, dtype=torch.float64)
        x, graph = _traced(_linalg.solve_spd, matrix, rhs)
        backward_error = (matrix @ x - rhs).norm() / (matrix.norm() * x.norm() + rhs.norm())
        assert backward_error < 1e-14, (condition, backward_error)
        if condition < 1e3:
            torch.testing.assert_close(x, torch.linalg.solve(matrix, rhs), rtol=1e-12, atol=0)
    library_calls = [node for node in graph.graph.nodes if "solve" in str(node.target)]
    assert bool(library_calls) == (k > _linalg.UNROLLED_SOLVE_MAX_K)


def test_a_traced_iteration_pair_has_no_library_call_that_would_split_its_fusion() -> None:
    """Traced, a Newton iteration paired with a fallback iteration is element-wise work and reductions only:
    no matmul and no library solve, which inductor cannot fuse (each would split the pair into several
    kernels, each a launch on a GPU). Eagerly the same functions use ``@`` and LAPACK, with equal results."""
    torch._dynamo.reset()
    problem = alpha_fair._ScaledProblem.of(*_linalg.scaled_gramian(random_jacobian(6, 15, seed=60, spread=1.0)),
                                           torch.linspace(0.5, 2.0, 6, dtype=torch.float64), 0.5)
    v = alpha_fair._orthogonal_start(problem.constants, 0.5)
    flag = torch.zeros((), dtype=torch.bool)
    arguments = (problem.cosines, problem.constants, 0.5, problem.relative_norms, v, flag, flag,
                 alpha_fair._least_squares_start(problem.constants, 0.5),
                 0.5 ** torch.arange(alpha_fair.LINE_SEARCH_STEPS, dtype=torch.float64),
                 torch.eye(6, dtype=torch.float64))
    traced, graph = _traced(alpha_fair._paired_step, *arguments)
    eager = alpha_fair._paired_step(*arguments)
    for ours, reference in zip(traced, eager):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-300)
    calls = [str(node.target) for node in graph.graph.nodes if node.op in ("call_function", "call_method")]
    assert not [call for call in calls if any(name in call for name in ("matmul", "solve", "mm", "mv"))], calls


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_an_iteration_pair_is_the_two_iterations_one_after_the_other(p: float) -> None:
    """The pair solves Newton's and the fallback's systems as one batch; the result is each iteration's own,
    from a start where Newton moves, and at a Pareto-stationary point where its system is near singular."""
    for seed, jacobian in ((61, random_jacobian(6, 15, seed=61, spread=1.0)),
                           (0, torch.tensor([[1.0, 0.0], [-1.0, 1e-9]], dtype=torch.float64))):
        k = jacobian.shape[0]
        problem = alpha_fair._ScaledProblem.of(*_linalg.scaled_gramian(jacobian),
                                               torch.linspace(0.5, 2.0, k, dtype=torch.float64), p)
        v = alpha_fair._orthogonal_start(problem.constants, p) * torch.linspace(0.8, 1.3, k, dtype=torch.float64)
        flag = torch.zeros((), dtype=torch.bool)
        fractions = 0.5 ** torch.arange(alpha_fair.LINE_SEARCH_STEPS, dtype=torch.float64)
        eye = torch.eye(k, dtype=torch.float64)
        x = alpha_fair._least_squares_start(problem.constants, p) + 0.1
        cosines, constants, norms = problem.cosines, problem.constants, problem.relative_norms
        pair = alpha_fair._paired_step(cosines, constants, p, norms, v, flag, flag, x, fractions, eye)
        newton = alpha_fair._newton_step(cosines, constants, p, v, flag, flag, fractions, eye)
        fallback = alpha_fair._least_squares_step(cosines, constants, p, norms, x, eye)
        for ours, reference in zip(pair, (*newton, fallback)):
            torch.testing.assert_close(ours, reference, rtol=1e-14, atol=0, msg=f"seed {seed}")
        assert not torch.equal(pair[0], v) and not torch.equal(pair[3], x)   # both moved


@pytest.mark.parametrize("p", [1.0, 0.5, 2.0])
def test_the_armijo_decrease_equals_the_potential_difference(p: float) -> None:
    """The line search's ``f(v + t s) − f(v)``, expanded (exact quadratic part, barrier differences by log1p /
    expm1, ``sᵀCs`` from the Newton system), equals the difference of the potential evaluated at both points,
    for a Newton step on a random problem, at every trial length down to the smallest; and it stays accurate
    where that difference is lost to cancellation (``t·s`` tiny next to ``v``)."""
    problem = alpha_fair._ScaledProblem.of(*_linalg.scaled_gramian(random_jacobian(6, 15, seed=70, spread=1.0)),
                                           torch.linspace(0.5, 2.0, 6, dtype=torch.float64), p)
    cosines, constants = problem.cosines, problem.constants
    v = alpha_fair._orthogonal_start(constants, p) * torch.linspace(0.7, 1.4, 6, dtype=torch.float64)
    target = constants * v ** (-p)
    cv = cosines @ v
    gradient = cv - target
    step = -torch.linalg.solve(cosines + torch.diag(p * target / v), gradient)
    slope = gradient @ step
    curvature = -slope - (p * target / v * step * step).sum()
    torch.testing.assert_close(curvature, step @ cosines @ step, rtol=1e-12, atol=0)
    boundary = torch.where(step < 0, -v / step, math.inf).min()
    lengths = torch.clamp(0.99 * boundary, max=1.0) * 0.5 ** torch.arange(alpha_fair.LINE_SEARCH_STEPS,
                                                                        dtype=torch.float64)
    expanded = alpha_fair._decrease(cv, curvature, constants, p, v, step, lengths)
    at = alpha_fair._potential(cosines, constants, p, v[None, :] + lengths[:, None] * step[None, :])
    direct = at - alpha_fair._potential(cosines, constants, p, v)
    scale = alpha_fair._potential(cosines, constants, p, v).abs() + 1.0
    torch.testing.assert_close(expanded, direct, rtol=0, atol=1e-14 * float(scale))
    # Long steps: agreement to the relative accuracy of the difference itself.
    torch.testing.assert_close(expanded[:10], direct[:10], rtol=1e-9, atol=0)
    # Tiny steps: the decrease is −t·|slope| to first order, which the direct difference cannot resolve.
    torch.testing.assert_close(expanded[-1] / lengths[-1], slope, rtol=1e-6, atol=0)
