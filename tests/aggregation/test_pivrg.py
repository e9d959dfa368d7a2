"""PIVRG: ω from Δm (Eq. 5, Prop. 1), ``(Kα)_i² α_i = ω_i`` (Eq. 8), and its effect on Var[Δm_i]."""

from __future__ import annotations

import math

import pytest
import torch
from _references_b import fairgrad_least_squares, quadratic_variance_run, random_curvatures

import mtrl.aggregation as agg
from mtrl.aggregation import TaskStats, performance_weights
from mtrl.aggregation._performance import performance_variance


def random_jacobian(k: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------- ω
@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
@pytest.mark.parametrize("bounds", [(0.5, 2.0), (0.8, 1.2), (0.6, 1.5), (0.8, 2.0)])
def test_omega_sums_to_k_and_respects_the_bounds_of_proposition_1(k: int, bounds: tuple[float, float]) -> None:
    lower, upper = bounds
    s = min(1 / lower, upper)
    generator = torch.Generator().manual_seed(k)
    for scale in (0.01, 1.0, 30.0, 1e4):
        delta_m = scale * torch.randn(k, generator=generator, dtype=torch.float64)
        omega = performance_weights(delta_m, lower, upper, tau_min=1.0)
        assert float(omega.sum()) == pytest.approx(k, rel=1e-12)
        # Prop. 1: ω ∈ [1/s, s] ⊆ [ω_lower, ω_upper] (up to rounding).
        assert float(omega.min()) >= 1 / s * (1 - 1e-12) and float(omega.max()) <= s * (1 + 1e-12)
        assert float(omega.min()) >= lower * (1 - 1e-12) and float(omega.max()) <= upper * (1 + 1e-12)


def test_omega_grows_with_the_performance_drop() -> None:
    """Property 1: the worse-performing task (larger Δm_i) gets the larger ω_i."""
    delta_m = torch.tensor([12.0, -3.0, 40.0, 0.5], dtype=torch.float64)
    omega = performance_weights(delta_m)
    assert torch.equal(torch.argsort(omega), torch.argsort(delta_m))
    assert int(omega.argmax()) == 2 and float(omega[2]) > 1 > float(omega[1])


def test_temperature_follows_proposition_1_and_its_floor() -> None:
    # Spread 60 points > τ*·ln 2: τ = 60/ln 2, so ω_max/ω_min = s = 2 exactly.
    delta_m = torch.tensor([0.0, 20.0, 60.0], dtype=torch.float64)
    omega = performance_weights(delta_m, 0.5, 2.0, tau_min=10.0)
    assert float(omega.max() / omega.min()) == pytest.approx(2.0, rel=1e-12)
    torch.testing.assert_close(omega, 3 * torch.softmax(delta_m * math.log(2) / 60, dim=0))
    # Spread 2 points < τ*·ln 2: τ = τ* = 10.
    delta_m = torch.tensor([1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(performance_weights(delta_m, 0.5, 2.0, tau_min=10.0),
                               2 * torch.softmax(delta_m / 10, dim=0))


def test_omega_ignores_a_common_shift_and_is_one_for_equal_drops() -> None:
    delta_m = torch.tensor([5.0, -2.0, 9.0], dtype=torch.float64)
    torch.testing.assert_close(performance_weights(delta_m), performance_weights(delta_m + 100.0))
    torch.testing.assert_close(performance_weights(torch.full((4,), 7.0, dtype=torch.float64)),
                               torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("option, value", [("omega_lower", 1.0), ("omega_lower", 0.0), ("omega_upper", 1.0),
                                           ("omega_upper", float("inf")), ("tau_min", 0.0), ("tau_min", "1")])
def test_bad_omega_options_name_the_value(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"Parameter `{option}`"):
        agg.make("pivrg", **{option: value})


# ---------------------------------------------------------------------------------------- Eq. 8
@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_weights_satisfy_equation_8_with_the_recorded_omega(k: int) -> None:
    method = agg.make("pivrg")
    generator = torch.Generator().manual_seed(k)
    for seed in range(3):
        jacobian = random_jacobian(k, 2 * k + 8, seed=seed)
        delta_m = 25 * torch.randn(k, generator=generator, dtype=torch.float64)
        alpha = method(jacobian, TaskStats(torch.ones(k, dtype=torch.float64), performance=delta_m))
        omega = method.last_omega
        torch.testing.assert_close(omega, performance_weights(delta_m))
        torch.testing.assert_close((jacobian @ jacobian.T @ alpha) ** 2 * alpha, omega, rtol=1e-9, atol=0)
        assert method.last_var_delta_m == pytest.approx(float(delta_m.var(unbiased=False)))
    assert method.fallbacks == 0


def test_agrees_with_the_least_squares_solve_of_the_paper() -> None:
    """The paper solves Eq. 8 as a bounded nonlinear least-squares problem with scipy (after FairGrad)."""
    jacobian = random_jacobian(4, 15, seed=3)
    delta_m = torch.tensor([30.0, -10.0, 5.0, 0.0], dtype=torch.float64)
    method = agg.make("pivrg")
    alpha = method(jacobian, TaskStats(torch.ones(4, dtype=torch.float64), performance=delta_m))
    reference = fairgrad_least_squares((jacobian @ jacobian.T).numpy(), 2.0, method.last_omega.numpy())
    torch.testing.assert_close(alpha, torch.from_numpy(reference), rtol=1e-6, atol=0)


@pytest.mark.parametrize("performance", ["missing", "zeros", "constant"])
def test_without_performance_differences_pivrg_is_fairgrad_with_alpha_2(performance: str) -> None:
    jacobian = random_jacobian(5, 20, seed=4)
    delta_m = {"missing": None, "zeros": torch.zeros(5, dtype=torch.float64),
               "constant": torch.full((5,), 12.0, dtype=torch.float64)}[performance]
    method = agg.make("pivrg")
    weights = method(jacobian, TaskStats(torch.ones(5, dtype=torch.float64), performance=delta_m))
    expected = agg.make("fairgrad", alpha=2.0)(jacobian, TaskStats(torch.ones(5, dtype=torch.float64)))
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(method.last_omega, torch.ones(5, dtype=torch.float64))
    assert method.last_var_delta_m == 0.0


def test_the_worse_task_gets_a_larger_weight_and_a_larger_utility() -> None:
    jacobian = random_jacobian(3, 12, seed=5)
    losses = torch.ones(3, dtype=torch.float64)
    plain = agg.make("pivrg")(jacobian, TaskStats(losses))
    behind = agg.make("pivrg")(jacobian, TaskStats(losses, performance=torch.tensor([0.0, 0.0, 50.0])))
    assert float(behind[2] / behind.sum()) > float(plain[2] / plain.sum())
    utility = lambda w: jacobian @ (w @ jacobian)  # noqa: E731 - a one-line helper
    share = lambda w: float(utility(w)[2] / utility(w).sum())  # noqa: E731
    assert share(behind) > share(plain)


def test_performance_variance_is_the_population_variance() -> None:
    delta_m = torch.tensor([10.0, 20.0, 60.0])
    assert performance_variance(delta_m) == pytest.approx(((delta_m - 30) ** 2).mean().item())
    assert performance_variance(torch.tensor([3.0])) == 0.0


# ------------------------------------------------------------------------------------- Var[Δm]
@pytest.mark.parametrize("seed", range(3))
def test_a_run_with_improving_performances_keeps_var_delta_m_lower(seed: int) -> None:
    """Quadratic tasks of different curvatures, all improving towards a shared optimum.

    Under the mean (LS) the well-conditioned tasks race ahead and Var[Δm_i] grows; FairGrad with
    α = 2 (PIVRG with ω = 1) balances the utilities; PIVRG's ω, fed the current Δm, also steers
    towards the tasks that lag, and keeps Var[Δm_i] lowest over the run (PIVRG paper Sec. 3.2, B.3).
    """
    curvature = random_curvatures(seed)
    mean_variance = {name: sum(v) / len(v) for name, v in (
        ("ls", quadratic_variance_run("ls", curvature)),
        ("fairgrad2", quadratic_variance_run("fairgrad", curvature, alpha=2.0)),
        ("pivrg", quadratic_variance_run("pivrg", curvature)),
    )}
    assert mean_variance["pivrg"] < mean_variance["fairgrad2"] < mean_variance["ls"], mean_variance
    assert mean_variance["pivrg"] < 0.25 * mean_variance["ls"], mean_variance
