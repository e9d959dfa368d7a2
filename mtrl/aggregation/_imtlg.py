"""IMTL-G: impartial multi-task learning, gradient balance."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, register
from mtrl.aggregation._linalg import TINY, gramian


@register("imtlg")
class IMTLG(Aggregator):
    """The combination ``g = Σ_i α_i g_i``, ``Σ_i α_i = 1``, with equal projections on all unit gradients.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, gradient balance (IMTL-G): find α with
    ``Σ_i α_i = 1`` such that ``gᵀu_1 = gᵀu_i`` for all ``i``, ``u_i = g_i / ‖g_i‖``. The paper's closed
    form is ``α_{2:k} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 − Σ α_{2:k}``, with ``D`` and ``U`` the rows
    ``g_1 − g_i`` and ``u_1 − u_i``.

    Computed here on the Gramian: with ``g = Σ_i β_i u_i`` (``β_i = α_i ‖g_i‖``) the conditions are the
    linear system ``C β = c 1``, ``Σ_i β_i / ‖g_i‖ = 1`` in ``(β, c)``, ``C_ij = ⟨u_i, u_j⟩`` the cosine
    matrix and ``c`` the common projection; it is solved by least squares (minimum-norm solution)
    and accepted when its residual vanishes. This is the paper's system with ``α_1`` and the
    differences eliminated the other way, so it equals the closed form whenever that exists
    (tested), and extends it to duplicated or linearly dependent gradients. For linearly
    independent gradients it also equals torchjd's ``IMTLGWeighting`` (``K⁺ ‖g‖`` normalised), which
    differs where ``1`` is not in the range of ``C`` — e.g. ``g_2 = −g_1``, where the paper's closed
    form and this class give ``α = (½, ½)`` (common projection 0) and torchjd gives zeros. Working
    with the unit-diagonal ``C`` keeps the solve well scaled when gradient norms differ by many
    orders of magnitude. No options.

    .. note:: A zero gradient has no unit direction; it gets weight 0 and the condition is imposed on
       the others (all zero: ``1/k``). If the system has no solution (no combination with ``Σ α = 1``
       has equal projections; the paper's inverse does not exist) the weights fall back to ``1/k``,
       counted in ``fallbacks`` (the Nash-MTL code adds ``1e-8 I`` to ``D Uᵀ`` before inverting).
       With linearly dependent gradients (e.g. more tasks than independent directions) the
       conditions can often only be met with a common projection 0, i.e. ``g = 0``: that is the
       method's answer, not a failure.
    .. note:: Head gradients stay unweighted (``loss_weighting = False``, IMTL-G alone); the paper's
       hybrid IMTL also scales the losses (IMTL-L), which is not part of this method.
    """

    def __init__(self) -> None:
        super().__init__()

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        assert jacobian is not None
        weights = self.solve(gramian(jacobian))
        if weights is None:
            self._count_fallback(True)
            weights = np.full(jacobian.shape[0], 1.0 / jacobian.shape[0])
        return torch.from_numpy(weights).to(dtype=jacobian.dtype, device=jacobian.device)

    @staticmethod
    def solve(K: np.ndarray) -> np.ndarray | None:
        """IMTL-G weights from the Gramian (float64, any positive scale); ``None`` when undefined."""
        k = K.shape[0]
        squared_norms = np.diag(K)
        active = squared_norms > TINY
        m = int(active.sum())
        if m == 0:
            return np.full(k, 1.0 / k)
        norms = np.sqrt(squared_norms[active])
        # Unknowns (β, c): C β − c 1 = 0 (equal projections c on every u_i), Σ_i β_i / ‖g_i‖ = 1.
        # The last row is multiplied by min ‖g_i‖ (same solutions, better scaled).
        system = np.zeros((m + 1, m + 1))
        system[:m, :m] = K[np.ix_(active, active)] / np.outer(norms, norms)
        system[:m, m] = -1.0
        system[m, :m] = norms.min() / norms
        rhs = np.zeros(m + 1)
        rhs[m] = norms.min()
        solution = np.linalg.lstsq(system, rhs, rcond=None)[0]
        residual = np.linalg.norm(system @ solution - rhs)
        alpha = solution[:m] / norms
        total = float(alpha.sum())
        if not (np.isfinite(solution).all() and residual <= 1e-8 * (norms.min() + np.linalg.norm(solution))
                and abs(total) > 1e-12 * float(np.abs(alpha).sum())):
            return None
        weights = np.zeros(k)
        weights[active] = alpha / total
        return weights
