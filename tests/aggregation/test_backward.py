"""`mtl_backward` and the two ways to the Jacobian (generic, task-partitioned) on a small shared-trunk /
per-task-head model, against autograd task by task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtrl.aggregation as agg
from mtrl.aggregation import (TaskStats, mtl_backward, replicate_for_tasks, task_jacobian, task_linear,
                              task_partitioned_gradients)

K, ROWS, IN, HIDDEN = 3, 5, 4, 6


class SharedTrunkModel(nn.Module):
    """A trunk shared by all tasks and one linear head per task, heads stored stacked as [k, ...]."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh())
        self.head_weight = nn.Parameter(torch.randn(K, HIDDEN, dtype=torch.float64))
        self.head_bias = nn.Parameter(torch.randn(K, dtype=torch.float64))
        self.double()

    def losses(self, x: torch.Tensor, y: torch.Tensor, replicas: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The ``[k]`` losses of a task-partitioned batch ``x [k, rows, IN]``, ``y [k, rows]``, with the trunk's
        parameters or their per-task replicas."""
        features = x
        for layer in range(2):
            if replicas is None:
                features = self.trunk[2 * layer](features)
            else:
                features = task_linear(features, replicas[2 * layer], replicas[2 * layer + 1])
            features = torch.tanh(features)
        predictions = (features * self.head_weight[:, None, :]).sum(-1) + self.head_bias[:, None]
        return ((predictions - y) ** 2).mean(-1)


@pytest.fixture
def model_and_data() -> tuple[SharedTrunkModel, torch.Tensor, torch.Tensor]:
    model = SharedTrunkModel()
    x = torch.randn(K, ROWS, IN, dtype=torch.float64)
    y = torch.randn(K, ROWS, dtype=torch.float64)
    return model, x, y


def loop_jacobian(losses: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """The reference: one ``autograd.grad`` per task."""
    rows = []
    for i in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def per_task_head_grads(model: SharedTrunkModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    losses = model.losses(x, y)
    return torch.stack([torch.autograd.grad(losses[i], model.head_weight, retain_graph=True)[0][i] for i in range(K)])


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in params])


def test_generic_jacobian_matches_one_backward_per_task(model_and_data) -> None:
    model, x, y = model_and_data
    shared = list(model.trunk.parameters())
    losses = model.losses(x, y)
    torch.testing.assert_close(task_jacobian(losses, shared), loop_jacobian(losses, shared))


def test_partitioned_gradients_are_the_jacobian_and_the_heads_gradient_of_the_sum(model_and_data) -> None:
    """One backward through per-task replicas of the trunk: the replicas' gradients are the rows of the Jacobian,
    and task i's slice of each head's gradient is ∇L_i on its own head."""
    model, x, y = model_and_data
    shared, heads = list(model.trunk.parameters()), [model.head_weight, model.head_bias]
    replicas = replicate_for_tasks(shared, K)
    losses = model.losses(x, y, replicas)
    reference = model.losses(x, y)
    torch.testing.assert_close(losses, reference)
    jacobian, (weight_grad, bias_grad) = task_partitioned_gradients(losses, replicas, heads)
    torch.testing.assert_close(jacobian, loop_jacobian(reference, shared))
    torch.testing.assert_close(weight_grad, per_task_head_grads(model, x, y))
    reference_weight, reference_bias = torch.autograd.grad(reference.sum(), heads)
    torch.testing.assert_close(weight_grad, reference_weight)
    torch.testing.assert_close(bias_grad, reference_bias)
    assert all(p.grad is None for p in model.parameters())   # gradients are returned, not accumulated


def test_replicas_follow_their_parameters_and_task_linear_checks_shapes(model_and_data) -> None:
    """Replicas are views: an in-place step on the parameter (what optimizers do) is seen by them."""
    model, x, y = model_and_data
    shared = list(model.trunk.parameters())
    replicas = replicate_for_tasks(shared, K)
    with torch.no_grad():
        shared[0].add_(1.0)
    torch.testing.assert_close(model.losses(x, y, replicas), model.losses(x, y))
    with pytest.raises(ValueError, match=r"task_linear needs x \[k, b, in\]"):
        task_linear(x[0], replicas[0], replicas[1])


@pytest.mark.parametrize("name", ["ls", "rlw", "pcgrad", "nashmtl", "pivrg", "mgda"])
@pytest.mark.parametrize("scale", [False, True])
def test_grad_is_the_weighted_combination(model_and_data, name: str, scale: bool) -> None:
    """Shared params get weights @ J; head i gets ∇L_i (or w_i ∇L_i when scaled)."""
    model, x, y = model_and_data
    shared = list(model.trunk.parameters())
    losses = model.losses(x, y)
    reference_jacobian = loop_jacobian(losses, shared)
    reference_heads = per_task_head_grads(model, x, y)
    method = agg.make(name, seed=0) if "seed" in agg.options(name) else agg.make(name)
    weights = mtl_backward(losses, shared, method, scale_task_gradients=scale)
    torch.testing.assert_close(flat_grad(shared), weights @ reference_jacobian)
    expected_heads = weights[:, None] * reference_heads if scale else reference_heads
    torch.testing.assert_close(model.head_weight.grad, expected_heads)


def test_task_params_route_equals_the_discovery_route(model_and_data) -> None:
    model, x, y = model_and_data
    shared = list(model.trunk.parameters())
    mtl_backward(model.losses(x, y), shared, agg.make("pcgrad", seed=0))
    without = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    mtl_backward(model.losses(x, y), shared, agg.make("pcgrad", seed=0),
                 task_params=[model.head_weight, model.head_bias])
    for before, p in zip(without, model.parameters()):
        torch.testing.assert_close(p.grad, before)


@pytest.mark.parametrize("name", ["ls", "pivrg"])
@pytest.mark.parametrize("scale", [False, True])
def test_partitioned_gradients_give_the_generic_step(model_and_data, name: str, scale: bool) -> None:
    model, x, y = model_and_data
    shared, heads = list(model.trunk.parameters()), [model.head_weight, model.head_bias]
    reference = mtl_backward(model.losses(x, y), shared, agg.make(name), task_params=heads, scale_task_gradients=scale)
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    replicas = replicate_for_tasks(shared, K)
    losses = model.losses(x, y, replicas)
    jacobian, head_grads = task_partitioned_gradients(losses, replicas, heads)
    weights = mtl_backward(losses, shared, agg.make(name), jacobian=jacobian, task_params=heads,
                           task_gradients=head_grads, scale_task_gradients=scale)
    torch.testing.assert_close(weights, reference)
    assert name == "ls" or not torch.allclose(weights, torch.full_like(weights, 1 / K))
    for before, p in zip(expected, model.parameters()):
        torch.testing.assert_close(p.grad, before)


@pytest.mark.parametrize("name", ["ls", "rlw", "uw", "dwa", "pi_rlw"])
def test_loss_weighting_without_a_jacobian_takes_the_jacobian_step(model_and_data, name: str) -> None:
    """Methods that only weight losses take one backward of Σ w_i L_i: the step the Jacobian route gives."""
    model, x, y = model_and_data
    shared = list(model.trunk.parameters())
    options = {"seed": 3} if "seed" in agg.options(name) else {"window": 1} if name == "dwa" else {}
    losses = model.losses(x, y).detach()

    def step(method: agg.Aggregator, with_jacobian: bool, call: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # The losses the method sees change from call to call (DWA weights by their rate of change).
        stats = TaskStats(losses * torch.tensor([1.0, 1.5, 0.7], dtype=torch.float64) ** call,
                          performance=torch.tensor([10.0, 40.0, 90.0]), step=call)
        model.zero_grad(set_to_none=True)
        current = model.losses(x, y)
        jacobian = task_jacobian(current, shared) if with_jacobian else None
        weights = mtl_backward(current, shared, method, stats, jacobian=jacobian)
        return weights, [p.grad.clone() for p in model.parameters()]

    by_jacobian, by_backward = agg.make(name, **options), agg.make(name, **options)
    for call in range(3):   # stateful methods (DWA's history) move their weights after the first calls
        reference, expected = step(by_jacobian, True, call)
        weights, grads = step(by_backward, False, call)
        torch.testing.assert_close(weights, reference)
        for ours, before in zip(grads, expected):
            torch.testing.assert_close(ours, before)
    assert name == "ls" or not torch.allclose(weights, weights.mean())


def test_max_norm_clips_the_shared_direction_only(model_and_data) -> None:
    model, x, y = model_and_data
    shared = list(model.trunk.parameters())
    weights = mtl_backward(model.losses(x, y), shared, agg.make("pcgrad", seed=0), max_norm=1e-3)
    direction = weights @ loop_jacobian(model.losses(x, y), shared)
    assert direction.norm() > 1e-3
    torch.testing.assert_close(flat_grad(shared), direction * 1e-3 / (direction.norm() + 1e-6))
    torch.testing.assert_close(model.head_weight.grad, per_task_head_grads(model, x, y))   # heads unclipped


def test_precomputed_head_gradients_need_their_parameters(model_and_data) -> None:
    model, x, y = model_and_data
    shared, heads = list(model.trunk.parameters()), [model.head_weight, model.head_bias]
    replicas = replicate_for_tasks(shared, K)
    losses = model.losses(x, y, replicas)
    jacobian, head_grads = task_partitioned_gradients(losses, replicas, heads)
    with pytest.raises(ValueError, match="task_gradients needs task_params of the same length"):
        mtl_backward(losses, shared, agg.make("ls"), jacobian=jacobian, task_gradients=head_grads)
    with pytest.raises(ValueError, match=r"shape \(3,\) for a parameter of shape \(3, 6\)"):
        mtl_backward(losses, shared, agg.make("ls"), jacobian=jacobian, task_params=heads,
                     task_gradients=head_grads[::-1])


def test_loss_weighting_methods_scale_heads_by_default(model_and_data) -> None:
    model, x, y = model_and_data
    heads = per_task_head_grads(model, x, y)
    weights = mtl_backward(model.losses(x, y), list(model.trunk.parameters()), agg.make("rlw", seed=1))
    torch.testing.assert_close(model.head_weight.grad, weights[:, None] * heads)
    model.zero_grad(set_to_none=True)
    mtl_backward(model.losses(x, y), list(model.trunk.parameters()), agg.make("pcgrad", seed=1))
    torch.testing.assert_close(model.head_weight.grad, heads)


def test_gradients_accumulate_like_backward(model_and_data) -> None:
    model, x, y = model_and_data
    shared = list(model.trunk.parameters())
    mtl_backward(model.losses(x, y), shared, agg.make("ls"))
    once = flat_grad(shared).clone()
    mtl_backward(model.losses(x, y), shared, agg.make("ls"))
    torch.testing.assert_close(flat_grad(shared), 2 * once)


def test_non_finite_loss_raises_and_leaves_grads_untouched(model_and_data) -> None:
    model, x, y = model_and_data
    shared = list(model.trunk.parameters())
    mtl_backward(model.losses(x, y), shared, agg.make("ls"))
    before = [p.grad.clone() for p in model.parameters()]
    y_bad = y.clone()
    y_bad[1, 0] = float("nan")
    for name in ("ls", "nashmtl"):
        with pytest.raises(ValueError, match=r"task\(s\) \[1\]"):
            mtl_backward(model.losses(x, y_bad), shared, agg.make(name))
        for b, p in zip(before, model.parameters()):
            torch.testing.assert_close(p.grad, b)


def test_losses_must_be_a_vector(model_and_data) -> None:
    model, x, y = model_and_data
    with pytest.raises(ValueError, match="k scalar losses"):
        mtl_backward(model.losses(x, y).reshape(1, K), list(model.trunk.parameters()), agg.make("ls"))


def test_stats_must_match_the_losses(model_and_data) -> None:
    model, x, y = model_and_data
    with pytest.raises(ValueError, match="3 task losses"):
        mtl_backward(model.losses(x, y), list(model.trunk.parameters()), agg.make("ls"),
                     stats=TaskStats(torch.ones(2, dtype=torch.float64)))


def test_generic_jacobian_falls_back_to_one_backward_per_task(monkeypatch, model_and_data) -> None:
    """Operations without a batching rule make ``is_grads_batched`` fail; the loop must take over."""
    model, x, y = model_and_data
    shared = list(model.trunk.parameters())
    losses = model.losses(x, y)
    original = torch.autograd.grad

    def refuse_batched(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", refuse_batched)
    torch.testing.assert_close(task_jacobian(losses, shared), loop_jacobian(losses, shared))


def test_unused_shared_parameter_gets_a_zero_column() -> None:
    used = torch.randn(3, requires_grad=True)
    unused = torch.randn(2, requires_grad=True)
    losses = torch.stack([(used ** 2).sum(), used.sum()])
    jacobian = task_jacobian(losses, [used, unused])
    assert jacobian.shape == (2, 5)
    assert torch.equal(jacobian[:, 3:], torch.zeros(2, 2))
