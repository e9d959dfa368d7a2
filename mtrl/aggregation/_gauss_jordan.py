"""Small SPD solves by Gauss-Jordan elimination: a fusable torch form and, on CUDA, one Triton launch.

The solvers' iterations (the α-fair ones of :mod:`._alpha_fair`, the active set of MGDA and CAGrad,
IMTL-G's least squares) solve small ``k×k`` symmetric positive definite systems (``k`` the number of tasks). Elimination without pivoting is stable for SPD matrices
(as Cholesky is) and has no data-dependent branch, so it can be written two ways:

* :func:`gauss_jordan` — torch element-wise operations unrolled over the ``k`` columns. Traced by
  ``torch.compile`` on the CPU, inductor fuses it with the rest of an iteration into one C++ kernel.
* :func:`spd_solve` on CUDA — one Triton program per system holds the augmented matrix in registers and
  runs all ``k`` stages: **one launch** per solve. Inductor cannot do this from :func:`gauss_jordan`:
  every stage reads the pivot row the previous stage wrote, so its Triton output is about one kernel per
  stage (12 of the 16 kernels of a Newton iteration at k = 10, and 31 → 12 for a Newton iteration paired
  with a fallback iteration; ``python -m mtrl.bench launches`` counts them from inductor's generated Triton
  code). cuSOLVER's solve is several launches sized for large matrices.

``torch.ops.mtrl.spd_solve`` is the operator: a fake implementation lets ``torch.compile`` trace
through it (inductor calls it between the kernels it generates, and a CUDA graph captures its launch);
its CPU implementation is :func:`gauss_jordan`, and the tests run the Triton kernel with Triton's
interpreter against it. Where Triton is missing or its kernel fails to build, CUDA tensors take
:func:`gauss_jordan` too (the log says so once): the same arithmetic, more launches. The kernel itself is
in :mod:`._gauss_jordan_triton`, imported on first use.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import Tensor

__all__ = ["gauss_jordan", "spd_solve", "triton_solve", "MAX_K", "HAVE_TRITON"]

log = logging.getLogger(__name__)

#: Largest ``k`` solved by one Triton program: a 64×64 float64 block is 32 KiB of registers across the
#: program's warps; beyond this :func:`spd_solve` is not the tool (callers use a library solve).
MAX_K = 64

#: Triton ships with CUDA builds of torch; CPU-only installs may lack it (found here without importing it).
HAVE_TRITON = importlib.util.find_spec("triton") is not None

_TRITON_FAILED: list[str] = []


def gauss_jordan(matrix: Tensor, rhs: Tensor) -> Tensor:
    """``x`` with ``matrix @ x = rhs`` by elimination without pivoting: ``matrix [..., k, k]`` and ``rhs [..., k]``
    (one right-hand side) or ``[..., k, m]`` (``m`` of them, as ``torch.linalg.solve``).

    Written as ``k`` element-wise stages over the augmented matrix, so that ``torch.compile`` fuses it.
    Stable for SPD matrices; unchecked (a singular matrix gives non-finite or meaningless values).
    """
    k, vector = matrix.shape[-1], rhs.ndim == matrix.ndim - 1
    augmented = torch.cat([matrix, rhs[..., None] if vector else rhs], dim=-1)   # [..., k, k + m]
    row = torch.arange(k, device=matrix.device)[:, None]
    for j in range(k):
        pivot_row = augmented[..., j:j + 1, :] / augmented[..., j:j + 1, j:j + 1]
        augmented = torch.where(row == j, pivot_row, augmented - augmented[..., :, j:j + 1] * pivot_row)
    return augmented[..., k] if vector else augmented[..., k:]


def triton_solve(matrix: Tensor, rhs: Tensor) -> Tensor:
    """:func:`gauss_jordan` as one Triton launch (one program per system); any device Triton runs on
    (CUDA, or the CPU under ``TRITON_INTERPRET=1``)."""
    if not HAVE_TRITON:
        raise RuntimeError("triton_solve needs the triton package.")
    k, vector = matrix.shape[-1], rhs.ndim == matrix.ndim - 1
    if k > MAX_K:
        raise ValueError(f"triton_solve solves systems of up to {MAX_K} unknowns, got {k}.")
    columns = rhs[..., None] if vector else rhs                     # [..., k, m]
    m, batch = columns.shape[-1], columns.shape[:-2]
    matrix = matrix.expand(*batch, k, k).contiguous()
    columns = columns.contiguous()
    out = columns.new_empty(columns.shape)
    systems = max(1, columns.numel() // max(k * m, 1))
    from mtrl.aggregation._gauss_jordan_triton import gauss_jordan_kernel, triton
    gauss_jordan_kernel[(systems,)](matrix, columns, out, k, m, BLOCK=max(16, triton.next_power_of_2(k)),
                                    BLOCK_M=max(2, triton.next_power_of_2(m)))
    return out[..., 0] if vector else out


@torch.library.custom_op("mtrl::spd_solve", mutates_args=())
def spd_solve(matrix: Tensor, rhs: Tensor) -> Tensor:
    """``x`` with ``matrix @ x = rhs`` for small SPD systems (``k ≤ MAX_K``; ``rhs [..., k]`` or ``[..., k, m]``):
    one Triton launch on CUDA, :func:`gauss_jordan` elsewhere (and on CUDA where the kernel cannot be built)."""
    if matrix.is_cuda and HAVE_TRITON and not _TRITON_FAILED:
        try:
            return triton_solve(matrix, rhs)
        except Exception as error:  # noqa: BLE001 - e.g. a Triton too old for this kernel: same arithmetic below
            _TRITON_FAILED.append(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            log.warning("spd_solve: the Triton kernel failed (%s); small solves use torch operations.",
                        _TRITON_FAILED[0])
    return gauss_jordan(matrix, rhs).contiguous()   # (a fresh tensor, as the fake one: not a view)


@spd_solve.register_fake
def _(matrix: Tensor, rhs: Tensor) -> Tensor:
    return rhs.new_empty(rhs.shape)
