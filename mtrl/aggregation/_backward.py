"""From per-task losses to ``.grad``: the per-task Jacobian and the aggregated backward pass.

Two ways to build the ``[k, n]`` task Jacobian on the shared parameters:

* :func:`task_jacobian` — generic: any losses, also when every sample feeds every task (supervised
  multi-task learning). One batched backward (``is_grads_batched``), or ``k`` backward passes where an
  operation has no batching rule. On 2-core CPUs the batched route costs about seven plain backwards.
* :func:`task_partitioned_jacobian` — when the batch is partitioned by task (task ``i``'s loss reads only
  its own rows, as in multi-task RL with stratified replay): ``torch.func.vmap`` over the task dimension
  turns the ``k`` per-task gradients into batched matrix products, about the cost of one backward.
  :func:`task_partitioned_gradients` also returns the heads' gradients from that pass.

:func:`mtl_backward` then writes the aggregated step into ``.grad``. Methods that need no Jacobian can
take it in one backward where the losses scale each task's share of the trunk's gradient
(:func:`scale_shared_gradient`, filled with the weights once they are known).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from mtrl.aggregation._base import Aggregator, TaskStats

__all__ = ["mtl_backward", "task_jacobian", "task_partitioned_jacobian", "task_partitioned_gradients",
           "PartitionedGradients", "scale_shared_gradient"]


def _as_loss_vector(task_losses: Tensor | Sequence[Tensor]) -> Tensor:
    losses = task_losses if isinstance(task_losses, Tensor) else torch.stack(list(task_losses))
    if losses.ndim != 1 or losses.numel() == 0:
        raise ValueError(f"task_losses must be k scalar losses (a [k] tensor), got shape {tuple(losses.shape)}.")
    return losses


def _flatten(tensors: Sequence[Tensor | None], like: Sequence[Tensor], k: int) -> Tensor:
    """Concatenate per-parameter ``[k, *shape]`` gradients into ``[k, n]`` (``None`` = unused = 0)."""
    rows = [
        torch.zeros(k, p.numel(), dtype=p.dtype, device=p.device) if g is None else g.reshape(k, -1)
        for g, p in zip(tensors, like)
    ]
    return torch.cat(rows, dim=1)


def task_jacobian(task_losses: Tensor | Sequence[Tensor], shared_params: Iterable[Tensor],
                  retain_graph: bool = True) -> Tensor:
    """The ``[k, n]`` matrix whose row ``i`` is ∇_θ L_i over ``shared_params`` (flattened, in order).

    Works for losses that share rows. Uses one batched backward; falls back to ``k`` backward passes
    for graphs with operations that have no vmap batching rule.
    """
    losses = _as_loss_vector(task_losses)
    params = list(shared_params)
    k = losses.shape[0]
    try:
        eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True,
                                    retain_graph=retain_graph, allow_unused=True)
    except RuntimeError:
        grads = None
    if grads is None:
        per_task = [torch.autograd.grad(losses[i], params, retain_graph=retain_graph or i < k - 1, allow_unused=True)
                    for i in range(k)]
        grads = [None if all(g[j] is None for g in per_task) else
                 torch.stack([torch.zeros_like(p) if g[j] is None else g[j] for g in per_task])
                 for j, p in enumerate(params)]
    return _flatten(grads, params, k)


def task_partitioned_jacobian(
    task_loss: Callable[..., Tensor],
    shared_params: Mapping[str, Tensor],
    *task_inputs: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-task losses and the ``[k, n]`` Jacobian when each task's loss reads only its own rows.

    Args:
        task_loss: ``task_loss(shared, *inputs_i) -> scalar``: the loss of one task, where ``shared``
            maps names to the shared parameters (use ``torch.func.functional_call`` for modules) and
            ``inputs_i`` are the ``i``-th slices of ``task_inputs``.
        shared_params: the shared parameters by name (``dict(trunk.named_parameters())``); the
            Jacobian's columns follow this order, flattened.
        task_inputs: tensors with a leading task dimension ``k`` — the task's rows (``[k, b, ...]``)
            and, for multi-head models, the stacked head parameters (``[k, ...]``).

    Returns:
        ``(losses, jacobian)``: ``losses`` is ``[k]`` and stays differentiable with respect to every
        tensor in ``task_inputs`` that requires grad (the heads), but *not* with respect to the shared
        parameters, whose gradient is the returned ``[k, n]`` ``jacobian``. Pass both to
        :func:`mtl_backward` (``jacobian=``) to finish the step. :func:`task_partitioned_gradients`
        also returns the heads' gradients from the same pass.
    """
    result = task_partitioned_gradients(task_loss, shared_params, *task_inputs)
    return result.losses, result.jacobian


class PartitionedGradients(NamedTuple):
    """What :func:`task_partitioned_gradients` returns."""

    losses: Tensor                 # [k]
    jacobian: Tensor               # [k, n] over the shared parameters
    task_gradients: list[Tensor]   # one per differentiated task input, shaped like it
    aux: Any                       # the task loss's auxiliary output, stacked over tasks (``has_aux``)


def task_partitioned_gradients(
    task_loss: Callable[..., Any],
    shared_params: Mapping[str, Tensor],
    *task_inputs: Tensor,
    task_grads: int = 0,
    has_aux: bool = False,
) -> PartitionedGradients:
    """:func:`task_partitioned_jacobian`, and from the same vmap'd pass the gradients of the heads and an
    auxiliary output.

    Args:
        task_loss, shared_params, task_inputs: as :func:`task_partitioned_jacobian`.
        task_grads: how many of the leading ``task_inputs`` (the heads) to differentiate. Task ``i``'s
            slice of each gradient is ∇L_i on its own slice, so the stacked gradient is the heads'
            ``.grad`` of ``losses.sum()``, without a second backward. ``losses`` is then no longer
            differentiable with respect to those inputs. Pass the gradients on as
            ``mtl_backward(..., task_params=heads, task_gradients=...)``.
        has_aux: ``task_loss`` returns ``(loss, aux)``; ``aux`` (tensors, not differentiated) comes
            back stacked over tasks, e.g. a statistic the caller needs from the same forward.
    """
    if not task_inputs:
        raise ValueError("task_partitioned_jacobian needs at least one input with a leading task dimension.")
    k = task_inputs[0].shape[0]
    for position, tensor in enumerate(task_inputs):
        if tensor.shape[0] != k:
            raise ValueError(
                f"task_inputs[{position}] has leading dimension {tensor.shape[0]}, expected k={k} (one slice per task)."
            )
    if not 0 <= task_grads <= len(task_inputs):
        raise ValueError(f"task_grads = {task_grads} should be between 0 and the {len(task_inputs)} task inputs.")
    detached = {name: p.detach() for name, p in shared_params.items()}
    inputs = [x.detach() if position < task_grads else x for position, x in enumerate(task_inputs)]
    in_dims = (None,) + (0,) * len(task_inputs)
    argnums = tuple(range(task_grads + 1))
    grads, value = vmap(grad_and_value(task_loss, argnums=argnums, has_aux=has_aux), in_dims=in_dims)(detached, *inputs)
    losses, aux = value if has_aux else (value, None)
    params = list(shared_params.values())
    jacobian = _flatten([grads[0][name] for name in shared_params], params, k)
    return PartitionedGradients(losses, jacobian, list(grads[1:]), aux)


def _accumulate(params: Sequence[Tensor], flat_gradient: Tensor) -> None:
    """Add a flat ``[n]`` gradient into ``.grad`` of ``params`` (as ``backward`` would)."""
    offset = 0
    for p in params:
        piece = flat_gradient[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        if p.grad is None:
            p.grad = piece.detach()   # a view of the fresh flat gradient: no copy
        else:
            p.grad.add_(piece.detach())


class _ScaleSharedGradient(torch.autograd.Function):
    """Identity forward; backward multiplies task ``i``'s rows of the gradient by ``scale[i]``. The scale
    is read at backward time (a plain attribute, not a saved tensor), so it may be filled after the forward."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, scale: Tensor) -> Tensor:
        ctx.scale = scale
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        scale = ctx.scale.to(grad.dtype).reshape(-1, *[1] * (grad.ndim - 1))
        return grad * scale, None


def scale_shared_gradient(features: Tensor, scale: Tensor | None) -> Tensor:
    """``features`` (``[k, ...]``, task ``i``'s rows first-indexed by ``i``), with the gradient that flows back
    through them scaled per task by ``scale`` (``[k]``; read at backward time, so it may be filled after the
    forward). Put between a shared trunk and per-task heads, with :func:`mtl_backward`'s
    ``shared_gradient_scale``, one backward of ``Σ_i L_i`` gives the heads ``∇L_i`` and the trunk
    ``Σ_i w_i ∇L_i``. ``None``: ``features`` unchanged."""
    return features if scale is None else _ScaleSharedGradient.apply(features, scale)


def _one_backward(losses: Tensor, shared: list[Tensor], task_params: Iterable[Tensor] | None, scale: Tensor,
                  weights: Tensor, scale_task_gradients: bool) -> None:
    """Every gradient from one backward: the graph scales the shared part per task (``scale`` ← weights);
    the heads get ``∇L_i``, or ``w_i ∇L_i`` when they are scaled too (then the trunk's scale is 1)."""
    if scale.shape != weights.shape:
        raise ValueError(f"shared_gradient_scale must be [k] = {tuple(weights.shape)}, got {tuple(scale.shape)}.")
    with torch.no_grad():
        if scale_task_gradients:
            scale.fill_(1.0)
        else:
            scale.copy_(weights)
    objective = (weights * losses).sum() if scale_task_gradients else losses.sum()
    if not objective.requires_grad:
        raise ValueError("shared_gradient_scale: the losses do not depend on any parameter that requires grad.")
    # Without task_params every leaf the losses reach gets its gradient, as with a plain backward.
    inputs = None if task_params is None else [*shared, *(p for p in task_params if p.requires_grad)]
    torch.autograd.backward(objective, inputs=inputs)


def _add_task_gradients(task_params: Iterable[Tensor] | None, gradients: Sequence[Tensor],
                        weights: Tensor | None) -> None:
    """Add precomputed per-task gradients (leading dimension ``k``) into ``.grad``, scaled per task by ``weights``."""
    params = None if task_params is None else list(task_params)
    if params is None or len(params) != len(gradients):
        raise ValueError(f"task_gradients needs task_params of the same length; got {len(gradients)} gradients "
                         f"and {'no' if params is None else len(params)} task_params.")
    for p, g in zip(params, gradients):
        if g.shape != p.shape:
            raise ValueError(f"task_gradients: a gradient of shape {tuple(g.shape)} for a parameter of shape {tuple(p.shape)}.")
        if weights is not None:
            g = g * weights.to(g.dtype).view(-1, *[1] * (g.ndim - 1))
        if p.grad is None:
            p.grad = g.detach() if g.is_contiguous() else g.detach().contiguous()
        else:
            p.grad.add_(g.detach())


def mtl_backward(
    task_losses: Tensor | Sequence[Tensor],
    shared_params: Iterable[Tensor],
    aggregator: Aggregator,
    stats: TaskStats | None = None,
    jacobian: Tensor | None = None,
    *,
    task_params: Iterable[Tensor] | None = None,
    task_gradients: Sequence[Tensor] | None = None,
    shared_gradient_scale: Tensor | None = None,
    scale_task_gradients: bool | None = None,
) -> Tensor:
    """Aggregate the per-task gradients on ``shared_params`` and write all gradients into ``.grad``.

    * Shared parameters receive ``weights @ jacobian`` (added to ``.grad``, as ``backward`` adds).
      The Jacobian is built only when ``aggregator.needs_jacobian``; otherwise one backward of
      ``Σ_i w_i L_i`` gives the same direction.
    * Every other parameter the losses reach (the task-specific heads) receives its task's own
      gradient. By default this follows the method's paper: loss-weighting methods
      (``aggregator.loss_weighting``: LS, RLW, UW, DWA, FAMO, ...) give head ``i`` the gradient
      ``w_i ∇L_i`` (what ``(weights * losses).sum().backward()`` gives), gradient-weighting methods
      (PCGrad, Nash-MTL, PIVRG, ...) give it the unweighted ∇L_i. ``scale_task_gradients`` forces
      one or the other (the SAC agent uses ``False``: each head follows its own task's gradient).

    Args:
        task_losses: ``[k]`` tensor (or sequence of ``k`` scalars) of per-task losses.
        shared_params: the parameters all tasks share.
        aggregator: from :func:`mtrl.aggregation.make`.
        stats: defaults to ``TaskStats(task_losses.detach())``.
        jacobian: a precomputed ``[k, n]`` Jacobian (e.g. from :func:`task_partitioned_jacobian`).
        task_params: the task-specific parameters, if known. Without them the heads' gradients come
            from a full backward pass whose contribution to the shared parameters is discarded, which
            costs one extra backward through the trunk.
        task_gradients: the gradients of ``task_params``, already computed (``[k, ...]``, task ``i``'s
            slice its own gradient: :func:`task_partitioned_gradients` with ``task_grads``). They are
            added to ``.grad`` (scaled by the weights where the method scales) in place of a backward.
        shared_gradient_scale: the ``[k]`` tensor that the losses' graph multiplies into the gradient
            flowing from task ``i`` to the shared parameters (:func:`scale_shared_gradient` between the
            trunk and the heads). Without a Jacobian, it is filled with the weights and one backward of
            ``Σ_i L_i`` gives every parameter its gradient: no second pass through the heads.
        scale_task_gradients: scale each head's gradient by its task's weight; ``None`` follows
            ``aggregator.loss_weighting``.

    Returns:
        The ``[k]`` weights (detached).
    """
    losses = _as_loss_vector(task_losses)
    shared = list(shared_params)
    if stats is None:
        stats = TaskStats(losses.detach())
    if stats.losses.shape != losses.shape:
        raise ValueError(f"stats.losses has shape {tuple(stats.losses.shape)} but there are {losses.shape[0]} task losses.")

    if aggregator.needs_jacobian and jacobian is None:
        jacobian = task_jacobian(losses, shared)
    weights = aggregator(jacobian if aggregator.needs_jacobian else None, stats).detach()
    if scale_task_gradients is None:
        scale_task_gradients = aggregator.loss_weighting
    if shared_gradient_scale is not None and jacobian is None:
        _one_backward(losses, shared, task_params, shared_gradient_scale, weights, scale_task_gradients)
        return weights

    if jacobian is not None:
        shared_gradient = weights.to(jacobian.dtype) @ jacobian
    else:
        grads = torch.autograd.grad((weights * losses).sum(), shared, retain_graph=True, allow_unused=True)
        shared_gradient = _flatten([None if g is None else g.unsqueeze(0) for g in grads], shared, 1)[0]

    if task_gradients is not None:
        _add_task_gradients(task_params, task_gradients, weights if scale_task_gradients else None)
        _accumulate(shared, shared_gradient)
        return weights
    head_objective = (weights * losses).sum() if scale_task_gradients else losses.sum()
    if head_objective.requires_grad:
        if task_params is not None:
            heads = [p for p in task_params if p.requires_grad]
            if heads:
                torch.autograd.backward(head_objective, inputs=heads)
        else:
            saved = [None if p.grad is None else p.grad.clone() for p in shared]
            head_objective.backward()
            for p, g in zip(shared, saved):
                p.grad = g
    _accumulate(shared, shared_gradient)
    return weights
