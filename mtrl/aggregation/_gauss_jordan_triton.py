"""The Triton kernel of :func:`mtrl.aggregation._gauss_jordan.triton_solve`: Gauss-Jordan elimination, one
program per system. Its own module, imported on first use: importing Triton costs ~0.3 s, which a CPU run
never needs."""

import triton
import triton.language as tl


@triton.jit
def gauss_jordan_kernel(matrix_ptr, rhs_ptr, out_ptr, k, m, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr):
    """One system per program: ``A`` and the ``m`` right-hand sides in registers, the ``k`` stages of
    :func:`~mtrl.aggregation._gauss_jordan.gauss_jordan`."""
    system = tl.program_id(0).to(tl.int64)
    index = tl.arange(0, BLOCK)
    rows, cols, rhs_cols = index[:, None], index[None, :], tl.arange(0, BLOCK_M)[None, :]
    a = tl.load(matrix_ptr + system * k * k + rows * k + cols, mask=(rows < k) & (cols < k), other=0.0)
    in_b = (rows < k) & (rhs_cols < m)
    b = tl.load(rhs_ptr + system * k * m + rows * m + rhs_cols, mask=in_b, other=0.0)
    for j in range(0, k):
        # Row j and column j of the current stage, read out by masked sums (no indexing in registers).
        pivot_row = tl.sum(tl.where(rows == j, a, 0.0), axis=0)
        pivot_b = tl.sum(tl.where(rows == j, b, 0.0), axis=0)
        column = tl.sum(tl.where(cols == j, a, 0.0), axis=1)
        pivot = tl.sum(tl.where(index == j, pivot_row, 0.0), axis=0)
        pivot_row = pivot_row / pivot
        pivot_b = pivot_b / pivot
        a = tl.where(rows == j, pivot_row[None, :], a - column[:, None] * pivot_row[None, :])
        b = tl.where(rows == j, pivot_b[None, :], b - column[:, None] * pivot_b[None, :])
    tl.store(out_ptr + system * k * m + rows * m + rhs_cols, b, mask=in_b)
