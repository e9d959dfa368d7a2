"""Dynamic Weight Average (DWA)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, check_int, check_positive, register
from mtrl.aggregation._linalg import as_state_tensor, lowered_floor


@register("dwa")
class DWA(Aggregator):
    """Loss weights from the recent rate of change of each task's loss.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019 (Dynamic Weight Average):

        ``w_i(t) = K exp(r_i(t−1)/T) / Σ_j exp(r_j(t−1)/T)``,  ``r_i(t−1) = L_i(t−1) / L_i(t−2)``,

    with ``L_i(t)`` the average training loss of epoch ``t``, ``T = 2``, and ``w = 1`` for the first two
    epochs (the authors' MTAN trainer). A task whose loss falls more slowly gets more weight.

    Steps instead of epochs: an aggregator is called once per training step, so ``L_i(t−1)`` and
    ``L_i(t−2)`` are the mean losses over the last ``window`` calls and the ``window`` calls before
    them, a sliding window that includes the current call — the step-based DWA of the Nash-MTL code
    (``DynamicWeightAverage``, ``iteration_window=25``). Until ``2 · window`` calls have been seen the
    weights are equal.

    Args:
        temperature: ``T``; default 2 (paper, MTAN and Nash-MTL code).
        window: calls per window; default 25 (Nash-MTL code).

    .. note:: Weights are ``softmax(r/T)``, summing to 1 (the LS mean scale), instead of the paper's
       ``K · softmax`` summing to ``K``; the Nash-MTL code also averages the weighted losses.
    .. note:: Unlike the Nash-MTL code (whose buffer starts filled with ones, so the first ratios
       compare real losses against 1), the weights stay equal until both windows hold real losses.
    .. note:: Negative or zero losses (e.g. SAC actor losses). The ratio needs positive losses, so
       both window means are taken above a per-task floor, ``r_i = (L̄_i^new − f_i)/(L̄_i^old − f_i)``:
       the floor starts at 0 (positive losses: the paper's ratio, unchanged) and, whenever a loss is
       at or below it, drops to ``L − (|L| + 1)``
       (:func:`~mtrl.aggregation._linalg.lowered_floor`), so every loss seen stays above it and
       the ratio is defined at every step: a task falling towards its lowest level has ``r < 1``, a
       stagnating one ``r ≈ 1``. Only a non-finite ratio (non-finite inputs under
       ``deferred_checks``) is replaced by 1 and counted in ``fallbacks``.
    .. note:: State (the last ``2 · window`` loss vectors, the floor and the call count, float64 on the
       device of the losses, updated in place: the ring position and the warm-up are chosen on the
       device, so the state can live in a CUDA graph) round-trips through ``state_dict``; a
       different number of tasks later is an error.
    """

    needs_jacobian = False
    loss_weighting = True
    _state_attributes = ("history", "calls", "loss_floor")
    _added_state_attributes = ("loss_floor",)

    def __init__(self, temperature: float = 2.0, window: int = 25) -> None:
        self.temperature = check_positive("temperature", temperature)
        self.window = check_int("window", window, 1)
        super().__init__()

    def _init_state(self) -> None:
        self.history: Tensor | None = None  # [2 * window, k] ring buffer, row = call % (2 * window)
        self.calls = 0
        self.loss_floor: Tensor | None = None  # [k], see the note on negative losses

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        k = stats.num_tasks
        size = 2 * self.window
        losses = stats.losses.detach().to(torch.float64)
        if self.history is not None and self.history.shape[1] != k:
            raise ValueError(f"dwa was set up for {self.history.shape[1]} tasks but got losses for {k} tasks.")
        self.history = as_state_tensor(self.history, losses, shape=(size, k))
        self.loss_floor = as_state_tensor(self.loss_floor, losses)
        self.calls = as_state_tensor(self.calls, losses)
        self.loss_floor.copy_(lowered_floor(self.loss_floor, losses))
        position = torch.remainder(self.calls, size).to(torch.int64)
        self.history.index_copy_(0, position.reshape(1), losses.reshape(1, k))
        self.calls += 1
        # The last 2·window calls, oldest first: the older window, then the recent one.
        ordered = self.history.index_select(0, torch.remainder(self.calls.to(torch.int64) + torch.arange(
            size, device=losses.device), size))
        previous = ordered[:self.window].mean(dim=0) - self.loss_floor
        ratio = (ordered[self.window:].mean(dim=0) - self.loss_floor) / previous
        bad = ~(torch.isfinite(ratio) & (previous > 0))
        ready = self.calls >= size  # until both windows hold real losses the weights are equal
        self._count_fallback(ready & bad.any())
        ratio = torch.where(bad, torch.ones_like(ratio), ratio)
        weights = torch.where(ready, torch.softmax(ratio / self.temperature, dim=0), 1.0 / k)
        return weights.to(dtype=stats.losses.dtype)
