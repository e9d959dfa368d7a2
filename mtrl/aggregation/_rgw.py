"""Random Gradient Weighting (RGW)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, check_choice, register
from mtrl.aggregation._rlw import DISTRIBUTIONS, sample_random_weights


@register("rgw")
class RGW(Aggregator):
    """Random Gradient Weighting: shared update ``Σ_i λ_i g_i`` with λ drawn afresh at every step.

    Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning", TMLR 2022, Sec. 3 and Algorithm 1 (RGW variant): ``θ' = θ − η Σ_t λ_t g_t`` with
    ``g_t = ∇_θ ℓ_t`` and λ = softmax(λ̃), λ̃ ~ N(0, I) by default (the paper's choice, Sec. 3),
    while each task-specific ``ψ_t`` takes its own unweighted step ``ψ'_t = ψ_t − η ∇_ψt ℓ_t``.
    The sampling is shared with :class:`~mtrl.aggregation.RLW`
    (:func:`~mtrl.aggregation._rlw.sample_random_weights`); ``E[λ_i] = 1/k`` for every distribution.

    Why ``needs_jacobian = False`` with ``loss_weighting = False`` is exactly the paper's update: the
    weights do not depend on the gradients, and on the shared parameters
    ``λ @ J = Σ_i λ_i ∇_θ ℓ_i = ∇_θ (Σ_i λ_i ℓ_i)`` by linearity, so :func:`mtl_backward` gets the
    paper's shared update from one backward pass of the weighted loss instead of ``k`` per-task
    gradients; ``loss_weighting = False`` then gives each head its own unweighted ``∇_ψt ℓ_t``, which
    is the one difference between RGW and RLW in Algorithm 1 (line 10). With a precomputed Jacobian
    (``mtl_backward(..., jacobian=J)``) the update is ``λ @ J``, the same.

    Args:
        distribution: sampling distribution (Sec. 5.4): ``normal`` (default), ``uniform``,
            ``dirichlet``, ``bernoulli``, ``c-bernoulli``.
        seed: seeds the aggregator's own generator (reproducible, independent of other random
            draws; its state is in ``state_dict``); ``None`` draws a seed from torch's global generator.

    .. note:: The paper also allows gradients with respect to the shared representation instead of
       θ; here the shared parameters are used (Algorithm 1).
    .. note:: Weights sum to 1 (mean-like scale, as LS), as in the paper.
    """

    needs_jacobian = False
    loss_weighting = False
    _state_attributes = ("generator",)

    def __init__(self, distribution: str = "normal", seed: int | None = None) -> None:
        self.distribution = check_choice("distribution", distribution, DISTRIBUTIONS)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Parameter `seed` should be an integer or None. Found `seed = {seed!r}`.")
        self.seed = seed
        super().__init__()

    def _init_state(self) -> None:
        self.generator = torch.Generator()
        seed = self.seed if self.seed is not None else int(torch.randint(2**62, (1,)))
        self.generator.manual_seed(seed)

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        weights = sample_random_weights(stats.num_tasks, self.distribution, self.generator)
        like = jacobian if jacobian is not None else stats.losses
        return weights.to(dtype=like.dtype, device=like.device)
