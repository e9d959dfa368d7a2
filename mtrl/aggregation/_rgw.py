"""Random Gradient Weighting (RGW)."""

from __future__ import annotations

from mtrl.aggregation._base import register
from mtrl.aggregation._rlw import RLW


@register("rgw")
class RGW(RLW):
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
    loss_weighting = False  # the one difference from RLW: heads take unweighted steps
