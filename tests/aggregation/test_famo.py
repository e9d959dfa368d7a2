"""FAMO: weights from the log-loss gradient, logits learned through ``after_step``."""

from __future__ import annotations

import pytest
import torch
from _references_a import FAMOReference
from torch import nn

import mtrl.aggregation as agg
from mtrl.aggregation import FAMO, TaskStats, mtl_backward


def stats(values: list[float] | torch.Tensor) -> TaskStats:
    return TaskStats(torch.as_tensor(values, dtype=torch.float64))


def test_flags() -> None:
    assert FAMO.needs_jacobian is False and FAMO.loss_weighting is True


@pytest.mark.parametrize("min_losses", [0.0, 0.05])
def test_matches_autograd_and_torch_adam_over_a_run(min_losses: float) -> None:
    k = 5
    generator = torch.Generator().manual_seed(0)
    method = FAMO(min_losses=min_losses)
    reference = FAMOReference(k, lr=0.025, weight_decay=0.01, min_losses=min_losses)
    losses = torch.rand(k, generator=generator, dtype=torch.float64) + 0.5
    for _ in range(40):
        expected = reference.weights(losses)
        torch.testing.assert_close(method(None, TaskStats(losses)), expected, rtol=1e-12, atol=0)
        new_losses = losses * (0.8 + 0.3 * torch.rand(k, generator=generator, dtype=torch.float64))
        reference.update(new_losses)
        method.after_step(TaskStats(new_losses))
        losses = new_losses
    torch.testing.assert_close(method.logits, reference.logits.detach(), rtol=1e-10, atol=1e-12)


def test_weights_sum_to_one_and_start_as_normalised_inverse_losses() -> None:
    """Before any after_step, z = 1/k and w_i ∝ 1/L_i (the gradient of Σ log L_i, normalised)."""
    losses = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    weights = FAMO()(None, TaskStats(losses))
    torch.testing.assert_close(weights, (1 / losses) / (1 / losses).sum())
    assert abs(float(weights.sum()) - 1) <= 1e-12


def test_without_after_step_it_stays_static() -> None:
    method = FAMO()
    first = method(None, stats([1.0, 2.0]))
    for _ in range(5):
        again = method(None, stats([1.0, 2.0]))
    assert torch.equal(first, again) and method.adam_steps == 0


def test_faster_falling_task_loses_weight() -> None:
    method = FAMO()
    method(None, stats([1.0, 1.0, 1.0]))
    method.after_step(stats([0.5, 0.9, 0.95]))  # task 0 fell fastest, task 2 slowest
    z = torch.softmax(method.logits, dim=0)
    assert z[0] < z[1] < z[2]
    weights = method(None, stats([1.0, 1.0, 1.0]))
    assert weights[0] < weights[1] < weights[2]


def test_after_step_needs_a_preceding_call_and_is_used_once() -> None:
    method = FAMO()
    method.after_step(stats([1.0, 1.0]))  # nothing to compare with: no-op
    assert method.adam_steps == 0
    method(None, stats([1.0, 1.0]))
    method.after_step(stats([0.5, 1.0]))
    method.after_step(stats([0.1, 1.0]))  # the losses of the call were used already: no-op
    assert method.adam_steps == 1


def test_shared_gradient_is_the_gradient_of_the_log_objective() -> None:
    """mtl_backward with FAMO's weights gives Σ_i z_i ∇log(L_i)/c on the shared parameters (c fixed)."""
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4).double()
    head = nn.Linear(4, 2).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(6, 2, dtype=torch.float64)

    def losses() -> torch.Tensor:
        return ((head(torch.tanh(trunk(x))) - y) ** 2).mean(dim=0)

    method = FAMO()
    method(None, TaskStats(losses().detach()))
    method.after_step(TaskStats(losses().detach() * torch.tensor([0.5, 0.9], dtype=torch.float64)))
    mtl_backward(losses(), trunk.parameters(), method)
    ours = [p.grad.clone() for p in trunk.parameters()]
    z = torch.softmax(method.logits, dim=0)
    task_losses = losses()
    c = (z / (task_losses.detach() + 1e-8)).sum()
    objective = (z * (task_losses + 1e-8).log() / c).sum()
    for got, expected in zip(ours, torch.autograd.grad(objective, list(trunk.parameters()))):
        torch.testing.assert_close(got, expected)


def test_loss_below_min_losses_lowers_the_floor_instead_of_falling_back() -> None:
    """Task 1's loss 0.5 is below its min_loss 1: the floor drops to 0.5 − 1.5 = −1, so D = (0.5, 1.5)."""
    method = FAMO(min_losses=[0.0, 1.0])
    weights = method(None, stats([0.5, 0.5]))
    assert method.fallbacks == 0
    gaps = torch.tensor([0.5, 1.5], dtype=torch.float64) + 1e-8
    torch.testing.assert_close(weights, (1 / gaps) / (1 / gaps).sum())
    method.after_step(stats([0.4, 0.2]))
    assert torch.isfinite(method.logits).all()


def test_negative_losses_toy_is_defined_at_every_step_and_adapts() -> None:
    """SAC-actor-like negative losses: no fallback, weights on the simplex at every step, and the task
    whose loss falls faster (task 0) loses logit weight, as with positive losses."""
    method = FAMO()
    losses = torch.tensor([-5.0, -5.0, -5.0], dtype=torch.float64)
    for _ in range(100):
        weights = method(None, TaskStats(losses))
        assert torch.isfinite(weights).all() and abs(float(weights.sum()) - 1) <= 1e-12
        losses = losses - torch.tensor([0.5, 0.1, 0.0], dtype=torch.float64)
        method.after_step(TaskStats(losses))
    assert method.fallbacks == 0
    z = torch.softmax(method.logits, dim=0)
    assert z[0] < z[1] < z[2]


def test_a_different_number_of_tasks_is_an_error() -> None:
    method = FAMO(min_losses=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="3 min_losses.*2 tasks"):
        method(None, stats([1.0, 1.0]))


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0}, "lr = 0"),
    ({"weight_decay": -0.1}, "weight_decay = -0.1"),
    ({"min_losses": "zero"}, "min_losses = 'zero'"),
    ({"min_losses": [0.0, float("nan")]}, "min_losses = \\[0.0, nan\\]"),
    ({"min_losses": []}, "min_losses = \\[\\]"),
])
def test_bad_options_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agg.make("famo", **kwargs)
