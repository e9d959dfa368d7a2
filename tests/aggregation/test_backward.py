"""`mtl_backward` and the two Jacobian routes on a small shared-trunk / per-task-head model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import mtrl.aggregation as agg
from mtrl.aggregation import TaskStats, mtl_backward, task_jacobian, task_partitioned_jacobian

K, ROWS, IN, HIDDEN = 3, 5, 4, 6


class SharedTrunkModel(nn.Module):
    """A trunk shared by all tasks and one linear head per task, heads stored stacked as [k, ...]."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh())
        self.head_weight = nn.Parameter(torch.randn(K, HIDDEN, dtype=torch.float64))
        self.head_bias = nn.Parameter(torch.randn(K, dtype=torch.float64))
        self.double()

    def task_loss(self, trunk_params: dict, weight: torch.Tensor, bias: torch.Tensor,
                  x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of one task on its own rows: ``x`` [rows, IN], ``y`` [rows]."""
        features = functional_call(self.trunk, trunk_params, (x,))
        return ((features @ weight + bias - y) ** 2).mean()

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """All tasks at once through the ordinary autograd graph: ``x`` [k, rows, IN]."""
        params = dict(self.trunk.named_parameters())
        return torch.stack([self.task_loss(params, self.head_weight[i], self.head_bias[i], x[i], y[i])
                            for i in range(K)])


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


def test_partitioned_jacobian_equals_generic_jacobian(model_and_data) -> None:
    model, x, y = model_and_data
    shared = dict(model.trunk.named_parameters())
    losses, jacobian = task_partitioned_jacobian(model.task_loss, shared, model.head_weight, model.head_bias, x, y)
    reference_losses = model.losses(x, y)
    torch.testing.assert_close(losses, reference_losses)
    torch.testing.assert_close(jacobian, task_jacobian(reference_losses, list(shared.values())))


def test_partitioned_losses_reach_the_heads_but_not_the_trunk(model_and_data) -> None:
    model, x, y = model_and_data
    losses, _ = task_partitioned_jacobian(model.task_loss, dict(model.trunk.named_parameters()),
                                          model.head_weight, model.head_bias, x, y)
    losses.sum().backward()
    assert all(p.grad is None for p in model.trunk.parameters())
    torch.testing.assert_close(model.head_weight.grad, per_task_head_grads(model, x, y))


def test_partitioned_jacobian_rejects_mismatched_task_dimension(model_and_data) -> None:
    model, x, y = model_and_data
    with pytest.raises(ValueError, match=r"task_inputs\[3\].*k=3"):
        task_partitioned_jacobian(model.task_loss, dict(model.trunk.named_parameters()),
                                  model.head_weight, model.head_bias, x, y[:2])


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


def test_precomputed_partitioned_jacobian_gives_the_same_step(model_and_data) -> None:
    model, x, y = model_and_data
    shared = dict(model.trunk.named_parameters())
    mtl_backward(model.losses(x, y), list(shared.values()), agg.make("nashmtl"))
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    losses, jacobian = task_partitioned_jacobian(model.task_loss, shared, model.head_weight, model.head_bias, x, y)
    mtl_backward(losses, list(shared.values()), agg.make("nashmtl"), jacobian=jacobian,
                 task_params=[model.head_weight, model.head_bias])
    for before, p in zip(expected, model.parameters()):
        torch.testing.assert_close(p.grad, before)


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
