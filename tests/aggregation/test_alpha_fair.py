"""The shared weighted α-fair solver: ``(K w)_i = ω_i^(1/α) w_i^(-1/α)`` (Nash-MTL, FairGrad, PIVRG)."""

from __future__ import annotations

import pytest
import torch

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


@pytest.mark.parametrize("case", ["opposite", "more_tasks_than_params", "conflicting_rank_one"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_pareto_stationary_points_fall_back_to_a_ridge(case: str, alpha: float) -> None:
    """No positive solution exists: the ridge fallback gives finite positive weights, flagged."""
    g = random_jacobian(1, 6, seed=7)[0]
    jacobian = {
        "opposite": torch.stack([g, -g]),
        "more_tasks_than_params": random_jacobian(12, 5, seed=8),
        "conflicting_rank_one": torch.outer(torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64), g),
    }[case]
    solution = solve_alpha_fair(jacobian, alpha)
    assert solution.fallback and "ridge" in solution.reason
    assert torch.isfinite(solution.weights).all() and (solution.weights > 0).all()
    assert torch.isfinite(solution.weights @ jacobian).all()


def test_float32_and_other_devices_keep_the_jacobian_device() -> None:
    jacobian = random_jacobian(3, 8, seed=9).float()
    solution = solve_alpha_fair(jacobian, 1.0)
    assert solution.weights.dtype == torch.float64 and solution.weights.device == jacobian.device
    assert relative_residual(jacobian.double(), solution.weights, 1.0) < 1e-5


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_alpha_is_rejected(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        solve_alpha_fair(random_jacobian(2, 4, seed=0), alpha)


def test_bad_utility_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="utility_weights"):
        solve_alpha_fair(random_jacobian(2, 4, seed=0), 1.0, torch.tensor([1.0, -1.0]))
