"""Random Loss Weighting (RLW)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregation._base import (Aggregator, TaskStats, check_choice, check_seed, generator_on, register,
                                    seeded_generator)

#: Bernoulli rounds drawn at once; the first with a non-zero draw is used (all zero: 2^(−64 k)).
BERNOULLI_ROUNDS = 64

DISTRIBUTIONS = ("normal", "uniform", "dirichlet", "bernoulli", "c-bernoulli")


def sample_random_weights(k: int, distribution: str, generator: torch.Generator) -> Tensor:
    """One draw of ``k`` random weights on the simplex, ``E[w] = 1/k`` (RW paper Sec. 3, 5.4, App. B).

    normal / uniform: softmax of i.i.d. N(0, 1) / U(0, 1) samples; dirichlet: Dir(1, ..., 1);
    bernoulli: i.i.d. Bernoulli(1/2) normalised to sum 1, an all-zero draw drawn again (64 rounds are
    drawn at once and the first non-zero one is kept, so no host read decides); c-bernoulli: one task
    chosen uniformly gets weight 1. Float64, on the generator's device.
    """
    options = {"dtype": torch.float64, "generator": generator, "device": generator.device}
    if distribution == "normal":
        return torch.softmax(torch.randn(k, **options), dim=0)
    if distribution == "uniform":
        return torch.softmax(torch.rand(k, **options), dim=0)
    if distribution == "dirichlet":
        # Dir(1) = normalised i.i.d. Exp(1) draws; sampled from the generator for reproducibility.
        draws = -torch.log1p(-torch.rand(k, **options))
        return draws / draws.sum()
    if distribution == "bernoulli":
        draws = (torch.rand(BERNOULLI_ROUNDS, k, **options) < 0.5).to(torch.float64)
        totals = draws.sum(dim=1)
        first = torch.argmax((totals > 0).to(torch.int64))[None]  # the first non-zero round (0 if none)
        draw, total = draws.index_select(0, first)[0], totals.index_select(0, first)[0]
        return torch.where(total > 0, draw / total.clamp_min(1.0), torch.full_like(draw, 1.0 / k))
    choice = torch.randint(k, (1,), generator=generator, device=generator.device)
    return (torch.arange(k, device=generator.device) == choice).to(torch.float64)


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
    .. note:: The weights are drawn on the device of the losses (or the Jacobian): on a GPU from a
       generator there, seeded once from the CPU one (GPU and CPU runs then draw different weights);
       its state, with its device, is in ``state_dict``.
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
        like = jacobian if jacobian is not None else stats.losses
        self.generator = generator_on(self.generator, like.device)
        weights = sample_random_weights(stats.num_tasks, self.distribution, self.generator)
        return weights.to(dtype=like.dtype)
