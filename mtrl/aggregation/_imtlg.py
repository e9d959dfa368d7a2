"""IMTL-G: impartial multi-task learning, gradient balance."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, register
from mtrl.aggregation._linalg import TINY, gramian, least_squares


@register("imtlg")
class IMTLG(Aggregator):
    """The combination ``g = Σ_i α_i g_i``, ``Σ_i α_i = 1``, with equal projections on all unit gradients.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, gradient balance (IMTL-G): find α with
    ``Σ_i α_i = 1`` such that ``gᵀu_1 = gᵀu_i`` for all ``i``, ``u_i = g_i / ‖g_i‖``. The paper's closed
    form is ``α_{2:k} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 − Σ α_{2:k}``, with ``D`` and ``U`` the rows
    ``g_1 − g_i`` and ``u_1 − u_i``.

    Computed here on the Gramian: with ``g = Σ_i β_i u_i`` (``β_i = α_i ‖g_i‖``) the conditions are the
    linear system ``C β = c 1``, ``Σ_i β_i / ‖g_i‖ = 1`` in ``(β, c)``, ``C_ij = ⟨u_i, u_j⟩`` the cosine
    matrix and ``c`` the common projection; it is solved by least squares (minimum-norm solution,
    :func:`~mtrl.aggregation._linalg.least_squares`, on the Jacobian's device in float64 without host
    reads) and accepted when its residual vanishes. This is the paper's system with ``α_1`` and the
    differences eliminated the other way, so it equals the closed form whenever that exists
    (tested), and extends it to duplicated or linearly dependent gradients. For linearly
    independent gradients it also equals torchjd's ``IMTLGWeighting`` (``K⁺ ‖g‖`` normalised), which
    differs where ``1`` is not in the range of ``C`` — e.g. ``g_2 = −g_1``, where the paper's closed
    form and this class give ``α = (½, ½)`` (common projection 0) and torchjd gives zeros. Working
    with the unit-diagonal ``C`` keeps the solve well scaled when gradient norms differ by many
    orders of magnitude. No options.

    .. note:: A zero gradient has no unit direction; it gets weight 0 and the condition is imposed on
       the others (all zero: ``1/k``); the zero rows are masked out of the system (identity rows), so its
       size stays ``k + 1``. If the system has no solution (no combination with ``Σ α = 1``
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
        K = gramian(jacobian)
        weights, solved = IMTLG.solve(K)
        self._count_fallback(~solved)
        return weights.to(dtype=jacobian.dtype)

    @staticmethod
    def solve(K: Tensor) -> tuple[Tensor, Tensor]:
        """IMTL-G weights from the Gramian (float64, any positive scale) and whether the system had a
        solution (0-dim bool tensor); without one the weights are ``1/k``."""
        k = K.shape[0]
        mean = torch.full((k,), 1.0 / k, dtype=K.dtype, device=K.device)
        squared_norms = torch.diagonal(K)
        active = squared_norms > TINY
        on = active.to(K.dtype)
        norms = torch.where(active, squared_norms, torch.ones_like(squared_norms)).sqrt()
        smallest = torch.where(active, norms, torch.full_like(norms, math.inf)).min()
        smallest = torch.where(active.any(), smallest, torch.ones_like(smallest))
        # Unknowns (β, c): C β − c 1 = 0 (equal projections c on every u_i), Σ_i β_i / ‖g_i‖ = 1, over
        # the nonzero rows; a zero row i keeps the identity row β_i = 0. The last row is multiplied by
        # min ‖g_i‖ (same solutions, better scaled).
        cosines = K / torch.outer(norms, norms) * torch.outer(on, on) + torch.diag(1.0 - on)
        top = torch.cat([cosines, -on[:, None]], dim=1)
        bottom = torch.cat([on * smallest / norms, torch.zeros(1, dtype=K.dtype, device=K.device)])[None, :]
        system = torch.cat([top, bottom], dim=0)
        rhs = torch.cat([torch.zeros(k, dtype=K.dtype, device=K.device), smallest[None]])
        solution = least_squares(system, rhs)
        residual = torch.linalg.vector_norm(system @ solution - rhs)
        alpha = solution[:k] / norms * on
        total = alpha.sum()
        solved = (torch.isfinite(solution).all()
                  & (residual <= 1e-8 * (smallest + torch.linalg.vector_norm(solution)))
                  & (total.abs() > 1e-12 * alpha.abs().sum()))
        weights = torch.where(solved, alpha / torch.where(solved, total, torch.ones_like(total)), mean)
        return torch.where(active.any(), weights, mean), solved | ~active.any()
