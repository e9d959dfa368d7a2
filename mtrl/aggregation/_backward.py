"""From per-task losses to ``.grad``: the per-task Jacobian and the aggregated step.

The aggregated step is the same for the RL agent and the supervised adapter::

    J = [∇_θ L_1; …; ∇_θ L_k]        the [k, n] Jacobian on the shared parameters θ
    w = aggregator(J, stats)          the method's task weights
    θ.grad += wᵀ J                    the shared parameters' update direction
    head_i.grad += ∇ L_i (or w_i ∇ L_i for loss-weighting methods)

:func:`mtl_backward` carries it out. Two ways lead to ``J``, chosen by what the losses are, not by device:

* :func:`task_jacobian` — any losses, also when every sample feeds every task (supervised learning): one
  batched backward (``is_grads_batched``), or ``k`` backward passes where an operation has no batching rule.
* **Task-partitioned batches** — task ``i``'s loss reads only its own rows (multi-task RL with a replay
  buffer stratified by task). The shared layers are applied through per-task replicas of their weights
  (:func:`replicate_for_tasks`, :func:`task_linear`): a linear layer's weight gradient is a sum of outer
  products over the rows, so summing it per task is one batched matrix product instead of one matrix
  product, and one backward of ``Σ_i L_i`` (:func:`task_partitioned_gradients`) returns every task's gradient
  on every shared weight — the Jacobian — and the heads' gradients, at about the cost of a plain backward.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats

__all__ = ["mtl_backward", "task_jacobian", "replicate_for_tasks", "task_linear", "task_partitioned_gradients"]


def _as_loss_vector(task_losses: Tensor | Sequence[Tensor]) -> Tensor:
    losses = task_losses if isinstance(task_losses, Tensor) else torch.stack(list(task_losses))
    if losses.ndim != 1 or losses.numel() == 0:
        raise ValueError(f"task_losses must be k scalar losses (a [k] tensor), got shape {tuple(losses.shape)}.")
    return losses


def _flatten(tensors: Sequence[Tensor | None], like: Sequence[Tensor], k: int) -> Tensor:
    """Concatenate per-parameter ``[k, *shape]`` gradients into ``[k, n]`` (``None`` = unused = 0)."""
    rows = [torch.zeros(k, p.numel(), dtype=p.dtype, device=p.device) if g is None else g.reshape(k, -1)
            for g, p in zip(tensors, like)]
    return torch.cat(rows, dim=1)


# ------------------------------------------------------------------------------ the generic Jacobian
def task_jacobian(task_losses: Tensor | Sequence[Tensor], shared_params: Iterable[Tensor],
                  retain_graph: bool = True) -> Tensor:
    """The ``[k, n]`` matrix whose row ``i`` is ∇_θ L_i over ``shared_params`` (flattened, in order).

    Works for any losses, rows shared or not. Uses one batched backward; falls back to ``k`` backward
    passes for graphs with operations that have no vmap batching rule.
    """
    losses = _as_loss_vector(task_losses)
    params = list(shared_params)
    k = losses.shape[0]
    try:
        eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True,
                                    retain_graph=retain_graph, allow_unused=True)
    except RuntimeError:
        per_task = [torch.autograd.grad(losses[i], params, retain_graph=retain_graph or i < k - 1, allow_unused=True)
                    for i in range(k)]
        grads = tuple(None if all(g[j] is None for g in per_task) else
                      torch.stack([torch.zeros_like(p) if g[j] is None else g[j] for g in per_task])
                      for j, p in enumerate(params))
    return _flatten(grads, params, k)


# ------------------------------------------------------------- the Jacobian of task-partitioned batches
def replicate_for_tasks(shared_params: Iterable[Tensor], num_tasks: int) -> list[Tensor]:
    """One replica per task of each shared parameter: ``[k, *shape]`` views of its (detached) values that
    require grad. Used in place of the parameters (:func:`task_linear`), their gradients are per task."""
    return [p.detach().unsqueeze(0).expand(num_tasks, *p.shape).requires_grad_() for p in shared_params]


class _TaskLinear(torch.autograd.Function):
    """``y = x Wᵀ + b`` on ``x [k, b, in]`` with per-task replicas ``W [k, out, in]``, ``b [k, out]`` of one
    shared layer. Forward: one matrix product over all rows (the replicas are equal). Backward: the
    input's gradient as usual, the weight's per task (``Σ_rows of task i δ xᵀ``, a batched product)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight[0], bias[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        grad_x = grad @ weight[0] if ctx.needs_input_grad[0] else None
        return grad_x, torch.bmm(grad.transpose(1, 2), x), grad.sum(1)


def task_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """A shared linear layer on a task-partitioned batch ``x [k, b, in]`` (row block ``i`` is task ``i``'s),
    given per-task replicas of its weight ``[k, out, in]`` and bias ``[k, out]`` (:func:`replicate_for_tasks`):
    the output is ``F.linear(x, W, b)``; the replicas' gradients are the per-task gradients.

    The replicas must be equal (views of one parameter): the forward reads replica 0 only.
    """
    if x.ndim != 3 or weight.ndim != 3 or bias.ndim != 2 or not x.shape[0] == weight.shape[0] == bias.shape[0]:
        raise ValueError(f"task_linear needs x [k, b, in], weight [k, out, in], bias [k, out]; got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}.")
    return _TaskLinear.apply(x, weight, bias)


def task_partitioned_gradients(task_losses: Tensor, replicas: Sequence[Tensor],
                               task_params: Sequence[Tensor] = ()) -> tuple[Tensor, list[Tensor]]:
    """One backward of ``Σ_i L_i`` for a task-partitioned batch: ``(jacobian, task_gradients)``.

    Args:
        task_losses: ``[k]``, computed with the shared layers applied through ``replicas`` (:func:`task_linear`).
        replicas: from :func:`replicate_for_tasks`; their per-task gradients, flattened in order, are the
            ``[k, n]`` Jacobian on the shared parameters.
        task_params: the task-specific parameters stacked over tasks (the heads, ``[k, ...]``): task ``i``'s
            slice of each gradient is ∇L_i on its own head, i.e. the gradient of ``Σ_i L_i``.

    Hand both to :func:`mtl_backward` (``jacobian=``, ``task_params=``, ``task_gradients=``).
    """
    losses = _as_loss_vector(task_losses)
    grads = torch.autograd.grad(losses.sum(), [*replicas, *task_params], allow_unused=True)
    jacobian = _flatten(grads[:len(replicas)], replicas, losses.shape[0])
    task_gradients = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[len(replicas):], task_params)]
    return jacobian, task_gradients


# ---------------------------------------------------------------------------------- the aggregated step
def _add_to_grad(params: Sequence[Tensor], gradients: Sequence[Tensor]) -> None:
    """``p.grad += g`` for each pair, as ``backward`` accumulates (``p.grad = g`` when there is none)."""
    for p, g in zip(params, gradients):
        g = g.detach()
        if p.grad is None:
            p.grad = g if g.is_contiguous() else g.contiguous()
        else:
            p.grad.add_(g)


def _split_like(flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """A flat ``[n]`` vector as views shaped like ``params``."""
    return [piece.view_as(p) for piece, p in zip(flat.split([p.numel() for p in params]), params)]


def _scaled_per_task(gradients: Sequence[Tensor], weights: Tensor) -> list[Tensor]:
    return [g * weights.to(g.dtype).view(-1, *[1] * (g.ndim - 1)) for g in gradients]


def mtl_backward(
    task_losses: Tensor | Sequence[Tensor],
    shared_params: Iterable[Tensor],
    aggregator: Aggregator,
    stats: TaskStats | None = None,
    jacobian: Tensor | None = None,
    *,
    task_params: Iterable[Tensor] | None = None,
    task_gradients: Sequence[Tensor] | None = None,
    scale_task_gradients: bool | None = None,
    max_norm: float | None = None,
) -> Tensor:
    """The aggregated step: weights from the aggregator, every gradient into ``.grad``; returns the ``[k]`` weights.

    * Shared parameters receive ``weights @ jacobian`` (added to ``.grad``, as ``backward`` adds). The
      Jacobian is built (:func:`task_jacobian`) only when not given and the method needs it; a method that
      only weights losses then takes one backward of ``Σ_i w_i L_i``, which gives the same direction.
    * Task-specific parameters (the heads) receive their task's own gradient: ``w_i ∇L_i`` for
      loss-weighting methods (``aggregator.loss_weighting``: LS, RLW, UW, DWA, FAMO, ...: what
      ``(weights * losses).sum().backward()`` gives), the unweighted ``∇L_i`` for gradient-weighting
      methods (PCGrad, Nash-MTL, PIVRG, ...); ``scale_task_gradients`` forces one or the other (the SAC
      agent: ``False``, each head follows its own task's gradient).

    Args:
        task_losses: ``[k]`` tensor (or sequence of ``k`` scalars) of per-task losses.
        shared_params: the parameters all tasks share.
        aggregator: from :func:`mtrl.aggregation.make`.
        stats: defaults to ``TaskStats(task_losses.detach())``.
        jacobian: a precomputed ``[k, n]`` Jacobian (:func:`task_partitioned_gradients`).
        task_params: the task-specific parameters. Without them (and without ``task_gradients``) every other
            leaf the losses reach gets its gradient from a backward whose share of the shared parameters is
            discarded.
        task_gradients: the gradients of ``task_params``, already computed (``[k, ...]``, task ``i``'s slice
            its own gradient: :func:`task_partitioned_gradients`); added in place of a backward.
        scale_task_gradients: scale each head's gradient by its task's weight; ``None`` follows
            ``aggregator.loss_weighting``.
        max_norm: clip the shared parameters' update direction ``weights @ jacobian`` to this norm (the
            MT10 code of Nash-MTL, FAMO, FairGrad and PIVRG clips it at 1.0); ``None``: no clipping. Only
            with a Jacobian (given, or needed by the method).
    """
    losses = _as_loss_vector(task_losses)
    shared = list(shared_params)
    stats = TaskStats(losses.detach()) if stats is None else stats
    if stats.losses.shape != losses.shape:
        raise ValueError(f"stats.losses has shape {tuple(stats.losses.shape)} but there are {losses.shape[0]} task losses.")
    scale = aggregator.loss_weighting if scale_task_gradients is None else scale_task_gradients
    heads = None if task_params is None else list(task_params)

    if jacobian is None and not aggregator.needs_jacobian and scale and task_gradients is None and max_norm is None:
        weights = aggregator(None, stats).detach()
        _weighted_backward(losses, weights, shared, heads)
        return weights
    if jacobian is None:
        jacobian = task_jacobian(losses, shared)
    weights = aggregator(jacobian if aggregator.needs_jacobian else None, stats).detach()
    if task_gradients is not None:
        if heads is None or len(heads) != len(task_gradients):
            raise ValueError(f"task_gradients needs task_params of the same length; got {len(task_gradients)} "
                             f"gradients and {'no' if heads is None else len(heads)} task_params.")
        for p, g in zip(heads, task_gradients):
            if g.shape != p.shape:
                raise ValueError(f"task_gradients: a gradient of shape {tuple(g.shape)} for a parameter of shape "
                                 f"{tuple(p.shape)}.")
        _add_to_grad(heads, _scaled_per_task(task_gradients, weights) if scale else task_gradients)
    else:
        _head_backward((weights * losses).sum() if scale else losses.sum(), shared, heads)
    direction = weights.to(jacobian.dtype) @ jacobian
    if max_norm is not None:   # a device-side scale, no host read
        direction = direction * (max_norm / (direction.norm() + 1e-6)).clamp(max=1.0)
    _add_to_grad(shared, _split_like(direction, shared))
    return weights


def _weighted_backward(losses: Tensor, weights: Tensor, shared: list[Tensor], heads: list[Tensor] | None) -> None:
    """One backward of ``Σ_i w_i L_i`` into the shared parameters and the heads (every leaf without ``heads``)."""
    objective = (weights * losses).sum()
    if not objective.requires_grad:
        raise ValueError("mtl_backward: the losses do not depend on any parameter that requires grad.")
    inputs = None if heads is None else [*shared, *(p for p in heads if p.requires_grad)]
    torch.autograd.backward(objective, inputs=inputs)


def _head_backward(objective: Tensor, shared: list[Tensor], heads: list[Tensor] | None) -> None:
    """The heads' gradients from ``objective``, leaving the shared parameters' ``.grad`` as it was."""
    if not objective.requires_grad:
        return
    if heads is not None:
        heads = [p for p in heads if p.requires_grad]
        if heads:
            torch.autograd.backward(objective, inputs=heads)
        return
    saved = [None if p.grad is None else p.grad.clone() for p in shared]
    objective.backward()
    for p, g in zip(shared, saved):
        p.grad = g
