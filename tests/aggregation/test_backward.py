"""`mtl_backward` and the two Jacobian routes on a small shared-trunk / per-task-head model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import mtrl.aggregation as agg
from mtrl.aggregation import TaskStats, mtl_backward, task_jacobian, task_partitioned_gradients, task_partitioned_jacobian

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


def test_partitioned_head_gradients_are_each_task_own_gradient(model_and_data) -> None:
    """``task_grads``: the heads' gradients come out of the same vmap'd pass, task i's slice ∇L_i on head i."""
    model, x, y = model_and_data
    shared = dict(model.trunk.named_parameters())
    losses, jacobian, (weight_grad, bias_grad), aux = task_partitioned_gradients(
        model.task_loss, shared, model.head_weight, model.head_bias, x, y, task_grads=2)
    assert aux is None
    reference_losses = model.losses(x, y)
    torch.testing.assert_close(losses, reference_losses.detach())
    torch.testing.assert_close(jacobian, loop_jacobian(reference_losses, list(shared.values())))
    torch.testing.assert_close(weight_grad, per_task_head_grads(model, x, y))
    # Σ_i L_i reads head i only through task i: its gradient on the stacked heads is the stacked per-task one.
    reference_weight, reference_bias = torch.autograd.grad(reference_losses.sum(), [model.head_weight, model.head_bias])
    torch.testing.assert_close(weight_grad, reference_weight)
    torch.testing.assert_close(bias_grad, reference_bias)
    assert not losses.requires_grad   # nothing left to differentiate: the heads were the only inputs with grad


def test_partitioned_auxiliary_output_comes_back_stacked_over_tasks(model_and_data) -> None:
    """``has_aux``: a statistic of each task's forward (here its mean prediction) comes back ``[k]`` beside the
    losses and the Jacobian, which are those of the loss alone."""
    model, x, y = model_and_data
    shared = dict(model.trunk.named_parameters())

    def loss_and_mean_prediction(trunk: dict, weight: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor,
                                 target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = functional_call(model.trunk, trunk, (rows,)) @ weight + bias
        return ((prediction - target) ** 2).mean(), prediction.mean()

    result = task_partitioned_gradients(loss_and_mean_prediction, shared, model.head_weight, model.head_bias, x, y,
                                        has_aux=True)
    plain = task_partitioned_jacobian(model.task_loss, shared, model.head_weight, model.head_bias, x, y)
    torch.testing.assert_close(result.losses, plain[0])
    torch.testing.assert_close(result.jacobian, plain[1])
    expected = torch.stack([(model.trunk(x[i]) @ model.head_weight[i] + model.head_bias[i]).mean() for i in range(K)])
    torch.testing.assert_close(result.aux, expected.detach())
    assert result.task_gradients == []


@pytest.mark.parametrize("scale", [False, True])
def test_precomputed_head_gradients_give_the_same_step(model_and_data, scale: bool) -> None:
    model, x, y = model_and_data
    shared = dict(model.trunk.named_parameters())
    heads = [model.head_weight, model.head_bias]
    losses, jacobian = task_partitioned_jacobian(model.task_loss, shared, *heads, x, y)
    reference = mtl_backward(losses, list(shared.values()), agg.make("pivrg"), jacobian=jacobian, task_params=heads,
                             scale_task_gradients=scale)
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    losses, jacobian, head_grads, _ = task_partitioned_gradients(model.task_loss, shared, *heads, x, y, task_grads=2)
    weights = mtl_backward(losses, list(shared.values()), agg.make("pivrg"), jacobian=jacobian, task_params=heads,
                           task_gradients=head_grads, scale_task_gradients=scale)
    torch.testing.assert_close(weights, reference)
    assert not torch.allclose(weights, torch.full_like(weights, 1 / K))   # the scaled case scales by unequal weights
    for before, p in zip(expected, model.parameters()):
        torch.testing.assert_close(p.grad, before)


def test_precomputed_head_gradients_need_their_parameters(model_and_data) -> None:
    model, x, y = model_and_data
    shared = dict(model.trunk.named_parameters())
    heads = [model.head_weight, model.head_bias]
    losses, jacobian, head_grads, _ = task_partitioned_gradients(model.task_loss, shared, *heads, x, y, task_grads=2)
    with pytest.raises(ValueError, match="task_gradients needs task_params of the same length"):
        mtl_backward(losses, list(shared.values()), agg.make("ls"), jacobian=jacobian, task_gradients=head_grads)
    with pytest.raises(ValueError, match=r"shape \(3,\) for a parameter of shape \(3, 6\)"):
        mtl_backward(losses, list(shared.values()), agg.make("ls"), jacobian=jacobian, task_params=heads,
                     task_gradients=head_grads[::-1])
    with pytest.raises(ValueError, match="task_grads = 5 should be between 0 and the 4 task inputs"):
        task_partitioned_gradients(model.task_loss, shared, *heads, x, y, task_grads=5)


def batched_losses(model: SharedTrunkModel, x: torch.Tensor, y: torch.Tensor,
                   scale: torch.Tensor | None = None) -> torch.Tensor:
    """:meth:`SharedTrunkModel.losses` in one pass over ``[k, rows, ...]``, the trunk's gradient scaled per task."""
    features = agg.scale_shared_gradient(model.trunk(x), scale)                       # [k, rows, HIDDEN]
    predictions = (features * model.head_weight[:, None, :]).sum(-1) + model.head_bias[:, None]
    return ((predictions - y) ** 2).mean(-1)


@pytest.mark.parametrize("name", ["ls", "rlw", "uw", "dwa", "pi_rlw"])
@pytest.mark.parametrize("scale_heads", [False, True])
def test_one_backward_with_a_scaled_trunk_gradient_gives_the_two_pass_step(model_and_data, name: str,
                                                                           scale_heads: bool) -> None:
    """``shared_gradient_scale``: the graph scales each task's gradient into the trunk by its weight, so one
    backward of Σ L_i (Σ w_i L_i when the heads are scaled too) gives the step of the generic route."""
    model, x, y = model_and_data
    shared, heads = list(model.trunk.parameters()), [model.head_weight, model.head_bias]
    options = {"seed": 3} if "seed" in agg.options(name) else {"window": 1} if name == "dwa" else {}
    losses = batched_losses(model, x, y).detach()

    def step(method: agg.Aggregator, one_backward: bool, call: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # The losses the method sees change from call to call (DWA weights by their rate of change).
        stats = TaskStats(losses * torch.tensor([1.0, 1.5, 0.7], dtype=torch.float64) ** call,
                          performance=torch.tensor([10.0, 40.0, 90.0]), step=call)
        model.zero_grad(set_to_none=True)
        scale = torch.full((K,), float("nan"), dtype=torch.float64) if one_backward else None   # filled by the call
        weights = mtl_backward(batched_losses(model, x, y, scale), shared, method, stats, task_params=heads,
                               shared_gradient_scale=scale, scale_task_gradients=scale_heads)
        return weights, [p.grad.clone() for p in model.parameters()]

    two_pass, one_pass = agg.make(name, **options), agg.make(name, **options)
    for call in range(3):   # stateful methods (DWA's history) move their weights after the first calls
        reference, expected = step(two_pass, False, call)
        weights, grads = step(one_pass, True, call)
        torch.testing.assert_close(weights, reference)
        for ours, before in zip(grads, expected):
            torch.testing.assert_close(ours, before)
    assert name == "ls" or not torch.allclose(weights, weights.mean())


def test_a_scaled_trunk_gradient_needs_one_scale_per_task(model_and_data) -> None:
    model, x, y = model_and_data
    scale = torch.ones(K + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shared_gradient_scale must be \[k\] = \(3,\), got \(4,\)"):
        mtl_backward(batched_losses(model, x, y, scale), list(model.trunk.parameters()), agg.make("ls"),
                     task_params=[model.head_weight, model.head_bias], shared_gradient_scale=scale)
    with pytest.raises(ValueError, match="the losses do not depend on any parameter that requires grad"):
        mtl_backward(batched_losses(model, x, y).detach(), list(model.trunk.parameters()), agg.make("ls"),
                     shared_gradient_scale=torch.ones(K, dtype=torch.float64))


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
