"""FAMO: fast adaptive multitask optimization."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, check_positive, register
from mtrl.aggregation._linalg import adam_step_, as_state_tensor, lowered_floor

#: Added to ``L_i − m_i`` before the logarithm, as in the authors' code.
EPS = 1e-8


@register("famo")
class FAMO(Aggregator):
    """Balanced decrease of the log-losses, with task logits learned from the step's effect.

    Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023,
    Algorithm 1, as in the authors' ``famo.py`` (and their MT10 ``mtrl_files/famo.py``). Logits
    ``ξ ∈ R^k`` (initially 0), ``z = softmax(ξ)``, ``D_i = L_i − m_i + 1e-8`` (``m_i`` = ``min_losses``):

    * **update direction**: the shared parameters descend ``Σ_i z_i log D_i / c`` with
      ``c = Σ_j z_j / D_j`` held constant, i.e. along ``Σ_i (z_i / (c D_i)) ∇L_i``. The returned loss
      weights are therefore ``w_i = (z_i / D_i) / Σ_j (z_j / D_j)`` — the gradient of the authors'
      log-loss objective written as weights on the plain losses' gradients; they sum to 1 (the LS
      scale: with equal ``D_i`` they are ``z``, so ``1/k`` at the start). As in the authors' code the
      heads are scaled too (``loss_weighting = True``).
    * **logit update** (:meth:`after_step`, called after the optimizer step with the losses ``L'`` of
      the *same* batch re-evaluated): ``δ_i = log D_i − log D'_i``, the gradient of ``z`` with respect
      to ``ξ`` contracted with ``δ`` (``z ⊙ (δ − zᵀδ)``), and one Adam step on ``ξ`` with L2 weight decay
      ``γ``. A task whose loss fell faster (larger ``δ_i``) loses weight.

    Args:
        lr: Adam learning rate of ξ (``w_lr``); default 0.025 (``famo.py``, MT10 ``run.sh``).
        weight_decay: ``γ``, Adam's L2 weight decay on ξ; default 0.01 (``famo.py`` default and the
            authors' MT10 ``run.sh``: ``gamma=0.01``).
        min_losses: ``m``, a number or ``k`` numbers (the authors' ``set_min_losses``); default 0.

    .. note:: If :meth:`after_step` is never called the logits stay 0 and the method is the static
       log-loss weighting ``w_i ∝ 1/D_i`` (gradient of ``Σ_i log D_i`` normalised to sum 1): it still
       works, it just does not adapt. ``after_step`` uses the losses from the last call and then
       forgets them, so a second ``after_step`` without a new call does nothing (as does one before
       any call).
    .. note:: The authors' MT10 ``Agent`` signature defaults to ``gamma=1e-3`` and its yaml to
       ``w_lr=0.01``, but their MT10 launch script overrides both with 0.01 / 0.025, which are also the
       defaults of ``famo.py``; those are used here. QM9 used ``gamma=0.001``.
    .. note:: Losses at or below ``min_losses`` (e.g. SAC actor losses, which are usually negative).
       The method needs ``L_i > m_i``. Here ``m`` is a floor that starts at ``min_losses`` and, whenever
       a loss is at or below it, drops to ``L − (|L| + 1)``
       (:func:`~mtrl.aggregation._linalg.lowered_floor`), so ``D_i ≥ 1`` at that step and the log-losses
       stay defined at every step (as the authors' ``set_min_losses`` shifts them by a known lower
       bound); it never rises, and losses above ``min_losses`` never move it. :meth:`after_step`
       lowers it too, and compares both losses above the same floor. Nothing falls back.
    .. note:: The authors' ``famo.py`` also clips the shared gradient norm (``max_norm = 1``); that
       belongs to the training loop, not to the weights. Their MT10 agent applies FAMO to the critic
       losses only (the actor loss is a plain mean). The state (ξ, Adam moments, the last
       gaps, NaN once consumed, the floor, the Adam step count) is float64 on the device of the
       losses, updated in place without host reads (it can live in a CUDA graph), and round-trips
       through ``state_dict``.
    """

    needs_jacobian = False
    loss_weighting = True
    _state_attributes = ("logits", "exp_avg", "exp_avg_sq", "adam_steps", "last_gaps", "loss_floor")
    _added_state_attributes = ("loss_floor",)

    def __init__(self, lr: float = 0.025, weight_decay: float = 0.01,
                 min_losses: float | Sequence[float] = 0.0) -> None:
        self.lr = check_positive("lr", lr)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        values = [min_losses] if isinstance(min_losses, (int, float)) else min_losses
        try:
            valid = len(values) > 0 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
                for v in values)
        except TypeError:
            valid = False
        if not valid:
            raise ValueError(
                f"Parameter `min_losses` should be a finite number or a sequence of finite numbers. "
                f"Found `min_losses = {min_losses!r}`."
            )
        self.min_losses = min_losses
        super().__init__()

    def _init_state(self) -> None:
        self.logits: Tensor | None = None
        self.exp_avg: Tensor | None = None
        self.exp_avg_sq: Tensor | None = None
        self.adam_steps = 0
        self.last_gaps: Tensor | None = None  # D from the last call, consumed by after_step
        self.loss_floor: Tensor | None = None  # m, [k]: min_losses, lowered below losses that reach it

    def _lower_floor(self, losses: Tensor) -> Tensor:
        """Lower the floor below ``losses`` where they reach it (in place); returns the floor before that."""
        k = losses.shape[0]
        if self.loss_floor is None:
            minimum = torch.as_tensor(self.min_losses, dtype=torch.float64).flatten()
            if minimum.numel() not in (1, k):
                raise ValueError(f"famo has {minimum.numel()} min_losses but got losses for {k} tasks.")
            self.loss_floor = minimum.expand(k).clone()
        self.loss_floor = as_state_tensor(self.loss_floor, losses)
        before = self.loss_floor.clone()
        self.loss_floor.copy_(lowered_floor(before, losses))
        return before

    def _ensure_state(self, losses: Tensor) -> None:
        k = losses.shape[0]
        if self.logits is not None and self.logits.shape[0] != k:
            raise ValueError(f"famo was set up for {self.logits.shape[0]} tasks but got losses for {k} tasks.")
        self.logits = as_state_tensor(self.logits, losses)
        self.exp_avg = as_state_tensor(self.exp_avg, losses)
        self.exp_avg_sq = as_state_tensor(self.exp_avg_sq, losses)
        self.adam_steps = as_state_tensor(self.adam_steps, losses)
        self.last_gaps = as_state_tensor(self.last_gaps, losses, fill=math.nan)

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        losses = stats.losses.detach().to(torch.float64)
        self._lower_floor(losses)
        self._ensure_state(losses)
        gaps = losses - self.loss_floor + EPS
        self.last_gaps.copy_(gaps)
        ratio = torch.softmax(self.logits, dim=0) / gaps
        weights = ratio / ratio.sum()
        return weights.to(dtype=stats.losses.dtype)

    def after_step(self, stats: TaskStats) -> None:
        """Update the logits from the losses of the same batch after the optimizer step.

        A no-op unless a call's gaps are waiting (``last_gaps`` finite), decided on the device.
        """
        if self.last_gaps is None:
            return  # never called: no state yet
        self._validate(None, stats)
        losses = stats.losses.detach().to(torch.float64)
        self._ensure_state(losses)
        before = self._lower_floor(losses)
        pending = torch.isfinite(self.last_gaps).all()
        # Both losses above the same (possibly just lowered) floor.
        previous_gaps = torch.where(pending, self.last_gaps, 1.0) + (before - self.loss_floor)
        delta = previous_gaps.log() - (losses - self.loss_floor + EPS).log()
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - (z * delta).sum())  # vector-Jacobian product of softmax at ξ with δ
        adam_step_(self.logits, grad, self.exp_avg, self.exp_avg_sq, self.adam_steps, self.lr,
                   weight_decay=self.weight_decay, active=pending)
        self.last_gaps.fill_(math.nan)
