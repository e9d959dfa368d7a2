"""Random Loss Weighting (RLW)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, check_choice, check_seed, register, seeded_generator

DISTRIBUTIONS = ("normal", "uniform", "dirichlet", "bernoulli", "c-bernoulli")


def sample_random_weights(k: int, distribution: str, generator: torch.Generator) -> Tensor:
    """One draw of ``k`` random weights on the simplex, ``E[w] = 1/k`` (RW paper Sec. 3, 5.4, App. B).

    normal / uniform: softmax of i.i.d. N(0, 1) / U(0, 1) samples; dirichlet: Dir(1, ..., 1);
    bernoulli: i.i.d. Bernoulli(1/2) normalised to sum 1 (an all-zero draw is drawn again);
    c-bernoulli: one task chosen uniformly gets weight 1.
    """
    options = {"dtype": torch.float64, "generator": generator}
    if distribution == "normal":
        return torch.softmax(torch.randn(k, **options), dim=0)
    if distribution == "uniform":
        return torch.softmax(torch.rand(k, **options), dim=0)
    if distribution == "dirichlet":
        # Dir(1) = normalised i.i.d. Exp(1) draws; sampled from the generator for reproducibility.
        draws = -torch.log1p(-torch.rand(k, **options))
        return draws / draws.sum()
    if distribution == "bernoulli":
        while True:
            draws = (torch.rand(k, **options) < 0.5).to(torch.float64)
            if draws.sum() > 0:
                return draws / draws.sum()
    weights = torch.zeros(k, dtype=torch.float64)
    weights[torch.randint(k, (1,), generator=generator)] = 1.0
    return weights


@register("rlw")
class RLW(Aggregator):
    """Random Loss Weighting: minimise ``Σ_i λ_i L_i`` with λ drawn afresh at every step.

    Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning", TMLR 2022, Algorithm 1: λ = softmax(λ̃), λ̃ ~ N(0, I) by default. The weights also
    scale the task-specific parameters' gradients (``loss_weighting``), as in the paper. Needs no
    Jacobian.

    Args:
        distribution: the sampling distribution of Sec. 5.4, one of ``normal`` (default, as in the
            paper), ``uniform``, ``dirichlet``, ``bernoulli``, ``c-bernoulli``.
        seed: seeds the aggregator's own generator, so a run's weights are reproducible and
            independent of other random draws; ``None`` draws a seed from torch's global generator.

    .. note:: Weights sum to 1 (mean-like scale), ``E[w_i] = 1/k`` for every distribution.
    """

    needs_jacobian = False
    loss_weighting = True
    _state_attributes = ("generator",)

    def __init__(self, distribution: str = "normal", seed: int | None = None) -> None:
        self.distribution = check_choice("distribution", distribution, DISTRIBUTIONS)
        self.seed = check_seed(seed)
        super().__init__()

    def _init_state(self) -> None:
        self.generator = seeded_generator(self.seed)

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        weights = sample_random_weights(stats.num_tasks, self.distribution, self.generator)
        like = jacobian if jacobian is not None else stats.losses
        return weights.to(dtype=like.dtype, device=like.device)
