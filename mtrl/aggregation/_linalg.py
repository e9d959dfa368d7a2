"""Numerical routines shared by the Gramian-based aggregators and the learned loss weightings.

* :func:`gramian` — the ``[k, k]`` Gramian ``K ∝ J Jᵀ`` in float64 on the Jacobian's device.
* :func:`simplex_active_set` — the minimiser over the simplex of ``½ wᵀKw`` (MGDA's min-norm point) or of
  CAGrad's dual ``bᵀw + r ‖g_w‖``, by a primal active-set method whose face problems have closed forms.
* :func:`least_squares` — the minimum-norm least-squares solution of a small system (IMTL-G).
* :func:`adam_step_` — one in-place step of Adam on a small parameter vector the aggregator owns (UW, FAMO).
* :func:`lowered_floor` — the floor below which a loss-weighting method never sees a loss (UW, FAMO, DWA).

Every solver is written in torch on the input's device, in float64, with a fixed number of iterations
and every branch taken by a mask (``torch.where``), so a call reads nothing back to the host and can
be captured in a CUDA graph; on the CPU it is the CPU path. Whether a solve converged comes back as a
0-dim bool tensor, which the aggregator counts through ``_count_fallback`` without reading it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from mtrl.aggregation import _gauss_jordan

log = logging.getLogger(__name__)

__all__ = ["gramian", "scaled_gramian", "block_columns", "early_exit", "fused", "matvec", "dot", "solve_spd", "simplex_active_set",
           "min_norm_weights", "least_squares", "adam_step_", "as_state_tensor", "lowered_floor", "TINY"]

#: Squared norms at or below this (in the units of :func:`gramian`, where the largest entry of the
#: Jacobian is 1) are treated as exact zeros: such a row is a zero gradient.
TINY = 1e-300
_BLOCK_ELEMENTS = 2**24
_CPU_BLOCK_COLUMNS = 2**14
#: Frank-Wolfe duality gap (relative to the largest diagonal entry) below which a simplex solve counts
#: as converged. Rounding alone leaves ~1e-15.
GAP_TOLERANCE = 1e-10
#: Stand-in for "infinitely far" along an unbounded face of CAGrad's dual (see simplex_active_set).
_FAR = 1e12


def iteration_budget(k: int) -> int:
    """Active-set iterations for ``k`` tasks: one index enters per iteration, so ``2k + 10`` covers a
    support of any size with room for as many drops."""
    return 2 * k + 10


def block_columns(matrix: Tensor) -> int:
    """Columns per block of a pass over a ``[k, n]`` matrix: on the CPU 16,384 (the block stays in cache:
    1.7x faster for the Gramian of a 10 × 684,800 Jacobian here, 4x for ExcessMTL's accumulator), elsewhere
    up to 128 MiB at once."""
    k = matrix.shape[0]
    return _CPU_BLOCK_COLUMNS if matrix.device.type == "cpu" else max(1, _BLOCK_ELEMENTS // max(k, 1))


def gramian(jacobian: Tensor) -> Tensor:
    """``K = c · J Jᵀ`` in float64 for some ``c > 0``: a symmetric ``[k, k]`` tensor on ``J``'s device.

    Every caller is invariant to a positive rescaling of ``K``. The product is formed at the precision
    of the data:

    * float64 ``J`` (tests, small supervised models): ``J`` is divided by its largest absolute entry
      first (``c = 1/max|J|²``), block by block, so rows of magnitude 1e-8 next to
      rows of magnitude 1e8 neither underflow nor overflow, nor do inputs far beyond that;
    * float32 (or lower) ``J`` (the SAC agent): ``J Jᵀ`` in float32, then cast (``c = 1``). The data
      carry float32 rounding already; a float64 copy of a 10 × 684,800 critic Jacobian costs two extra
      passes over it and a float64 product, about 9× the float32 product on the CPU here. Entries
      beyond ~1e17 (for ``n ~ 1e6``) would overflow float32: the weights are then not finite and the
      call falls back to the mean (counted).

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


#: On a CPU tensor, stop the active-set loop once it has settled (a read of a CPU tensor, which is no
#: device synchronisation); on any other device the loop always runs its fixed count (capturable).
#: Tests set it to False to run the device path on the CPU.
EARLY_EXIT_ON_CPU = True


def early_exit(device: torch.device) -> bool:
    """Whether an iterative solver may stop once settled: on the CPU, where reading a value costs nothing,
    unless traced by torch.compile (a read would break the graph)."""
    return EARLY_EXIT_ON_CPU and device.type == "cpu" and not torch.compiler.is_compiling()


# -------------------------------------------------------------------- fusing solver iterations on a GPU
#: Device types whose solver stages run through ``torch.compile``, and its backend. A solver iteration is
#: ~50-110 tiny operations eagerly; on a GPU each is a launch (~2 µs, in a CUDA graph too), so the
#: iterations of a solve cost milliseconds. Inductor fuses an iteration into a handful of kernels
#: (``python -m mtrl.bench launches`` counts them: an α-fair iteration pair is 12 launches, its two k×k
#: systems included, solved as one batch in one Triton launch). On the CPU the launches cost little and inductor's C++ build
#: minutes: the stages run as written. Tests put "cpu" here with the ``aot_eager`` backend to check that the
#: functions trace whole and give the same numbers.
FUSE_ON_DEVICES: tuple[str, ...] = ("cuda",)
FUSE_BACKEND = "inductor"
_FUSED: dict[tuple[Any, str], Any] = {}
_FUSE_FAILED: list[str] = []


def fused(function: Any, device: torch.device) -> Any:
    """``function`` itself, or (on ``FUSE_ON_DEVICES``) its ``torch.compile``d version, made once.

    ``function`` is a pure function of tensors (and constants) that reads nothing back to the host. The
    compiled version is the same arithmetic; if compiling fails, every stage runs eagerly from then on and
    the log says why once.
    """
    if device.type not in FUSE_ON_DEVICES or _FUSE_FAILED or torch.compiler.is_compiling():
        return function   # (inside an outer torch.compile, which fuses the plain function itself)
    key = (function, FUSE_BACKEND)
    if key not in _FUSED:
        compiled = torch.compile(function, backend=FUSE_BACKEND, fullgraph=True, dynamic=False)

        def call(*args: Any) -> Any:
            if _FUSE_FAILED:
                return function(*args)
            try:
                return compiled(*args)
            except Exception as error:  # noqa: BLE001 - e.g. no Triton: eager arithmetic is the same
                _FUSE_FAILED.append(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
                log.warning("solvers: torch.compile of their iterations failed (%s); they run eagerly.",
                            _FUSE_FAILED[0])
                return function(*args)

        _FUSED[key] = call
    return _FUSED[key]


def matvec(matrix: Tensor, v: Tensor) -> Tensor:
    """``matrix @ v`` over the last axis of ``v`` (``[..., k]``), for the solvers' small matrices.

    Traced by ``torch.compile`` it is written as a product and a sum: a matmul is a library call (cuBLAS,
    MKL) that inductor cannot fuse, and it splits an iteration into several kernels around it. Written
    this way, an α-fair iteration compiles to one kernel on the CPU (k = 10; 3 kernels and 2 matmuls with
    ``@``). Eagerly, ``@`` is one operation instead of two.
    """
    if torch.compiler.is_compiling():
        return (matrix * v[..., None, :]).sum(-1)
    return v @ matrix.transpose(-1, -2)


def dot(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for vectors; traced, a product and a sum (fused, where a library dot is a launch of its own)."""
    return (a * b).sum(-1) if torch.compiler.is_compiling() else a @ b


#: Largest size that :func:`solve_spd` unrolls under ``torch.compile`` off CUDA: the elimination's ``k`` steps
#: become ``k`` dependent element-wise stages; beyond this a library solve is the better trade (and compiles faster).
UNROLLED_SOLVE_MAX_K = 16


def _solve_in_one_launch(matrix: Tensor) -> bool:
    """Whether :func:`solve_spd` takes the Triton kernel: CUDA, at most ``MAX_K`` unknowns, Triton installed.
    (``python -m mtrl.bench launches`` answers yes to count a GPU's launches on the CPU.)"""
    return matrix.is_cuda and matrix.shape[-1] <= _gauss_jordan.MAX_K and _gauss_jordan.HAVE_TRITON


def solve_spd(matrix: Tensor, rhs: Tensor) -> Tensor:
    """``x`` with ``matrix @ x = rhs`` for a small symmetric positive definite ``[k, k]`` matrix and a ``[k]``
    right-hand side (or ``[k, m]``: ``m`` of them). Unchecked: for a singular matrix the result may be non-finite or meaningless, and the
    callers mask bad steps.

    * CUDA (``k ≤ _gauss_jordan.MAX_K``, Triton installed): Gauss-Jordan elimination in one Triton launch
      (``torch.ops.mtrl.spd_solve``), eagerly and traced alike; a cuSOLVER solve is several launches.
    * Traced by ``torch.compile`` elsewhere (``k ≤ UNROLLED_SOLVE_MAX_K``): the same elimination as
      element-wise operations (:func:`~._gauss_jordan.gauss_jordan`), which inductor fuses with the rest of a
      solver iteration, where a library call would split it. On the CPU (inductor, k = 2) this made a
      compiled α-fair solve 2.6× faster (762 → 291 µs).
    * Otherwise ``torch.linalg.solve_ex`` (LAPACK).

    Elimination without pivoting is stable for SPD matrices, as Cholesky is; all forms agree to rounding.
    """
    k = matrix.shape[-1]
    if _solve_in_one_launch(matrix):
        return torch.ops.mtrl.spd_solve(matrix, rhs)
    if torch.compiler.is_compiling() and k <= UNROLLED_SOLVE_MAX_K:
        return _gauss_jordan.gauss_jordan(matrix, rhs)
    return torch.linalg.solve_ex(matrix, rhs).result


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
    :func:`iteration_budget` iterations (:func:`_active_set_step`, fused on CUDA, :func:`fused`); once optimal it
    stays put (on the CPU it stops there, see ``EARLY_EXIT_ON_CPU``). A point in the affine hull of the face
    (a duplicated or dependent row) has reduced gradient 0 and never enters, so the face systems stay
    non-singular.

    Returns:
        ``(w, t, converged)``: the weights (on the simplex), CAGrad's ``t = ‖g_w‖/r`` in the units of
        ``K`` normalised by its largest diagonal entry (1 for MGDA) and a 0-dim bool tensor: the
        Frank-Wolfe duality gap ``∇F(w)ᵀw − min_i ∇F(w)_i`` (an upper bound on ``F(w) − F*``) is at most
        ``1e-10`` relative. Works for any positive scale of ``K``.
    """
    k = K.shape[0]
    dtype, device = K.dtype, K.device
    index = torch.arange(k, device=device)
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
        b = torch.zeros(k, dtype=dtype, device=device)
        r2 = b_largest = torch.zeros((), dtype=dtype, device=device)
        start = torch.argmin(torch.diagonal(K))
    face = index == start
    w = face.to(dtype)
    step = fused(_active_set_step, device)
    stop_when_settled = early_exit(device)
    for _ in range(iteration_budget(k) if iterations is None else iterations):
        w, face, settled = step(K, b, r2, b_largest, w, face, cagrad)
        if stop_when_settled and bool(settled):
            break  # further iterations would repeat this one

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


def _active_set_step(K: Tensor, b: Tensor, r2: Tensor, b_largest: Tensor, w: Tensor, face: Tensor,
                     cagrad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One iteration of :func:`simplex_active_set`: ``(w, face, settled)`` after it (every branch a mask).

    ``K`` normalised (largest diagonal entry 1), ``b`` and ``r2 = r²`` in its units (zeros for MGDA),
    ``b_largest = max|b|``; ``settled``: nothing entered, left or failed, so further iterations repeat it.
    """
    k, dtype, device = K.shape[0], K.dtype, K.device
    index = torch.arange(k, device=device)
    infinity = torch.full((k,), math.inf, dtype=dtype, device=device)
    a, c, lam_a, lam_c = _face_stationary_points(K, b, face)
    if cagrad:
        room = r2 - dot(c, matvec(K, c)).clamp_min(0.0)
        bounded = room > 1e-14 * r2
        t = torch.where(bounded, (dot(a, matvec(K, a)).clamp_min(0.0) / torch.where(bounded, room, r2)).sqrt(), _FAR)
        z, lam = a + t * c, lam_a + t * lam_c
        reduced = t * b + matvec(K, z) - lam  # t-scaled reduced gradient: 0 on the face, < 0 where entering descends
        tolerance = 1e-12 * (1.0 + t * b_largest)
    else:
        z = a
        reduced = matvec(K, z) - lam_a
        tolerance = 1e-12
    feasible = ((z > 0) | ~face).all() & torch.isfinite(z).all()
    # (A 0-dim tensor used as an index would be read back to the host: compare through min/argmin.)
    outside = torch.where(face, infinity, reduced)
    enter = feasible & (outside.min() < -tolerance)
    # Infeasible z: step from w toward z until the first weight on the face reaches 0.
    ratios = torch.where(face & (z <= 0), w / (w - z).clamp_min(TINY), infinity)
    step = ratios.min().clamp(max=1.0)
    stepped = torch.where(face, w + step * (z - w), 0.0)
    leave = face & ((ratios <= step) | (stepped <= 0))
    moved = torch.where(feasible, z, torch.where(leave, 0.0, stepped)).clamp_min(0.0)
    moved = moved / moved.sum()
    usable = torch.isfinite(moved).all()
    w = torch.where(usable, moved, w)
    grown = face | (enter & (index == torch.argmin(outside)))
    face = torch.where(usable, torch.where(feasible, grown, face & ~leave), face)
    return w, face, ~(enter | ~feasible | ~usable)


def _face_stationary_points(K: Tensor, b: Tensor, face: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """On the face ``P`` (``face`` its mask): ``a``, the face's min-norm point (``K_PP a = λ_a 1``,
    ``1ᵀa = 1``), and ``c``, the direction with ``K_PP c = −b_P + λ_c 1``, ``1ᵀc = 0``; zero off the face.

    These are the solutions of the bordered system ``[[K_PP, −1], [1ᵀ, 0]]``, which is indefinite. With
    ``ρ = 1`` (``K`` is normalised to a largest diagonal entry of 1), ``M = K_PP + ρ 11ᵀ`` is positive
    definite exactly when that system is regular (``xᵀMx = xᵀKx + ρ(1ᵀx)²``, and the system is regular when
    ``K`` is definite on ``1ᵀx = 0``), so one SPD solve with two right-hand sides gives both:
    ``M y = 1``, ``M c₀ = −b``; then ``a = y / 1ᵀy``, ``λ_a = 1/1ᵀy − ρ``, ``c = c₀ − s y``, ``λ_c = −s``
    with ``s = 1ᵀc₀ / 1ᵀy``. On CUDA that solve is one Triton launch (:func:`solve_spd`) where a pivoted
    LU of the bordered system is several.
    """
    k, dtype, device = K.shape[0], K.dtype, K.device
    on, eye = face.to(dtype), torch.eye(k, dtype=dtype, device=device)
    shifted = torch.where(face[:, None] & face[None, :], K + 1.0, eye)          # K_PP + ρ 11ᵀ, identity off P
    solution = solve_spd(shifted, torch.stack([on, -b * on], dim=1))  # unchecked: a failed solve is masked later
    y, c0 = solution[:, 0] * on, solution[:, 1] * on
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


def least_squares(system: Tensor, rhs: Tensor, iterations: int = 20, ridge: float = 1e-8) -> Tensor:
    """The minimum-norm least-squares solution of ``system @ x ≈ rhs`` (float64, any rank), on the device.

    Iterated Tikhonov regularisation: ``x ← x + (AᵀA + δI)⁻¹ Aᵀ(rhs − A x)`` from ``x = 0`` with one
    inverse of the (small, symmetric positive definite) regularised normal matrix; each iteration shrinks the error along a singular direction ``σ`` by
    ``δ/(σ² + δ)`` and never enters the null space, so it converges to the pseudo-inverse solution
    (``δ = 1e-8 · max diag(AᵀA)``: rounding along a null direction is amplified by at most 1e8·eps;
    20 iterations shrink directions with ``σ² ≥ δ`` below 1e-6 of their error, those with ``σ² ≥ 100δ``
    to rounding). The residual is evaluated on ``A`` itself, which makes the
    iteration an iterative refinement too. The inverse is one SPD solve with the identity as right-hand
    sides (:func:`solve_spd`: one Triton launch on CUDA); the products are :func:`matvec`, so that the
    whole solve fuses when traced.
    """
    normal = matvec(system.T, system.T)   # AᵀA
    ridge_value = ridge * torch.diagonal(normal).max().clamp_min(TINY)
    eye = torch.eye(normal.shape[0], dtype=normal.dtype, device=normal.device)
    inverse = solve_spd(normal + ridge_value * eye, eye)   # unchecked: no host read
    x = torch.zeros(system.shape[1], dtype=system.dtype, device=system.device)
    for _ in range(iterations):
        x = x + matvec(inverse, matvec(system.T, rhs - matvec(system, x)))
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
