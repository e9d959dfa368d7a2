"""Nash-MTL: the Nash bargaining solution of the tasks' first-order improvements."""

from __future__ import annotations

from torch import Tensor

from mtrl.aggregation._alpha_fair import WarmStarted
from mtrl.aggregation._base import Aggregator, TaskStats, check_int, register


@register("nashmtl")
class NashMTL(WarmStarted, Aggregator):
    """Nash-MTL: weights ``α > 0`` with ``α_i (K α)_i = 1`` for every task, ``K = G Gᵀ``.

    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, Eq. 2 / Algorithm 1: the
    update ``d = αᵀG`` maximises ``Σ_i log(g_iᵀ d)`` in a ball, whose KKT condition is
    ``Gᵀ G α = 1/α`` (element-wise). Then ``g_iᵀ d = 1/α_i`` and ``‖d‖² = k``; the method is invariant
    to rescaling any one task's gradient (its weight scales inversely). Solved by the shared α-fair
    solver (:mod:`mtrl.aggregation._alpha_fair`, α = 1).

    Args:
        update_weights_every: recompute the weights every this many calls and reuse the last ones in
            between (default 1, as in the authors' code, ``update_weights_every=1``).

    .. note:: Solver. The authors solve a sequence of convex programs with cvxpy/ECOS (a
       concave-convex procedure, ``optim_niter=20``, stopped early at ``‖Kα − 1/α‖ < 1e-3``,
       warm-started from the previous step's α, on the Gramian divided by its Frobenius norm with the
       constraints ``α_i (Kα)_i ≥ 1`` stated on the raw Gramian). We solve the same equation
       ``α_i (Kα)_i = 1`` directly, by damped Newton in float64, to a relative residual of 1e-10
       (warm-started from the previous α like theirs, on the Jacobian's device without host reads),
       so our α is the exact solution the CCP approaches; the two
       agree to the CCP's tolerance (tests/aggregation/test_nashmtl.py checks this against cvxpy).
       cvxpy is not a runtime dependency.

    .. note:: Gradient clipping. The authors clip the shared parameters' gradient to norm
       ``max_norm = 1.0`` after the weighted backward; since ``‖αᵀG‖ = √k``, this makes every
       update of the shared parameters have norm 1 for ``k ≥ 2``. Here the aggregator returns the
       unclipped α (``‖weights @ jacobian‖ = √k``); clipping is the caller's job
       (``torch.nn.utils.clip_grad_norm_(shared_params, 1.0)`` after :func:`mtl_backward` reproduces
       the authors' update).

    .. note:: Task-specific parameters. The authors weight the losses, so head ``i`` receives
       ``α_i ∇L_i``; as a gradient-weighting method, :func:`mtl_backward` gives heads their
       unweighted gradient by default (``scale_task_gradients=True`` restores the authors' choice).

    .. note:: Degenerate inputs. ``α_i (Kα)_i = 1`` has no solution at a Pareto-stationary point
       (a zero row, opposite rows, more tasks than parameters): see :mod:`mtrl.aggregation._alpha_fair`
       for the fallbacks (zero rows get weight 0; otherwise the bounded least-squares point of the
       equation's residual, by a fixed budget of Gauss-Newton steps), each counted in ``fallbacks``.
       The authors keep the previous α when ECOS fails.
    """

    _state_attributes = ("calls", "last_weights")
    _added_state_attributes = ()

    def __init__(self, update_weights_every: int = 1) -> None:
        self.update_weights_every = check_int("update_weights_every", update_weights_every, 1)
        # The call counter is a host integer: only a method that solves every call can live in a CUDA graph.
        self.capturable = self.update_weights_every == 1
        super().__init__()

    def _init_state(self) -> None:
        super()._init_state()
        self.calls = 0

    def _utility_weights(self, stats: TaskStats) -> Tensor | None:
        """The weights of the tasks' log-utilities; ``None`` means all ones (plain Nash-MTL)."""
        return None

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        assert jacobian is not None
        k = jacobian.shape[0]
        reuse = (self.calls % self.update_weights_every != 0 and self.last_weights is not None
                 and self.last_weights.shape == (k,))
        self.calls += 1
        if reuse:
            return self.last_weights.to(dtype=jacobian.dtype, device=jacobian.device)
        return self._solve(jacobian, 1.0, self._utility_weights(stats)).to(dtype=jacobian.dtype)
