"""PCGrad: projecting conflicting gradients."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregation._base import (Aggregator, TaskStats, check_choice, check_seed, generator_on, register,
                                    seeded_generator)
from mtrl.aggregation._linalg import TINY, gramian


@register("pcgrad")
class PCGrad(Aggregator):
    """Gradient surgery: remove from each task gradient its conflicting components, then combine.

    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Algorithm 1: for each task
    ``i``, start from ``g_i^PC = g_i`` and, for the other tasks ``j`` in a random order, if
    ``⟨g_i^PC, g_j⟩ < 0`` set ``g_i^PC ← g_i^PC − ⟨g_i^PC, g_j⟩ / ‖g_j‖² · g_j`` (projecting on the
    *original* ``g_j``, as the authors' code does). The update is ``Σ_i g_i^PC`` (paper, authors' code)
    or ``(1/k) Σ_i g_i^PC`` (``reduction="mean"``).

    Every ``g_i^PC`` is a linear combination of the rows of ``J``, ``g_i^PC = c^(i) @ J``, and the
    projection only needs inner products, so the method runs on the ``k × k`` Gramian ``K = J Jᵀ``:
    ``⟨g_i^PC, g_j⟩ = (K c^(i))_j`` and the projection is ``c^(i)_j −= (K c^(i))_j / K_jj``. The returned
    weights are ``w = (1/k) Σ_i c^(i)`` (or the sum), so ``w @ J`` is the PCGrad direction exactly.

    Args:
        reduction: ``"mean"`` (default) or ``"sum"`` of the projected gradients.
        seed: seeds the aggregator's own generator for the random projection orders (its state is in
            ``state_dict``); ``None`` draws a seed from torch's global generator.

    .. note:: Default ``reduction="mean"``, while the paper's Algorithm 1 and the authors' code sum
       the projected gradients: the mean is on the scale of LS (the mean of the task gradients),
       so methods compare at equal learning rates. ``"sum"`` gives the paper's update.
    .. note:: A fresh random order is drawn for every task ``i`` (``torch.randperm(k)``, skipping
       ``i``), as the paper's "``g_j`` in random order" and torchjd; the authors' TF code shuffles once
       per step for all tasks. The orders come from the aggregator's own generator, so with the same
       seed the weights equal torchjd's ``PCGradWeighting`` under ``torch.manual_seed(seed)`` (÷ k).
    .. note:: A zero gradient ``g_j`` (``K_jj = 0``) never conflicts and is skipped, where
       ``⟨g_i, g_j⟩ / ‖g_j‖²`` would be 0/0. The Gramian is computed in float64.
    .. note:: Device. The orders are drawn on the Jacobian's device (on a GPU from a generator there,
       seeded once from the CPU one, so GPU and CPU runs draw different orders), and the ``k``
       projections run for all tasks at once, one order position per step, with the conflict test
       as a mask: no host read.
    """

    _state_attributes = ("generator",)

    def __init__(self, reduction: str = "mean", seed: int | None = None) -> None:
        self.reduction = check_choice("reduction", reduction, ("mean", "sum"))
        self.seed = check_seed(seed)
        super().__init__()

    def _init_state(self) -> None:
        self.generator = seeded_generator(self.seed)

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        assert jacobian is not None
        K = gramian(jacobian)
        k = K.shape[0]
        self.generator = generator_on(self.generator, K.device)
        # Row i: task i's projection order (the same draws, in the same sequence, as one randperm per task).
        orders = torch.stack([torch.randperm(k, generator=self.generator, device=K.device) for _ in range(k)])
        weights = _projected_weights(K, orders, self.reduction == "mean")
        return weights.to(dtype=jacobian.dtype)


def _projected_weights(K: Tensor, orders: Tensor, mean: bool) -> Tensor:
    """The PCGrad weights from the Gramian and each task's projection order (row ``i`` of ``orders``): the
    ``k`` projections of all tasks at once, one order position per step.

    At position ``m`` task ``i`` projects on ``g_j``, ``j = orders[i, m]``: with ``c^(i)`` the coefficients of
    ``g_i^PC``, ``⟨g_i^PC, g_j⟩ = (K c^(i))_j``, and the projection subtracts ``min(⟨g_i^PC, g_j⟩, 0) / K_jj``
    from ``c^(i)_j`` (``j = i`` and zero rows ``K_jj = 0`` are skipped: their factor is 0)."""
    k = K.shape[0]
    diagonal = torch.diagonal(K)
    by_position = orders.T                                   # [position, task i] -> j
    rows_of_k = K[by_position]                               # [position, i, :]: row j of K (K symmetric)
    selected = diagonal[by_position]                         # K_jj
    skip = (by_position == torch.arange(k, device=K.device)) | (selected <= TINY)
    inverse = torch.where(skip, 0.0, 1.0 / torch.where(skip, 1.0, selected))
    one_hot = torch.nn.functional.one_hot(by_position, k).to(K.dtype)   # [position, i, j]
    current = torch.eye(k, dtype=K.dtype, device=K.device)  # row i: c^(i), g_i^PC = c^(i) @ J
    for position in range(k):
        inner = (current * rows_of_k[position]).sum(1)       # ⟨g_i^PC, g_j⟩ for every i
        current = current - (inner.clamp_max(0.0) * inverse[position])[:, None] * one_hot[position]
    weights = current.sum(dim=0)
    return weights / k if mean else weights
