"""Train any PyTorch multi-task model through the aggregation layer: :class:`MultiTaskTrainer`.

The user brings a model whose parameters split into *shared* ones (a trunk every task reads) and
task-specific ones (heads), a function returning the ``k`` per-task losses of a batch, an aggregator
and an optimizer. :meth:`MultiTaskTrainer.step` then does exactly what the RL agent does with its
critic and actor losses: forward, per-task Jacobian on the shared parameters (the generic
:func:`mtrl.aggregation.task_jacobian`, since in supervised learning every sample feeds every task),
:func:`mtrl.aggregation.mtl_backward`, optimizer step, and the FAMO-style ``after_step`` hook.

Two ways to get the per-task gradients:

* ``wrt="parameters"`` (default): the ``[k, n]`` Jacobian over the shared parameters.
* ``wrt="representation"``: the ``[k, B·d]`` Jacobian of the losses with respect to the shared
  representation ``z`` (the trunk's output on the batch), as MGDA-UB does (Sener & Koltun 2018,
  Sec. 3.3). The aggregator computes its weights from that cheaper Jacobian; the trunk then receives
  the gradient of ``Σ_i w_i L_i`` through one backward pass. The loss function must then return
  ``(z, losses)`` with the losses computed *from* ``z``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mtrl.aggregation import Aggregator, TaskStats, make, mtl_backward, task_jacobian
from mtrl.metrics import performance_drop

__all__ = ["MultiTaskTrainer", "StepOutput", "build_aggregator", "overrides_after_step"]


class StepOutput(NamedTuple):
    """What :meth:`MultiTaskTrainer.step` returns: detached ``[k]`` tensors."""

    weights: Tensor
    losses: Tensor


def build_aggregator(aggregator: str | Aggregator | Mapping[str, Any], **options: Any) -> Aggregator:
    """An :class:`Aggregator` from a name (+ options), a ``{"name": ..., "options": {...}}`` mapping
    (the ``configs/agg/<name>.yaml`` layout), or an already built aggregator (returned as is)."""
    if isinstance(aggregator, Aggregator):
        if options:
            raise ValueError("Options can only be given together with an aggregator name, not with an Aggregator instance.")
        return aggregator
    if isinstance(aggregator, Mapping):
        name = aggregator.get("name")
        merged = {**dict(aggregator.get("options") or {}), **options}
        return make(name, **merged)
    return make(aggregator, **options)


def overrides_after_step(aggregator: Aggregator) -> bool:
    """True when the aggregator's class implements :meth:`Aggregator.after_step` (FAMO does)."""
    return aggregator.learns_from_steps


def _as_losses(value: Tensor | Sequence[Tensor]) -> Tensor:
    losses = value if isinstance(value, Tensor) else torch.stack([torch.as_tensor(v) for v in value])
    if losses.ndim != 1 or losses.numel() == 0:
        raise ValueError(f"The loss function must return k scalar losses (a [k] tensor); got shape {tuple(losses.shape)}.")
    return losses


class MultiTaskTrainer:
    """One call per batch trains a multi-task model with a gradient aggregator.

    Args:
        model: the ``nn.Module`` being trained (only used to find the task-specific parameters and for
            the default optimizer).
        loss_fn: ``loss_fn(batch)`` returns the ``[k]`` per-task losses (a tensor or a sequence of
            scalars) of the batch; with ``wrt="representation"`` it returns ``(z, losses)``, where ``z``
            is the shared representation and the losses are computed from it. It is called again
            under ``torch.no_grad()`` after the step when the aggregator has an ``after_step`` hook.
        aggregator: a name from :func:`mtrl.aggregation.available` (with ``aggregator_options``), a
            ``{"name", "options"}`` mapping, or an :class:`Aggregator`.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters, or a callable
            ``params -> Optimizer``; default ``Adam(model.parameters(), lr=1e-3)``.
        shared: the shared parameters (an iterable of parameters, or a module whose parameters are
            shared). Default: ``model.shared`` when the model has that attribute.
        wrt: ``"parameters"`` (Jacobian over the shared parameters) or ``"representation"`` (MGDA-UB
            style, see the module docstring).
        reference, higher_is_better: single-task (STL) reference metrics ``[k]`` and each metric's
            direction, used by :meth:`set_performance` to turn validation metrics into the Δm that
            PIVRG-style aggregators read (PIVRG paper Eq. 3).
        scale_task_gradients: passed to :func:`mtl_backward`; ``None`` follows the aggregator
            (loss-weighting methods scale the heads' gradients by the weights, gradient-weighting
            methods give each head its own task's unweighted gradient).
        max_grad_norm: clip the total gradient norm before the optimizer step (``None``: no clipping).
        aggregator_options: constructor options when ``aggregator`` is a name.

    Attributes:
        performance: the current ``[k]`` Δm (percent) handed to the aggregator, or ``None``.
        steps: number of completed steps.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any], Any],
        aggregator: str | Aggregator | Mapping[str, Any],
        optimizer: torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        *,
        shared: Iterable[nn.Parameter] | nn.Module | None = None,
        wrt: str = "parameters",
        reference: Sequence[float] | Tensor | None = None,
        higher_is_better: bool | Sequence[bool] = True,
        scale_task_gradients: bool | None = None,
        max_grad_norm: float | None = None,
        aggregator_options: Mapping[str, Any] | None = None,
    ) -> None:
        if wrt not in ("parameters", "representation"):
            raise ValueError(f"`wrt` should be 'parameters' or 'representation'. Found `wrt = {wrt!r}`.")
        self.model = model
        self.loss_fn = loss_fn
        self.aggregator = build_aggregator(aggregator, **dict(aggregator_options or {}))
        if shared is None:
            if not isinstance(getattr(model, "shared", None), nn.Module):
                raise ValueError("Say which parameters are shared: pass `shared=` (a module or parameters); "
                                 "the model has no `.shared` module to default to.")
            shared = model.shared
        shared_list = list(shared.parameters() if isinstance(shared, nn.Module) else shared)
        self.shared_params = [p for p in shared_list if p.requires_grad]
        if not self.shared_params:
            raise ValueError("No trainable shared parameters were given.")
        shared_ids = {id(p) for p in self.shared_params}
        self.task_params = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
        if optimizer is None:
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        elif not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = optimizer(model.parameters())
        self.optimizer = optimizer
        self.wrt = wrt
        self.reference = None if reference is None else torch.as_tensor(reference, dtype=torch.float64)
        self.higher_is_better = higher_is_better
        self.scale_task_gradients = scale_task_gradients
        self.max_grad_norm = max_grad_norm
        self.performance: Tensor | None = None
        self.steps = 0
        self._after_step = overrides_after_step(self.aggregator)

    # -------------------------------------------------------------------------------- performance
    def set_performance(self, metrics: Sequence[float] | Tensor | None = None, *, delta_m: Tensor | None = None) -> Tensor | None:
        """Update the Δm the aggregator sees from now on and return it.

        Either give per-task ``metrics`` (e.g. on a validation split; turned into Δm against
        ``reference`` with ``higher_is_better``, PIVRG paper Eq. 3) or a ready ``delta_m``.
        """
        if delta_m is None:
            if metrics is None:
                raise ValueError("Give `metrics` (with a `reference` set on the trainer) or `delta_m`.")
            if self.reference is None:
                raise ValueError("The trainer has no single-task `reference`; cannot compute Δm from metrics.")
            delta_m = performance_drop(torch.as_tensor(metrics, dtype=torch.float64), self.reference, self.higher_is_better)
        self.performance = torch.as_tensor(delta_m, dtype=torch.float64).detach()
        return self.performance

    def _stats(self, losses: Tensor) -> TaskStats:
        performance = None
        if self.performance is not None:
            performance = self.performance.to(dtype=losses.dtype, device=losses.device)
        return TaskStats(losses.detach(), performance=performance, step=self.steps)

    # -------------------------------------------------------------------------------------- step
    def _split(self, output: Any) -> tuple[Tensor | None, Tensor]:
        """``losses`` or ``(z, losses)`` -> ``(z or None, [k] losses)``.

        With ``wrt="parameters"`` a ``(z, losses)`` tuple is recognised by a ``z`` of at least two
        dimensions (``[B, d, ...]``; z is then ignored); anything else is read as the losses.
        """
        pair = isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], Tensor)
        if self.wrt == "representation":
            if not (pair and output[0].ndim >= 1):
                raise ValueError("With wrt='representation' the loss function must return (representation, losses).")
            return output[0], _as_losses(output[1])
        if pair and output[0].ndim >= 2:
            return output[0], _as_losses(output[1])
        return None, _as_losses(output)

    def step(self, batch: Any) -> StepOutput:
        """Forward, per-task gradients, aggregation, backward and optimizer step on one batch.

        Returns:
            ``StepOutput(weights, losses)``: the aggregator's ``[k]`` weights and the ``[k]`` losses
            before the step (both detached).
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        representation, losses = self._split(self.loss_fn(batch))
        stats = self._stats(losses)
        if self.wrt == "parameters":
            weights = mtl_backward(losses, self.shared_params, self.aggregator, stats,
                                   task_params=self.task_params, scale_task_gradients=self.scale_task_gradients)
        else:
            weights = self._representation_backward(representation, losses, stats)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.shared_params + self.task_params, self.max_grad_norm)
        self.optimizer.step()
        self.steps += 1
        if self._after_step:
            with torch.no_grad():
                _, new_losses = self._split(self.loss_fn(batch))
            self.aggregator.after_step(self._stats(new_losses))
        return StepOutput(weights.detach(), losses.detach())

    def _representation_backward(self, z: Tensor, losses: Tensor, stats: TaskStats) -> Tensor:
        """MGDA-UB style: weights from ∂L/∂z, then the trunk gets ∇_θ Σ w_i L_i in one backward."""
        if not z.requires_grad:
            raise ValueError("The representation does not require grad; is it computed from the shared parameters?")
        agg = self.aggregator
        jacobian = task_jacobian(losses, [z]) if agg.needs_jacobian else None
        weights = agg(jacobian, stats).detach()
        scale = agg.loss_weighting if self.scale_task_gradients is None else self.scale_task_gradients
        heads = [p for p in self.task_params]
        if heads:
            head_objective = (weights.to(losses.dtype) * losses).sum() if scale else losses.sum()
            head_grads = torch.autograd.grad(head_objective, heads, retain_graph=True, allow_unused=True)
        if jacobian is not None:
            z_grad = (weights.to(jacobian.dtype) @ jacobian).view_as(z)
        else:
            (z_grad,) = torch.autograd.grad((weights.to(losses.dtype) * losses).sum(), [z], retain_graph=True)
        torch.autograd.backward(z, grad_tensors=z_grad.detach(), inputs=self.shared_params)
        if heads:
            for p, g in zip(heads, head_grads):
                if g is not None:
                    p.grad = g.detach() if p.grad is None else p.grad + g.detach()
        return weights

    # ------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "aggregator": self.aggregator.state_dict(), "steps": self.steps,
                "performance": self.performance}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.steps = int(state["steps"])
        self.performance = state["performance"]
