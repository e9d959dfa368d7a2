"""Linear scalarisation with equal weights (the multi-task baseline)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, register


@register("ls")
class LS(Aggregator):
    """Equal weights ``w_i = 1/k``: the update is the mean of the task gradients.

    The mean of the losses, ``(1/k) Σ_i L_i``, is what multi-task RL codebases (mtrl, Meta-World+)
    minimise as their "MT-SAC" baseline. Needs no Jacobian.

    .. note:: The mean, not the sum, so that step sizes do not grow with the number of tasks;
       with Adam the two differ only through ``eps``.
    """

    needs_jacobian = False
    loss_weighting = True

    def __init__(self) -> None:
        super().__init__()

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        k = stats.num_tasks
        return torch.full((k,), 1.0 / k, dtype=stats.losses.dtype, device=stats.losses.device)
