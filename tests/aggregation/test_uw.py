"""UW: learned log-variances, stepped by the aggregator itself, against autograd + torch.optim.Adam."""

from __future__ import annotations

import pytest
import torch
from _references_a import UncertaintyReference

import mtrl.aggregation as agg
from mtrl.aggregation import UW, TaskStats


def test_flags() -> None:
    assert UW.needs_jacobian is False and UW.loss_weighting is True


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_joint_optimisation_with_torch_adam(reduction: str) -> None:
    """Weights = ∂/∂L of Σ ½(e^{−s}L + s) (÷ k for the mean), and s follows torch's Adam, step by step."""
    k = 4
    generator = torch.Generator().manual_seed(0)
    method = UW(reduction=reduction)
    reference = UncertaintyReference(k, lr=0.025)
    for _ in range(60):
        losses = torch.rand(k, generator=generator, dtype=torch.float64) * torch.tensor([0.1, 1.0, 5.0, 20.0],
                                                                                         dtype=torch.float64)
        expected = reference.step(losses) / (k if reduction == "mean" else 1)
        torch.testing.assert_close(method(None, TaskStats(losses)), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(method.log_var, reference.log_var.detach(), rtol=1e-10, atol=1e-12)


def test_converges_to_inverse_loss_weights() -> None:
    """With constant losses the optimum is σ² = L, i.e. weights ½/L (sum reduction)."""
    losses = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)
    method = UW(reduction="sum", lr=0.05)
    for _ in range(3000):
        weights = method(None, TaskStats(losses))
    torch.testing.assert_close(method.log_var, losses.log(), rtol=0, atol=1e-3)
    torch.testing.assert_close(weights, 0.5 / losses, rtol=2e-3, atol=0)


def test_starts_at_half_and_the_mean_scale() -> None:
    stats = TaskStats(torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(UW(reduction="sum")(None, stats), torch.full((5,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(UW()(None, stats), torch.full((5,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(UW(init_log_var=1.0, reduction="sum")(None, stats),
                               torch.full((5,), 0.5 * torch.e**-1, dtype=torch.float64))


def test_negative_losses_are_weighted_above_a_lowered_floor() -> None:
    """L = −5 lowers task 0's floor to −5 − 6 = −11 (task 1, positive, keeps floor 0); s then converges
    to log(L − floor) = log 6 instead of falling without bound, with no fallback."""
    method = UW(reduction="sum", lr=0.05)
    losses = torch.tensor([-5.0, 1.0], dtype=torch.float64)
    for _ in range(3000):
        weights = method(None, TaskStats(losses))
    assert method.fallbacks == 0
    torch.testing.assert_close(method.loss_floor, torch.tensor([-11.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(method.log_var, torch.tensor([6.0, 1.0], dtype=torch.float64).log(), rtol=0, atol=1e-3)
    torch.testing.assert_close(weights, 0.5 / torch.tensor([6.0, 1.0], dtype=torch.float64), rtol=2e-3, atol=0)


def test_old_checkpoints_without_a_floor_still_load() -> None:
    method = UW()
    method(None, TaskStats(torch.ones(2)))
    saved = method.state_dict()
    del saved["loss_floor"]
    fresh = UW()
    fresh.load_state_dict(saved)
    assert torch.equal(fresh(None, TaskStats(torch.ones(2))), method(None, TaskStats(torch.ones(2))))


def test_a_different_number_of_tasks_is_an_error() -> None:
    method = UW()
    method(None, TaskStats(torch.ones(3)))
    with pytest.raises(ValueError, match="3 tasks.*4 tasks"):
        method(None, TaskStats(torch.ones(4)))


def test_state_round_trip_and_reset() -> None:
    method = UW()
    for value in (1.0, 2.0, 0.5):
        method(None, TaskStats(torch.full((2,), value)))
    saved = method.state_dict()
    after = method(None, TaskStats(torch.ones(2)))
    fresh = UW()
    fresh.load_state_dict(saved)
    assert torch.equal(fresh(None, TaskStats(torch.ones(2))), after)
    fresh.reset()
    assert fresh.log_var is None and fresh.adam_steps == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0.0}, "lr = 0.0"),
    ({"lr": -1}, "lr = -1"),
    ({"init_log_var": 100.0}, "init_log_var = 100.0"),
    ({"init_log_var": None}, "init_log_var = None"),
    ({"reduction": "avg"}, "reduction = 'avg'"),
])
def test_bad_options_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agg.make("uw", **kwargs)
