"""Property checks shared by every aggregator in the registry.

Each method has its own test file for its defining condition; here every registered method meets the
common contract on random Jacobians and on the hard cases that break naive solvers.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import mtrl.aggregation as agg
from mtrl.aggregation import TaskStats

METHODS = agg.available()
#: Methods whose update is promised to conflict with no task (⟨g_i, d⟩ ≥ 0 for every i).
NON_CONFLICTING = {"mgda", "nashmtl", "fairgrad", "pivrg", "pi_nashmtl"}


def build(name: str) -> agg.Aggregator:
    """The method with defaults, seeded where it draws random numbers."""
    return agg.make(name, seed=0) if "seed" in agg.options(name) else agg.make(name)


def stats_for(jacobian: torch.Tensor, generator: torch.Generator) -> TaskStats:
    k = jacobian.shape[0]
    losses = torch.rand(k, generator=generator, dtype=jacobian.dtype) + 0.1
    performance = 50 * torch.randn(k, generator=generator, dtype=jacobian.dtype)
    return TaskStats(losses, performance=performance, step=0)


def random_jacobian(k: int, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(k, n, generator=generator, dtype=torch.float64)


def hard_jacobians() -> dict[str, torch.Tensor]:
    g = random_jacobian(4, 30, seed=1)
    direction = g[0] / g[0].norm()
    cases = {
        "zero_row": torch.cat([g[:3], torch.zeros(1, 30, dtype=torch.float64)]),
        "all_zero": torch.zeros(3, 30, dtype=torch.float64),
        "duplicated_rows": torch.stack([g[0], g[0], g[1], g[1]]),
        "rank_one": torch.outer(torch.tensor([1.0, 2.0, -0.5, 3.0], dtype=torch.float64), direction),
        "nearly_collinear": torch.stack([direction + 1e-9 * g[i] for i in range(4)]),
        "opposite": torch.stack([direction, -direction]),
        "more_tasks_than_params": random_jacobian(12, 5, seed=2),
    }
    for exponent in (-8, 8):
        cases[f"magnitude_1e{exponent}"] = g * 10.0 ** exponent
    cases["mixed_magnitudes"] = g * torch.tensor([1e-8, 1.0, 1e4, 1e8], dtype=torch.float64)[:, None]
    return cases


HARD = hard_jacobians()


def check_weights(weights: torch.Tensor, k: int, like: torch.Tensor) -> None:
    assert weights.shape == (k,)
    assert weights.dtype == like.dtype
    assert torch.isfinite(weights).all(), weights


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_random_jacobians_give_finite_weights(name: str, k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    method = build(name)
    for step in range(3):  # a few steps so that stateful methods leave their start-up branch
        jacobian = random_jacobian(k, 2 * k + 8, seed=10 * k + step)
        stats = stats_for(jacobian, generator)
        stats.step = step
        weights = method(jacobian if method.needs_jacobian else None, stats)
        check_weights(weights, k, jacobian)
        method.after_step(stats)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("case", sorted(HARD))
def test_hard_cases_never_give_nan(name: str, case: str) -> None:
    jacobian = HARD[case]
    method = build(name)
    generator = torch.Generator().manual_seed(0)
    for step in range(2):
        stats = stats_for(jacobian, generator)
        stats.step = step
        weights = method(jacobian if method.needs_jacobian else None, stats)
        check_weights(weights, jacobian.shape[0], jacobian)
        assert torch.isfinite(weights @ jacobian).all()


@pytest.mark.parametrize("name", METHODS)
def test_float32_inputs_give_float32_weights(name: str) -> None:
    jacobian = random_jacobian(3, 12, seed=3).float()
    stats = TaskStats(torch.rand(3) + 0.1, performance=torch.randn(3))
    weights = build(name)(jacobian, stats)
    check_weights(weights, 3, jacobian)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_or_loss_names_the_task(name: str, bad: float) -> None:
    jacobian = random_jacobian(3, 6, seed=4)
    jacobian[1, 2] = bad
    method = build(name)
    if method.needs_jacobian:
        with pytest.raises(ValueError, match=r"task\(s\) \[1\]"):
            method(jacobian, TaskStats(torch.ones(3, dtype=torch.float64)))
    losses = torch.ones(3, dtype=torch.float64)
    losses[2] = bad
    with pytest.raises(ValueError, match=r"task\(s\) \[2\]"):
        method(random_jacobian(3, 6, seed=5), TaskStats(losses))


@pytest.mark.parametrize("name", METHODS)
def test_jacobian_with_wrong_number_of_rows_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="k=3"):
        build(name)(random_jacobian(4, 6, seed=6), TaskStats(torch.ones(3, dtype=torch.float64)))


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_resumes_exactly(name: str) -> None:
    """Save mid-run, continue, reload, continue again: the weights must repeat bit for bit."""
    generator = torch.Generator().manual_seed(7)
    jacobians = [random_jacobian(3, 10, seed=100 + i) for i in range(6)]
    all_stats = [stats_for(j, generator) for j in jacobians]
    for i, stats in enumerate(all_stats):
        stats.step = i

    def run(method: agg.Aggregator, indices: range) -> list[torch.Tensor]:
        out = []
        for i in indices:
            out.append(method(jacobians[i], all_stats[i]))
            method.after_step(all_stats[i])
        return out

    method = build(name)
    run(method, range(3))
    saved = method.state_dict()
    first = run(method, range(3, 6))
    fresh = build(name)
    fresh.load_state_dict(saved)
    second = run(fresh, range(3, 6))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", METHODS)
def test_reset_forgets_the_run(name: str) -> None:
    jacobians = [random_jacobian(3, 10, seed=200 + i) for i in range(3)]
    generator = torch.Generator().manual_seed(8)
    all_stats = [stats_for(j, generator) for j in jacobians]
    method = build(name)
    first = [method(j, s) for j, s in zip(jacobians, all_stats)]
    method.fallbacks = 5
    method.reset()
    assert method.fallbacks == 0
    if "seed" in agg.options(name) and method.seed is None:
        return  # an unseeded method draws a new seed on reset
    again = [method(j, s) for j, s in zip(jacobians, all_stats)]
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)


def _has_randomness(name: str) -> bool:
    return "seed" in agg.options(name)


@pytest.mark.parametrize("name", [m for m in METHODS if not _has_randomness(m)])
def test_permuting_tasks_permutes_weights(name: str) -> None:
    jacobian = random_jacobian(4, 12, seed=9)
    stats = TaskStats(torch.tensor([0.5, 1.0, 2.0, 0.7], dtype=torch.float64),
                      performance=torch.tensor([10.0, -5.0, 30.0, 0.0], dtype=torch.float64))
    permutation = torch.tensor([2, 0, 3, 1])
    weights = build(name)(jacobian, stats)
    permuted = build(name)(jacobian[permutation],
                           TaskStats(stats.losses[permutation], performance=stats.performance[permutation]))
    torch.testing.assert_close(permuted, weights[permutation], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", sorted(NON_CONFLICTING & set(METHODS)))
@pytest.mark.parametrize("seed", range(5))
def test_update_conflicts_with_no_task(name: str, seed: int) -> None:
    jacobian = random_jacobian(5, 20, seed=seed)
    weights = build(name)(jacobian, TaskStats(torch.ones(5, dtype=torch.float64),
                                               performance=torch.zeros(5, dtype=torch.float64)))
    products = jacobian @ (weights @ jacobian)
    assert (products >= -1e-6 * jacobian.norm(dim=1) * (weights @ jacobian).norm()).all(), products


@pytest.mark.parametrize("name", METHODS)
def test_every_method_documents_its_paper_and_options(name: str) -> None:
    cls = type(build(name))
    doc = inspect.getdoc(cls) or ""
    assert len(doc) > 80, f"{name} needs a docstring naming its paper and equation"
    assert repr(build(name)).startswith(cls.__name__ + "(")


@pytest.mark.parametrize("name", ["dwa", "uw", "famo", "excessmtl"])
def test_checkpoints_with_host_counters_still_resume(name: str) -> None:
    """States written when counters were host integers (and before the loss floor existed) load and
    continue exactly like the state they came from."""
    generator = torch.Generator().manual_seed(11)
    jacobians = [random_jacobian(3, 10, seed=300 + i) for i in range(6)]
    all_stats = [stats_for(j, generator) for j in jacobians]
    method = build(name) if name != "dwa" else agg.make("dwa", window=1)
    for jacobian, stats in zip(jacobians[:3], all_stats[:3]):
        method(jacobian, stats)
        method.after_step(stats)
    old_format = method.state_dict()
    for key in ("calls", "adam_steps"):
        if key in old_format:
            old_format[key] = int(old_format[key])
    old_format.pop("loss_floor", None)  # positive losses: the floor is still its initial value
    if name == "famo":
        old_format["last_gaps"] = None  # consumed by after_step: None in the old format, NaN now
    fresh = build(name) if name != "dwa" else agg.make("dwa", window=1)
    fresh.load_state_dict(old_format)
    for jacobian, stats in zip(jacobians[3:], all_stats[3:]):
        torch.testing.assert_close(fresh(jacobian, stats), method(jacobian, stats), rtol=0, atol=0)
        fresh.after_step(stats)
        method.after_step(stats)


def test_a_finite_row_whose_sum_overflows_is_not_called_non_finite() -> None:
    """The cheap row-sum check flags it; the eager path confirms entry by entry and accepts it."""
    jacobian = torch.randn(3, 8)
    jacobian[1, :4] = 3e38  # finite float32 entries whose sum overflows
    weights = agg.make("imtlg")(jacobian, TaskStats(torch.ones(3)))
    assert weights.shape == (3,)
