"""ExcessMTL: task weights from estimated excess risks, updated multiplicatively."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, check_int, check_positive, register
from mtrl.aggregation._linalg import as_state_tensor, block_columns

#: Largest exponent ``η_α · r_i`` applied in one update: beyond it the weights are saturated anyway
#: (e^700 ≈ 1e304) and a larger one would overflow.
MAX_EXPONENT = 700.0


@register("excessmtl")
class ExcessMTL(Aggregator):
    """ExcessMTL: ``α_i ← α_i exp(η_α Ê_i / Ê_i⁰)``, normalised, with Ê_i the estimated excess risk.

    He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024, Algorithm 1. For task i,
    with ``g_i`` its gradient on the shared parameters (a row of the Jacobian):

    * Eq. 7, diagonal empirical Fisher: ``H_i = diag(Σ_{τ≤t} g_i^(τ) g_i^(τ)ᵀ)^(1/2)``, i.e. the
      running sum of squared gradients ``S_i`` per shared parameter (AdaGrad's accumulator);
    * Eq. 6, excess risk: ``Ê_i = g_iᵀ H_i⁻¹ g_i = Σ_j g_ij² / √(S_ij + eps)``;
    * scale processing (Sec. 3.2, longer version App. C.1): divide by the initial excess risk
      ``Ê_i⁰``, the mean of ``Ê_i`` over the first ``max(1, warmup_steps)`` calls, during which the
      weights stay at ``1/k`` (no update), so that tasks with different losses compare;
    * Eq. 9, multiplicative (exponentiated-gradient) update on the simplex:
      ``α_i ← α_i exp(η_α Ê_i/Ê_i⁰) / Σ_j α_j exp(η_α Ê_j/Ê_j⁰)``, starting from ``α = 1/k``.

    The updated α weights the shared gradients at the same step (Algorithm 1). A task whose excess
    risk — its distance to its own attainable optimum — shrinks slowly gains weight; a task with
    label noise, whose loss stays high while its excess risk vanishes, does not.

    Args:
        robust_step_size: η_α (default 1e-2, the authors' code: ``--robust_step_size 1e-2``).
        warmup_steps: calls that only collect the excess risks for the baseline ``Ê⁰`` (App. C.1 uses
            3 epochs). Default 0, as in the authors' code, where the first call's excess risk is the
            baseline and that call does not update the weights (0 and 1 are the same).
        eps: added under the square root of the Fisher accumulator (default 1e-7, the authors' code).

    .. note:: Weights sum to 1 (the paper's simplex, Algorithm 1). The authors' code starts from
       ``1`` and renormalises to sum ``k``, i.e. a k-times larger shared gradient, and applies the
       weights to the losses, so heads get ``α_i ∇L_i``; Algorithm 1 updates the heads with the
       unweighted ``∇L_i``, which is what :func:`mtl_backward` does by default here.

    .. note:: Numerics. The update runs in log space in float64 with ``η_α Ê_i/Ê_i⁰`` capped at 700,
       and log-weights kept within 700 of the largest, so no weight overflows or becomes exactly 0.
       A task whose baseline excess risk is 0 (its gradient was exactly zero through the warm-up)
       takes its first non-zero excess risk as its baseline (relative excess risk 1 at that call)
       instead of dividing by zero; every call where a baseline is missing counts in ``fallbacks``.
       The accumulator ``S`` is ``[k, n]`` on the Jacobian's device, in its precision (float64 for
       float64 Jacobians, float32 otherwise, as ``torch.optim.Adagrad`` keeps its sum: ``4·k·n`` bytes
       for the SAC agent); everything else is float64.

    .. note:: Label noise. Which task the method down-weights depends on the problem, not only on
       the noise (README, "ExcessMTL under label noise"; the authors' rule gives the same weights on the
       same gradients, tests/aggregation/test_excessmtl.py). Ê_i/Ê_i⁰ stays large for a task whose
       gradients stay large relative to its first one: the noisy task's first gradient is small (most
       of its labels carry no signal), and its later ones stay large while its noisy training labels
       are being fitted and through their mini-batch variance, which ``Σ_j g_ij²/√S_ij`` counts too.
       So the clean task keeps the larger weight, as in the paper's Fig. 3 and 6, only while it is
       itself far from its optimum (a narrow shared trunk); once a wider trunk has fitted it, the
       noisy task gains the weight.

    .. note:: ``eps = 1e-7`` is absolute: with gradients far below √eps ≈ 3e-4 per parameter the
       estimate becomes ``‖g‖²/√eps`` rather than ``Σ_j |g_j|``; scale processing removes the task's
       scale but not this change of shape (as in the authors' code).
    """

    _state_attributes = ("calls", "squared_gradient_sum", "log_weights", "baseline_sum", "baseline")
    #: After the first call every state entry is a device tensor updated in place (the warm-up is a mask):
    #: the method can live in a CUDA graph (captured after warm-up calls).
    capturable = True

    def __init__(self, robust_step_size: float = 1e-2, warmup_steps: int = 0, eps: float = 1e-7) -> None:
        self.robust_step_size = check_positive("robust_step_size", robust_step_size)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.eps = check_positive("eps", eps)
        if math.isinf(robust_step_size) or math.isinf(eps):
            raise ValueError(f"Parameters `robust_step_size` and `eps` should be finite. "
                             f"Found `robust_step_size = {robust_step_size!r}`, `eps = {eps!r}`.")
        super().__init__()

    def _init_state(self) -> None:
        super()._init_state()
        self.calls = 0
        self.squared_gradient_sum: Tensor | None = None  # S, [k, n]
        self.log_weights: Tensor | None = None  # log α, [k], max 0
        self.baseline_sum: Tensor | None = None  # Σ of Ê over the warm-up, [k]
        self.baseline: Tensor | None = None  # Ê⁰, [k]

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        assert jacobian is not None
        gradients = jacobian.detach()
        # The [k, n] accumulator in the Jacobian's precision (as torch.optim.Adagrad's), the [k] state in float64.
        precision = torch.float64 if gradients.dtype == torch.float64 else torch.float32
        k, n = gradients.shape
        if self.squared_gradient_sum is not None and self.squared_gradient_sum.shape != (k, n):
            raise ValueError(
                f"{self.name} has accumulated statistics for a [{self.squared_gradient_sum.shape[0]}, "
                f"{self.squared_gradient_sum.shape[1]}] Jacobian but got [{k}, {n}]; call reset() to start over."
            )
        # State on the Jacobian's device, updated in place; the warm-up is chosen by mask (no host read).
        self.squared_gradient_sum = as_state_tensor(self.squared_gradient_sum, gradients, dtype=precision)
        self.log_weights = as_state_tensor(self.log_weights, gradients, shape=(k,))
        self.baseline_sum = as_state_tensor(self.baseline_sum, gradients, shape=(k,))
        self.baseline = as_state_tensor(self.baseline, gradients, shape=(k,))
        self.calls = as_state_tensor(self.calls, gradients)
        excess_risk = self._accumulate(gradients.to(precision))
        self.calls += 1

        warmup = max(1, self.warmup_steps)
        warming = self.calls <= warmup
        self.baseline_sum.add_(torch.where(warming, excess_risk, 0.0))
        self.baseline.copy_(torch.where(self.calls == warmup, self.baseline_sum / warmup, self.baseline))
        missing = ~warming & (self.baseline <= 0)
        self._count_fallback(missing.any())
        self.baseline.copy_(torch.where(missing, excess_risk, self.baseline))
        baseline = self.baseline
        relative = torch.where(baseline > 0, excess_risk / baseline.clamp_min(torch.finfo(torch.float64).tiny),
                               torch.zeros_like(excess_risk))
        exponent = (self.robust_step_size * relative).clamp(max=MAX_EXPONENT)  # Eq. 9, in log space
        log_weights = self.log_weights + exponent
        updated = (log_weights - log_weights.max()).clamp_min(-MAX_EXPONENT)
        self.log_weights.copy_(torch.where(warming, self.log_weights, updated))
        weights = torch.softmax(self.log_weights, dim=0)
        return weights.to(dtype=jacobian.dtype)

    def _accumulate(self, gradients: Tensor) -> Tensor:
        """``S += g²`` (Eq. 6, Adagrad's accumulator, in place) and ``Σ_j g_ij² / √(S_ij + eps)`` (Eq. 7), ``[k]``.

        On the CPU, column blocks that stay in cache (:func:`~mtrl.aggregation._linalg.block_columns`): each of
        the five passes over the ``k × n`` data then reads cache instead of memory. Elsewhere one block of up to
        128 MiB.
        """
        k, n = gradients.shape
        columns = block_columns(gradients)
        excess_risk = torch.zeros(k, dtype=torch.float64, device=gradients.device)
        for start in range(0, n, columns):
            block = gradients[:, start:start + columns]
            accumulator = self.squared_gradient_sum[:, start:start + columns]
            squared = block.square()
            accumulator.add_(squared)  # a view: updates S in place
            excess_risk += squared.div_(accumulator.add(self.eps).sqrt_()).sum(dim=1, dtype=torch.float64)
        return excess_risk

