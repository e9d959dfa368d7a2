"""Numerical routines shared by the Gramian-based aggregators and the learned loss weightings.

* :func:`gramian` — the ``[k, k]`` Gramian ``K ∝ J Jᵀ`` in float64 on the Jacobian's device.
* :func:`simplex_active_set` — the minimiser over the simplex of ``½ wᵀKw`` (MGDA's min-norm point) or of
  CAGrad's dual ``bᵀw + r ‖g_w‖``, by a primal active-set method whose face problems have closed forms.
* :func:`least_squares` — the minimum-norm least-squares solution of a small system (IMTL-G).
* :func:`adam_step_` — one in-place step of Adam on a small parameter vector the aggregator owns (UW, FAMO).
* :func:`lowered_floor` — the floor below which a loss-weighting method never sees a loss (UW, FAMO, DWA).

Every solver is written once, in torch on the input's device and in float64: a fixed maximum number of
iterations with every branch taken by a mask (``torch.where``), and small linear systems solved by
``torch.linalg.solve_ex`` (unchecked: a failed solve is masked like any other bad step). So a call reads
nothing back to the host, traces whole under ``torch.compile`` and can be captured in a CUDA graph. The
one place a loop looks at a value is :func:`may_stop`: on the CPU outside a trace, where reading a tensor
costs no device synchronisation, an iteration loop stops once its iterates have settled. Whether a solve
converged comes back as a 0-dim bool tensor, which the aggregator counts through ``_count_fallback``
without reading it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gramian", "scaled_gramian", "block_columns", "may_stop", "simplex_active_set", "min_norm_weights",
           "least_squares", "adam_step_", "as_state_tensor", "lowered_floor", "TINY"]

#: Squared norms at or below this (in the units of :func:`gramian`, where the largest entry of the
#: Jacobian is 1) are treated as exact zeros: such a row is a zero gradient.
TINY = 1e-300
#: Columns per block of a pass over a Jacobian: on the CPU a block that stays in cache; elsewhere up to
#: this many elements at once (128 MiB of float64).
_CPU_BLOCK_COLUMNS = 2**14
_BLOCK_ELEMENTS = 2**24
#: Frank-Wolfe duality gap (relative to the largest diagonal entry) below which a simplex solve counts
#: as converged. Rounding alone leaves ~1e-15.
GAP_TOLERANCE = 1e-10
#: Stand-in for "infinitely far" along an unbounded face of CAGrad's dual (see simplex_active_set).
_FAR = 1e12


def iteration_budget(k: int) -> int:
    """Active-set iterations for ``k`` tasks: one index enters per iteration, so ``2k + 10`` covers a
    support of any size with room for as many drops."""
    return 2 * k + 10


def may_stop(settled: Tensor) -> bool:
    """The early exit of an iteration loop: ``settled`` (a 0-dim bool tensor: further iterations would
    leave every iterate as it is), read only where reading is free — a CPU tensor outside
    ``torch.compile``'s tracing. Elsewhere ``False``: the loop runs its fixed count and gives the same
    result, since settled iterates stay put."""
    return settled.device.type == "cpu" and not torch.compiler.is_compiling() and bool(settled)


def block_columns(matrix: Tensor) -> int:
    """Columns per block of a pass over a ``[k, n]`` matrix: on the CPU a block that stays in cache,
    elsewhere up to 128 MiB at once."""
    k = matrix.shape[0]
    return _CPU_BLOCK_COLUMNS if matrix.device.type == "cpu" else max(1, _BLOCK_ELEMENTS // max(k, 1))


def gramian(jacobian: Tensor) -> Tensor:
    """``K = c · J Jᵀ`` in float64 for some ``c > 0``: a symmetric ``[k, k]`` tensor on ``J``'s device.

    Every caller is invariant to a positive rescaling of ``K``. The product is formed at the precision
    of the data:

    * float64 ``J`` (tests, small supervised models): ``J`` is divided by its largest absolute entry
      first (``c = 1/max|J|²``), block by block, so rows of magnitude 1e-8 next to rows of magnitude 1e8
      neither underflow nor overflow, nor do inputs far beyond that;
    * float32 (or lower) ``J`` (the SAC agent): ``J Jᵀ`` in float32, then cast (``c = 1``). The data carry
      float32 rounding already, and a float64 copy of a large Jacobian would cost two extra passes over
      it and a much slower product. Entries beyond ~1e17 (for ``n ~ 1e6``) would overflow float32: the
      weights are then not finite and the call falls back to the mean (counted).

    An all-zero ``J`` gives ``K = 0``.
    """
    return scaled_gramian(jacobian)[0]


def scaled_gramian(jacobian: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`gramian` and its scale ``s`` (``K = J Jᵀ / s²``): ``max|J|`` for float64 ``J`` (1 where ``J = 0``),
    1 for lower precisions. Callers that need the true row norms (the α-fair solver) read them from it."""
    matrix = jacobian.detach()
    k = matrix.shape[0]
    one = torch.ones((), dtype=torch.float64, device=matrix.device)
    if matrix.numel() == 0:
        return torch.zeros(k, k, dtype=torch.float64, device=matrix.device), one
    columns = block_columns(matrix)
    if matrix.dtype != torch.float64:
        matrix = matrix.float()
        product = torch.zeros(k, k, dtype=torch.float32, device=matrix.device)
        for start in range(0, matrix.shape[1], columns):
            block = matrix[:, start:start + columns]
            product.addmm_(block, block.T)
        return (0.5 * (product + product.T)).to(torch.float64), one
    scale = matrix.abs().max()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    product = torch.zeros(k, k, dtype=torch.float64, device=matrix.device)
    for start in range(0, matrix.shape[1], columns):
        block = matrix[:, start:start + columns] / scale
        product.addmm_(block, block.T)
    return 0.5 * (product + product.T), scale


def simplex_active_set(K: Tensor, b: Tensor | None = None, radius: Tensor | None = None,
                       iterations: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Minimise a convex function over the simplex by a primal active-set method (Lawson–Hanson style).

    Two problems, both with ``g_w = Σ_i w_i g_i`` and ``K`` their Gramian:

    * ``b = None``: ``F(w) = ½ wᵀKw`` — the min-norm point of the convex hull (MGDA);
    * otherwise ``F(w) = bᵀw + r ‖g_w‖`` with ``b = K m``, ``r = radius`` — CAGrad's dual.

    On a face (the support ``P`` fixed, ``1ᵀw = 1``) both have a closed-form minimiser: the stationary
    points of ``½ wᵀKw + t bᵀw`` on the face are ``a + t c`` (one SPD solve with two right-hand sides,
    :func:`_face_stationary_points`; ``a`` is the face's min-norm point). For MGDA ``b = 0``: ``z = a``. For CAGrad,
    ``r‖x‖ = min_t ‖x‖²/(2t) + r²t/2``, ``g_c = −`` the projection of ``g_0`` on the face's tangent
    space, so ``‖g_w(t)‖² = ‖g_a‖² + t²‖g_c‖²``, and ``‖g_w‖ = r t`` gives
    ``t = ‖g_a‖ / √(r² − ‖g_c‖²)``. When ``‖g_c‖ ≥ r`` the face has no minimiser (``F`` decreases
    along ``c`` without bound) and the method steps along ``c`` to the face's boundary.

    Each iteration either (the face minimiser ``z`` is feasible) moves to ``z`` and adds the index
    with the most negative reduced gradient, or steps from the current point toward ``z`` until a
    weight reaches 0 and drops it; every step descends ``F``. It starts from the best vertex and runs
    at most :func:`iteration_budget` iterations (:func:`_active_set_step`); once optimal it stays put
    (:func:`may_stop`). A point in the affine hull of the face (a duplicated or dependent row) has reduced
    gradient 0 and never enters, so the face systems stay non-singular.

    Returns:
        ``(w, t, converged)``: the weights (on the simplex), CAGrad's ``t = ‖g_w‖/r`` in the units of
        ``K`` normalised by its largest diagonal entry (1 for MGDA) and a 0-dim bool tensor: the
        Frank-Wolfe duality gap ``∇F(w)ᵀw − min_i ∇F(w)_i`` (an upper bound on ``F(w) − F*``) is at most
        ``1e-10`` relative. Works for any positive scale of ``K``.
    """
    k = K.shape[0]
    dtype, device = K.dtype, K.device
    index = torch.arange(k, device=device)
    eye = torch.eye(k, dtype=dtype, device=device)
    scale = torch.diagonal(K).max().clamp_min(TINY)
    K = K / scale  # largest diagonal entry 1; b scales along, r with √scale
    cagrad = b is not None
    if cagrad:
        b = b / scale
        radius = radius / scale.sqrt()
        r2 = radius.square()
        start = torch.argmin(b + radius * torch.diagonal(K).clamp_min(0.0).sqrt())
        b_largest = b.abs().max()
    else:
        r2 = b_largest = None
        start = torch.argmin(torch.diagonal(K))
    face = index == start
    w = face.to(dtype)
    shifted = K + 1.0   # K_PP + ρ 11ᵀ on a face (ρ = 1, see _face_stationary_points)
    for _ in range(iteration_budget(k) if iterations is None else iterations):
        w, face, settled = _active_set_step(K, shifted, eye, index, b, r2, b_largest, w, face)
        if may_stop(settled):
            break

    # Certificate: the Frank-Wolfe gap at the final point.
    Kw = K @ w
    if cagrad:
        t = (w @ Kw).clamp_min(0.0).sqrt() / radius
        gradient = b + Kw / t.clamp_min(TINY)
    else:
        t = torch.ones((), dtype=dtype, device=device)
        gradient = Kw
    gap = w @ gradient - gradient.min()
    converged = gap <= GAP_TOLERANCE * (1.0 + gradient.abs().max())
    return w, t, converged


def _active_set_step(K: Tensor, shifted: Tensor, eye: Tensor, index: Tensor, b: Tensor | None, r2: Tensor | None,
                     b_largest: Tensor | None, w: Tensor, face: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One iteration of :func:`simplex_active_set`: ``(w, face, settled)`` after it (every branch a mask).

    ``K`` normalised (largest diagonal entry 1), ``shifted = K + 1``; CAGrad's ``b``, ``r2 = r²`` in those
    units and ``b_largest = max|b|`` (``None`` for MGDA); ``settled``: nothing entered, left or failed, so
    further iterations repeat it.
    """
    a, c, lam_a, lam_c = _face_stationary_points(shifted, eye, b, face)
    if b is not None:
        room = r2 - (c @ K @ c).clamp_min(0.0)
        bounded = room > 1e-14 * r2
        t = torch.where(bounded, ((a @ K @ a).clamp_min(0.0) / torch.where(bounded, room, r2)).sqrt(), _FAR)
        z = a + t * c
        reduced = t * b + K @ z - (lam_a + t * lam_c)  # t-scaled reduced gradient: 0 on the face, < 0 where entering descends
        tolerance = 1e-12 * (1.0 + t * b_largest)
    else:
        z = a
        reduced = K @ z - lam_a
        tolerance = 1e-12
    feasible = ((z > 0) | ~face).all()   # (False for a failed solve: NaN > 0 is False)
    outside = torch.where(face, math.inf, reduced)
    enter = feasible & (outside.min() < -tolerance)
    # Infeasible z: step from w toward z until the first weight on the face reaches 0.
    ratios = torch.where(face & (z <= 0), w / (w - z).clamp_min(TINY), math.inf)
    step = ratios.min().clamp(max=1.0)
    stepped = torch.where(face, w + step * (z - w), 0.0)
    leave = face & ((ratios <= step) | (stepped <= 0))
    moved = torch.where(feasible, z, torch.where(leave, 0.0, stepped)).clamp_min(0.0)
    total = moved.sum()
    usable = torch.isfinite(total) & (total > 0)   # moved ≥ 0: a finite positive sum means finite entries
    w = torch.where(usable, moved / total, w)
    grown = face | (enter & (index == torch.argmin(outside)))
    face = torch.where(usable, torch.where(feasible, grown, face & ~leave), face)
    return w, face, usable & ~enter & feasible


def _face_stationary_points(shifted: Tensor, eye: Tensor, b: Tensor | None,
                            face: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """On the face ``P`` (``face`` its mask): ``a``, the face's min-norm point (``K_PP a = λ_a 1``,
    ``1ᵀa = 1``), and ``c``, the direction with ``K_PP c = −b_P + λ_c 1``, ``1ᵀc = 0``; zero off the face
    (``c`` and ``λ_c`` are ``None`` without ``b``).

    These are the solutions of the bordered system ``[[K_PP, −1], [1ᵀ, 0]]``, which is indefinite. With
    ``ρ = 1`` (``K`` is normalised to a largest diagonal entry of 1; ``shifted = K + ρ``), ``M = K_PP + ρ 11ᵀ``
    is positive definite exactly when that system is regular (``xᵀMx = xᵀKx + ρ(1ᵀx)²``, and the system is
    regular when ``K`` is definite on ``1ᵀx = 0``), so one SPD solve gives both: ``M y = 1``, ``M c₀ = −b``;
    then ``a = y / 1ᵀy``, ``λ_a = 1/1ᵀy − ρ``, ``c = c₀ − s y``, ``λ_c = −s`` with ``s = 1ᵀc₀ / 1ᵀy``.
    """
    on = face.to(shifted.dtype)
    system = torch.where(face[:, None] & face[None, :], shifted, eye)   # K_PP + ρ 11ᵀ, identity off P
    if b is None:
        y = torch.linalg.solve_ex(system, on).result * on   # unchecked: a failed solve is masked later
        total = y.sum()
        return y / total, None, 1.0 / total - 1.0, None
    solution = torch.linalg.solve_ex(system, torch.stack([on, -b * on], dim=1)).result * on[:, None]
    y, c0 = solution.unbind(1)
    total = y.sum()
    share = c0.sum() / total
    return y / total, c0 - share * y, 1.0 / total - 1.0, -share


def min_norm_weights(K: Tensor) -> tuple[Tensor, Tensor]:
    """Weights of the minimum-norm point of the convex hull of the gradients: ``min wᵀKw`` over the simplex.

    Solved by :func:`simplex_active_set`, exact up to rounding (each face's minimiser is a linear
    solve), robust to duplicated and linearly dependent rows (a point in the affine hull of the
    current face has reduced gradient 0 and never enters). All-zero ``K`` (every point has norm 0)
    gives ``1/k``.

    Returns:
        ``(w, converged)``, ``converged`` a 0-dim bool tensor (False: the iteration budget ran out; ``w``
        is still a point of the simplex, the best one found).
    """
    k = K.shape[0]
    mean = torch.full((k,), 1.0 / k, dtype=K.dtype, device=K.device)
    if k == 1:
        return torch.ones_like(mean), torch.ones((), dtype=torch.bool, device=K.device)
    zero = torch.diagonal(K).max() <= TINY
    w, _, converged = simplex_active_set(K)
    return torch.where(zero, mean, w), converged | zero


#: Terms of the iterated-Tikhonov series summed by doubling (2^this), and refinement steps after it.
_TIKHONOV_DOUBLINGS = 5
_REFINEMENTS = 2


def least_squares(system: Tensor, rhs: Tensor, ridge: float = 1e-8) -> Tensor:
    """The minimum-norm least-squares solution of ``system @ x ≈ rhs`` (float64, any rank), on the device.

    Iterated Tikhonov regularisation, ``x ← x + M (rhs − A x)`` from ``x = 0`` with
    ``M = (AᵀA + δI)⁻¹ Aᵀ`` (one solve of the small, symmetric positive definite regularised normal
    system): each iteration shrinks the error along a singular direction ``σ`` by ``δ/(σ² + δ)`` and never
    enters the null space, so it converges to the pseudo-inverse solution (``δ = 1e-8 · max diag(AᵀA)``:
    rounding along a null direction is amplified by at most 1e8·eps). Its first ``2^5 = 32`` iterates sum
    the series ``x = Σ_{i<32} Tⁱ M rhs``, ``T = I − M A``, formed by doubling (five products); two
    iterations with the residual evaluated on ``A`` itself follow, an iterative refinement that removes the
    rounding of ``M``. Directions with ``σ² ≥ δ`` end below 1e-10 of their error, those with
    ``σ² ≥ 100δ`` at rounding.
    """
    normal = system.T @ system   # AᵀA
    ridge_value = ridge * torch.diagonal(normal).max().clamp_min(TINY)
    eye = torch.eye(normal.shape[0], dtype=normal.dtype, device=normal.device)
    inverse = torch.linalg.solve_ex(normal + ridge_value * eye, system.T).result   # M, unchecked: no host read
    power = eye - inverse @ system   # T
    series = eye                     # Σ_{i < 2^j} Tⁱ
    for _ in range(_TIKHONOV_DOUBLINGS):
        series = series + power @ series
        power = power @ power
    x = series @ (inverse @ rhs)
    for _ in range(_REFINEMENTS):
        x = x + inverse @ (rhs - system @ x)
    return x


def adam_step_(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor, lr: float,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
               active: Tensor | None = None) -> None:
    """One step of ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, not AdamW), in place.

    The same arithmetic as the single-tensor path of ``torch.optim.Adam`` so that a method that owns
    its parameters (UW's log-variances, FAMO's logits) follows its authors' optimizer exactly. Like
    ``capturable`` Adam, the step count is a 0-dim float64 tensor on the device and every update is in
    place, so the state can live in a CUDA graph; ``active`` (0-dim bool) makes the whole step a no-op
    where it is False, without a host read.
    """
    beta1, beta2 = betas
    if weight_decay != 0:
        grad = grad + weight_decay * param
    new_step = step + 1
    new_avg = exp_avg.lerp(grad, 1 - beta1)
    new_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
    bias_correction1 = 1 - beta1 ** new_step
    bias_correction2 = 1 - beta2 ** new_step
    denom = new_avg_sq.sqrt() / bias_correction2.sqrt() + eps
    new_param = param - (lr / bias_correction1) * (new_avg / denom)
    if active is not None:
        new_step, new_avg, new_avg_sq, new_param = (torch.where(active, new, old) for new, old in (
            (new_step, step), (new_avg, exp_avg), (new_avg_sq, exp_avg_sq), (new_param, param)))
    step.copy_(new_step)
    exp_avg.copy_(new_avg)
    exp_avg_sq.copy_(new_avg_sq)
    param.copy_(new_param)


def as_state_tensor(value: Tensor | float | int | None, like: Tensor, fill: float = 0.0,
                    shape: tuple[int, ...] | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """A state entry as a ``dtype`` tensor on ``like``'s device: created (``fill``) when ``None``, converted
    from a number (checkpoints written when counters were host integers), moved when elsewhere."""
    if value is None:
        return torch.full(like.shape if shape is None else shape, fill, dtype=dtype, device=like.device)
    if not isinstance(value, Tensor):
        return torch.tensor(float(value), dtype=dtype, device=like.device)
    return value.to(device=like.device, dtype=dtype)


def lowered_floor(floor: Tensor, losses: Tensor) -> Tensor:
    """The floor after seeing ``losses``: where a loss is at or below its floor, the floor drops to
    ``L_i − (|L_i| + 1)``, elsewhere it stays (it never rises).

    UW, FAMO and DWA need positive ``L_i − floor_i`` (a log, a ratio, an inverse); for losses that can
    be negative or zero (SAC actor losses) this keeps them defined at every step instead of falling
    back. The headroom ``|L_i| + 1`` is one loss unit for small losses and proportional for large ones,
    so a task that just reached a new low does not get an exploding weight; positive losses above the
    initial floor never move it (the methods are then exactly their papers').
    """
    losses = losses.detach().to(floor)
    return torch.where(losses <= floor, losses - (losses.abs() + 1.0), floor)
