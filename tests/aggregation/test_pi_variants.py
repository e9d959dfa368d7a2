"""PI-LS, PI-RLW, PI-Nash-MTL (PIVRG paper Sec. 4.4, Table 5): ω enters where the paper puts it."""

from __future__ import annotations

import pytest
import torch
from _references_b import nash_mtl_ccp, quadratic_variance_run, random_curvatures

import mtrl.aggregation as agg
from mtrl.aggregation import TaskStats, performance_weights

DELTA_M = torch.tensor([35.0, -8.0, 4.0, 12.0], dtype=torch.float64)


def random_jacobian(k: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def call(method: agg.Aggregator, jacobian: torch.Tensor, delta_m: torch.Tensor | None) -> torch.Tensor:
    stats = TaskStats(torch.ones(jacobian.shape[0], dtype=torch.float64), performance=delta_m)
    return method(jacobian if method.needs_jacobian else None, stats)


@pytest.mark.parametrize("name, base, options", [("pi_ls", "ls", {}), ("pi_rlw", "rlw", {"seed": 3}),
                                                  ("pi_nashmtl", "nashmtl", {})])
@pytest.mark.parametrize("delta_m", [None, torch.zeros(4, dtype=torch.float64), torch.full((4,), -20.0)])
def test_without_performance_differences_each_equals_its_base(name: str, base: str, options: dict,
                                                                delta_m: torch.Tensor | None) -> None:
    variant, reference = agg.make(name, **options), agg.make(base, **options)
    for seed in range(3):
        jacobian = random_jacobian(4, 12, seed)
        torch.testing.assert_close(call(variant, jacobian, delta_m), call(reference, jacobian, delta_m),
                                   rtol=1e-12, atol=0)
    torch.testing.assert_close(variant.last_omega, torch.ones(4, dtype=torch.float64))


def test_pi_ls_weights_are_omega_over_k() -> None:
    method = agg.make("pi_ls")
    weights = call(method, random_jacobian(4, 6, 0), DELTA_M)
    torch.testing.assert_close(weights, performance_weights(DELTA_M) / 4)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert int(weights.argmax()) == 0  # the task furthest behind its reference


def test_pi_rlw_multiplies_the_random_draw_by_omega() -> None:
    variant, base = agg.make("pi_rlw", seed=11), agg.make("rlw", seed=11)
    omega = performance_weights(DELTA_M)
    for _ in range(5):
        torch.testing.assert_close(call(variant, random_jacobian(4, 6, 0), DELTA_M),
                                   call(base, random_jacobian(4, 6, 0), DELTA_M) * omega)


def test_pi_rlw_mean_weight_is_omega_over_k() -> None:
    method = agg.make("pi_rlw", seed=0)
    draws = torch.stack([call(method, random_jacobian(4, 6, 0), DELTA_M) for _ in range(4000)])
    torch.testing.assert_close(draws.mean(0), performance_weights(DELTA_M) / 4, atol=0.02, rtol=0)


@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_pi_nashmtl_weights_the_log_utilities_by_omega(k: int) -> None:
    """max Σ_i ω_i log(g_iᵀd): α_i (Kα)_i = ω_i, so g_iᵀd = ω_i/α_i and ‖d‖² = Σ ω = k."""
    method = agg.make("pi_nashmtl")
    generator = torch.Generator().manual_seed(k)
    for seed in range(3):
        jacobian = random_jacobian(k, 2 * k + 8, seed)
        delta_m = 30 * torch.randn(k, generator=generator, dtype=torch.float64)
        alpha = call(method, jacobian, delta_m)
        omega = performance_weights(delta_m)
        torch.testing.assert_close(method.last_omega, omega)
        torch.testing.assert_close(alpha * (jacobian @ jacobian.T @ alpha), omega, rtol=1e-9, atol=0)
        assert float((alpha @ jacobian).norm() ** 2) == pytest.approx(k, rel=1e-9)
    assert method.fallbacks == 0


def test_pi_nashmtl_agrees_with_the_authors_formulation_with_weighted_constraints() -> None:
    pytest.importorskip("cvxpy")
    jacobian = random_jacobian(4, 16, seed=5)
    alpha = call(agg.make("pi_nashmtl"), jacobian, DELTA_M)
    reference = nash_mtl_ccp((jacobian @ jacobian.T).numpy(), utility_weights=performance_weights(DELTA_M).numpy())
    torch.testing.assert_close(alpha, torch.from_numpy(reference), rtol=1e-5, atol=0)


def test_pi_nashmtl_reuses_weights_and_omega_between_updates() -> None:
    method = agg.make("pi_nashmtl", update_weights_every=2)
    jacobians = [random_jacobian(4, 12, 20 + i) for i in range(3)]
    first = call(method, jacobians[0], DELTA_M)
    assert torch.equal(call(method, jacobians[1], -DELTA_M), first)
    assert not torch.equal(call(method, jacobians[2], DELTA_M), first)


@pytest.mark.parametrize("name", ["pi_ls", "pi_rlw", "pi_nashmtl"])
def test_read_performance_and_record_var_delta_m(name: str) -> None:
    method = agg.make(name, seed=0) if "seed" in agg.options(name) else agg.make(name)
    assert method.uses_performance
    call(method, random_jacobian(4, 12, 0), DELTA_M)
    assert method.last_var_delta_m == pytest.approx(float(DELTA_M.var(unbiased=False)))
    method.reset()
    assert method.last_omega is None and method.last_var_delta_m is None


@pytest.mark.parametrize("name", ["pi_rlw", "pi_nashmtl"])
def test_state_dict_round_trip(name: str) -> None:
    options = {"seed": 1} if name == "pi_rlw" else {"update_weights_every": 3}
    jacobians = [random_jacobian(4, 12, 30 + i) for i in range(6)]
    method = agg.make(name, **options)
    for j in jacobians[:2]:
        call(method, j, DELTA_M)
    saved = method.state_dict()
    first = [call(method, j, DELTA_M) for j in jacobians[2:]]
    resumed = agg.make(name, **options)
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(first, [call(resumed, j, DELTA_M) for j in jacobians[2:]]))


@pytest.mark.parametrize("seed", range(3))
def test_performance_information_lowers_var_delta_m_of_ls_and_nash_mtl(seed: int) -> None:
    """Table 5's direction on the quadratic tasks of test_pivrg.py: the PI variant keeps Var[Δm_i]
    lower over the run than its base method."""
    curvature = random_curvatures(seed)
    mean = {name: sum(v) / len(v) for name in ("ls", "pi_ls", "nashmtl", "pi_nashmtl")
            for v in [quadratic_variance_run(name, curvature)]}
    assert mean["pi_ls"] < mean["ls"] and mean["pi_nashmtl"] < mean["nashmtl"], mean


@pytest.mark.parametrize("name", ["pi_ls", "pi_rlw", "pi_nashmtl"])
def test_bad_omega_bounds_name_the_value(name: str) -> None:
    with pytest.raises(ValueError, match="`omega_upper = 0.9`"):
        agg.make(name, omega_upper=0.9)
