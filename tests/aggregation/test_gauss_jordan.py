"""Small SPD solves: the torch elimination, the Triton kernel (run by Triton's interpreter on the CPU, and
for real where CUDA exists) and the operator that ``torch.compile`` traces through."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mtrl.aggregation import _gauss_jordan, _linalg

CUDA = torch.cuda.is_available()


def spd_system(k: int, condition: float, seed: int, batch: tuple[int, ...] = (),
               dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A random SPD matrix with eigenvalues spread log-uniformly over ``[1, condition]``, and a right-hand side."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(*batch, k, k, generator=generator, dtype=torch.float64))
    spectrum = torch.logspace(0, math.log10(condition), k, dtype=torch.float64)
    matrix = basis @ torch.diag_embed(spectrum.expand(*batch, k)) @ basis.transpose(-1, -2)
    matrix = 0.5 * (matrix + matrix.transpose(-1, -2))
    return matrix.to(dtype), torch.randn(*batch, k, generator=generator, dtype=torch.float64).to(dtype)


def backward_error(matrix: torch.Tensor, rhs: torch.Tensor, x: torch.Tensor) -> float:
    residual = (matrix @ x[..., None])[..., 0] - rhs
    return float((residual.norm(dim=-1) / (matrix.norm(dim=(-2, -1)) * x.norm(dim=-1) + rhs.norm(dim=-1))).max())


@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_the_elimination_has_rounding_level_backward_error_on_spd_systems(k: int) -> None:
    """Without pivoting, elimination on an SPD matrix is backward stable (as Cholesky is): the backward error
    stays at rounding level even at condition 1e12, batched or not, and the solution equals LAPACK's pivoted
    solve where the condition allows a comparison."""
    for condition, batch in ((10.0, ()), (1e12, ()), (1e3, (3, 2))):
        matrix, rhs = spd_system(k, condition, seed=k, batch=batch)
        x = _gauss_jordan.gauss_jordan(matrix, rhs)
        assert x.shape == rhs.shape
        assert backward_error(matrix, rhs, x) < 1e-14, condition
        if condition <= 1e3:
            torch.testing.assert_close(x, torch.linalg.solve(matrix, rhs), rtol=1e-11, atol=1e-14)
            several = torch.stack([rhs, 2.0 * rhs + 1.0], dim=-1)              # [..., k, 2]
            torch.testing.assert_close(_gauss_jordan.gauss_jordan(matrix, several), torch.linalg.solve(matrix, several),
                                       rtol=1e-11, atol=1e-14)


def test_the_operator_is_registered_for_tracing() -> None:
    """``torch.ops.mtrl.spd_solve``: its fake implementation agrees with the real one (shapes, dtypes, strides),
    so that ``torch.compile`` traces through it; off CUDA it is the torch elimination."""
    matrix, rhs = spd_system(6, 100.0, seed=1)
    batched, batched_rhs = spd_system(6, 100.0, seed=2, batch=(2,))   # an α-fair pair's two systems
    for system, right in ((matrix, rhs), (matrix, torch.stack([rhs, -rhs], dim=-1)), (batched, batched_rhs)):
        torch.library.opcheck(torch.ops.mtrl.spd_solve, (system, right))   # one rhs, several, a batch of systems
        torch.testing.assert_close(torch.ops.mtrl.spd_solve(system, right), _gauss_jordan.gauss_jordan(system, right),
                                   rtol=0, atol=0)


_INTERPRETED = textwrap.dedent("""
    import json, sys
    import torch
    from mtrl.aggregation import _gauss_jordan
    sys.path.insert(0, sys.argv[1])
    from test_gauss_jordan import backward_error, spd_system
    results = []
    for k, condition, batch, dtype, *rhs_columns in [(1, 10.0, (), torch.float64), (2, 1e10, (), torch.float64),
                                       (10, 1e10, (), torch.float64), (16, 1e3, (), torch.float64),
                                       (17, 1e6, (), torch.float64), (50, 1e10, (), torch.float64),
                                       (64, 1e3, (), torch.float64), (10, 1e3, (4, 3), torch.float64),
                                       (10, 1e2, (), torch.float32), (11, 1e4, (), torch.float64, 2),
                                       (6, 1e3, (3,), torch.float64, 5)]:
        columns = rhs_columns[0] if rhs_columns else None
        matrix, rhs = spd_system(k, condition, seed=k, batch=batch, dtype=dtype)
        if columns is not None:   # several right-hand sides, [..., k, m]
            rhs = torch.stack([rhs * (1.0 + j) + j for j in range(columns)], dim=-1)
        x = _gauss_jordan.triton_solve(matrix, rhs)
        reference = _gauss_jordan.gauss_jordan(matrix, rhs)
        scale = reference.abs().max().item()
        error = (backward_error(matrix.double(), rhs.double(), x.double()) if columns is None else
                 max(backward_error(matrix.double(), rhs[..., j].double(), x[..., j].double()) for j in range(columns)))
        results.append({"k": k, "batch": list(batch), "dtype": str(dtype), "shape": list(x.shape),
                        "columns": columns, "backward_error": error,
                        "difference": (x - reference).abs().max().item() / scale})
    print(json.dumps(results))
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
def test_the_triton_kernel_equals_the_torch_elimination_under_the_interpreter() -> None:
    """The Triton program (one per system) runs the same ``k`` stages as :func:`gauss_jordan`. Triton's
    interpreter executes it on the CPU: the same results, to rounding, for k from 1 to ``MAX_K`` (block sizes
    16, 32, 64), batched systems, several right-hand sides and float32."""
    environment = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "-c", _INTERPRETED, os.path.dirname(__file__)], env=environment,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    for result in results:
        expected_shape = [*result["batch"], result["k"]] + ([result["columns"]] if result["columns"] else [])
        assert result["shape"] == expected_shape, result
        rounding = 1e-5 if result["dtype"] == "torch.float32" else 1e-14
        assert result["backward_error"] < rounding, result
        assert result["difference"] < 1e3 * rounding * (result["k"] + 1), result


def test_a_system_beyond_the_kernels_size_is_refused() -> None:
    matrix, rhs = spd_system(_gauss_jordan.MAX_K + 1, 10.0, seed=3)
    if not _gauss_jordan.HAVE_TRITON:
        pytest.skip("needs the triton package")
    with pytest.raises(ValueError, match="up to 64 unknowns"):
        _gauss_jordan.triton_solve(matrix, rhs)


@pytest.mark.skipif(not (CUDA and _gauss_jordan.HAVE_TRITON), reason="needs CUDA and Triton")
def test_cuda_a_small_solve_is_one_triton_launch_eager_and_traced() -> None:
    """On CUDA ``solve_spd`` is the Triton kernel, eagerly and inside ``torch.compile`` (the operator stays
    in the graph, between inductor's kernels), and equals LAPACK's solve."""
    matrix, rhs = (tensor.cuda() for tensor in spd_system(10, 1e4, seed=4))
    reference = torch.linalg.solve(matrix.cpu(), rhs.cpu())
    eager = _linalg.solve_spd(matrix, rhs)
    assert not _gauss_jordan._TRITON_FAILED, _gauss_jordan._TRITON_FAILED
    torch.testing.assert_close(eager.cpu(), reference, rtol=1e-9, atol=1e-12)
    targets: list[str] = []

    def recording(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        targets.extend(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
        return graph.forward

    torch._dynamo.reset()
    traced = torch.compile(_linalg.solve_spd, backend=recording, fullgraph=True)(matrix, rhs)
    assert any("mtrl.spd_solve" in target for target in targets), targets
    torch.testing.assert_close(traced.cpu(), reference, rtol=1e-9, atol=1e-12)
    compiled = torch.compile(_linalg.solve_spd, fullgraph=True)(matrix, rhs)   # inductor around the operator
    torch.testing.assert_close(compiled.cpu(), reference, rtol=1e-9, atol=1e-12)
