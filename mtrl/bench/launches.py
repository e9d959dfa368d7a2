"""GPU kernel launches per SAC update, counted on any machine, a GPU-less one included.

    python -m mtrl.bench launches [--aggregators ls,jacobian,pivrg] [--tasks 10] [--hidden-dim 400]

Why count: on a GPU the update is replayed from CUDA graphs (``agent.compile=cudagraphs``) and its
kernels are tiny (k = 10 tasks, batch 1280): most take about a launch's couple of microseconds whatever
they compute, so the number of launches sets the update's time, and the difference between two
aggregators' counts is most of the difference between their times. This is a model, not a measurement:
``bench update --device cuda`` has the last word; the count says where launches go when no GPU is at hand.

What is counted, for one update in the GPU's configuration (deferred checks, the solvers' fixed
iteration counts, fused Adam, the GPU's block size for passes over the Jacobian), run on the CPU:

* ``eager``: aten operations that launch a kernel (not views, allocations or metadata), under a
  dispatch mode; ``host_reads`` counts values read back (0 on the GPU path);
* ``fused``: each call of a solver stage that ``torch.compile`` fuses on CUDA
  (:data:`mtrl.aggregation._linalg.FUSE_ON_DEVICES`; one variant per value of its Python constants,
  e.g. ``_paired_step[0.5]`` for α = 2) counts as the launches inductor generates for it there: its
  Triton kernels plus the library or custom-operator calls between them, one launch each (right for the
  small solves' Triton kernel; a cuSOLVER solve, the active-set method's, is a few). They are read from inductor's own Triton code generation,
  run for the CPU tensors with ``cpu_backend="triton"`` and stopped before anything is compiled (no GPU
  and no Triton backend needed). It patches inductor internals that may change between torch versions:
  where this fails, the stage's count is ``None`` and the reason is printed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtrl.aggregation import _linalg, available
from mtrl.bench._common import names, positive_int, print_table, usage_error
from mtrl.bench.update import build

HELP = "GPU kernel launches of one SAC update per aggregator, counted without a GPU (eager ops + fused solver stages)"

#: Operations that launch no kernel: allocations and bookkeeping (views are recognised by ``is_view``;
#: ``_unsafe_view``, the last step of a ``reshape`` that needed a copy, is a view the schema does not mark).
NO_LAUNCH = frozenset({"empty.memory_format", "empty_strided.default", "detach.default", "lift_fresh.default",
                       "_unsafe_view.default",
                       "_local_scalar_dense.default", "_record_function_enter_new.default",
                       "_record_function_exit._RecordFunction", "set_.source_Storage_storage_offset"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aggregators", type=names, default=None,
                        help="comma-separated registered names, or 'jacobian' (default: ls, jacobian, pivrg)")
    parser.add_argument("--tasks", type=positive_int, default=10)
    parser.add_argument("--obs-dim", type=positive_int, default=49, help="Meta-World 39 + one-hot")
    parser.add_argument("--action-dim", type=positive_int, default=4)
    parser.add_argument("--batch-size", type=positive_int, default=1280)
    parser.add_argument("--hidden-dim", type=positive_int, default=400)


class _Launches(TorchDispatchMode):
    """Counts the aten operations that would launch a kernel, except while ``paused`` (inside fused stages)."""

    def __init__(self) -> None:
        super().__init__()
        self.launches = self.host_reads = self.paused = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if not self.paused:
            name = getattr(func, "__name__", str(func))   # "add.Tensor": the operator and its overload
            if name == "_local_scalar_dense.default":
                self.host_reads += 1
            elif not getattr(func, "is_view", False) and name not in NO_LAUNCH:
                self.launches += 1
        return func(*args, **(kwargs or {}))


def _gpu_configuration(agent: Any) -> None:
    """What the agent does on CUDA under ``cudagraphs``: checks deferred to log time, fused Adam."""
    for aggregator in (agent.critic_aggregator, agent.actor_aggregator):
        if hasattr(aggregator, "deferred_checks"):
            aggregator.deferred_checks = True
    for optimizer in (agent.actor_optimizer, agent.critic_optimizer, agent.alpha_optimizer):
        for group in optimizer.param_groups:
            group["fused"], group["foreach"] = True, False


def count_update(aggregator: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, tuple[Callable, tuple]]]:
    """One update's eager launches and fused-stage calls; the stages' first arguments, to count their kernels."""
    agent, buffer, performance = build(aggregator, "none", args)
    _gpu_configuration(agent)
    counter, calls, examples = _Launches(), collections.Counter(), {}

    def fused(function: Callable, device: torch.device) -> Callable:
        def call(*arguments: Any) -> Any:
            # One compiled variant per value of the Python constants among the arguments (p, cagrad, ...).
            constants = [repr(value) for value in arguments if isinstance(value, (bool, int, float, str))]
            name = f"{function.__qualname__}[{', '.join(constants)}]" if constants else function.__qualname__
            calls[name] += 1
            examples.setdefault(name, (function, arguments))
            counter.paused += 1
            try:
                return function(*arguments)
            finally:
                counter.paused -= 1
        return call

    gpu_blocks = max(1, _linalg._BLOCK_ELEMENTS // args.tasks)   # passes over the Jacobian: the GPU's block size
    with mock.patch.object(_linalg, "EARLY_EXIT_ON_CPU", False), mock.patch.object(_linalg, "fused", fused), \
            mock.patch.object(_linalg, "_CPU_BLOCK_COLUMNS", gpu_blocks):
        agent.update(buffer, performance)   # the first update: cold starts, lazy state
        calls.clear()
        examples.clear()
        with counter:
            agent.update(buffer, performance)
    return {"eager": counter.launches, "host_reads": counter.host_reads, "stage_calls": dict(calls)}, examples


@contextlib.contextmanager
def _triton_code_generation(sources: list[str]) -> Iterator[None]:
    """Inductor generates Triton code for CPU tensors as for a GPU; the generated module's source lands in
    ``sources`` and its loading is stopped (nothing is compiled, so no GPU or Triton backend is needed)."""
    import torch._inductor.config as inductor_config
    import torch.utils._triton as torch_triton
    from torch._inductor import codecache

    class Generated(Exception):
        pass

    load = codecache.PyCodeCache.load_by_key_path

    def capture(key: str, path: str, *rest: Any, **options: Any) -> Any:
        with open(path) as file:
            source = file.read()
        if "def call(" not in source:
            return load(key, path, *rest, **options)
        sources.append(source)
        raise Generated

    with contextlib.ExitStack() as stack:
        stack.enter_context(inductor_config.patch({"cpu_backend": "triton", "compile_threads": 1,
                                                   "fx_graph_cache": False}))
        stack.enter_context(mock.patch.object(torch_triton, "triton_backend", lambda: "cuda"))
        stack.enter_context(mock.patch.object(torch_triton, "triton_hash_with_backend", lambda: "0" * 64))
        stack.enter_context(mock.patch.object(codecache.PyCodeCache, "load_by_key_path", staticmethod(capture)))
        stack.enter_context(mock.patch.object(_linalg, "_solve_in_one_launch", lambda matrix: True))
        yield


def stage_launches(function: Callable, arguments: tuple) -> dict[str, Any]:
    """The launches inductor generates for ``function(*arguments)`` on CUDA: Triton kernels and other calls."""
    sources: list[str] = []
    torch._dynamo.reset()
    try:
        with _triton_code_generation(sources):
            torch.compile(function, fullgraph=True, dynamic=False)(*arguments)
    except Exception as error:  # noqa: BLE001 - the expected stop, or inductor internals that moved
        if not sources:
            return {"launches": None, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    finally:
        torch._dynamo.reset()
    body = sources[-1][sources[-1].index("def call("):]
    code = [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
    kernels = sum(1 for line in code if re.search(r"\w+\.run\(", line))
    others = sum(1 for line in code if re.search(r"(extern_kernels\.\w+|torch\.ops\.\w+\.\w+(\.\w+)?)\(", line))
    return {"launches": kernels + others, "triton_kernels": kernels, "other_calls": others}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.device != "cpu":
        usage_error("launches: counts on the CPU (the GPU's configuration is modelled); drop --device.")
    if args.quick:
        args.tasks, args.batch_size, args.hidden_dim = 3, 24, 16
    aggregators = args.aggregators or ["ls", "jacobian", "pivrg"]
    unknown = [name for name in aggregators if name != "jacobian" and name not in available()]
    if unknown:
        usage_error(f"launches: unknown aggregator(s) {unknown}; choose from jacobian, {', '.join(available())}.")
    if "ls" not in aggregators:
        usage_error("launches: --aggregators should include ls, the reference of ratio_to_ls.")
    if args.batch_size % args.tasks:
        usage_error(f"launches: --batch-size {args.batch_size} should be a multiple of --tasks {args.tasks}.")

    results, stages = {}, {}
    for name in aggregators:
        results[name], examples = count_update(name, args)
        for stage, (function, arguments) in examples.items():
            if stage not in stages:
                stages[stage] = stage_launches(function, arguments)
                print(f"stage {stage}: {stages[stage]}", flush=True)
    for row in results.values():
        per_stage = [(calls, stages[stage]["launches"]) for stage, calls in row["stage_calls"].items()]
        known = all(launches is not None for _, launches in per_stage)
        row["fused"] = sum(calls * launches for calls, launches in per_stage) if known else None
        row["total"] = row["eager"] + row["fused"] if known else None
    for row in results.values():
        reference = results["ls"]["total"]
        row["ratio_to_ls"] = row["total"] / reference if row["total"] is not None and reference else None
    print_table([{"stage": stage, **counts} for stage, counts in stages.items()],
                ["stage", "launches", "triton_kernels", "other_calls", "error"],
                title="Fused solver stages: launches per call on CUDA (inductor's Triton code, generated here)")
    print_table([{"aggregator": name, **row, "stage_calls": ", ".join(f"{s} x{n}" for s, n in row["stage_calls"].items())}
                 for name, row in results.items()],
                ["aggregator", "eager", "fused", "total", "ratio_to_ls", "host_reads", "stage_calls"],
                title=f"GPU launches per SAC update (model), k={args.tasks}, batch {args.batch_size}, "
                      f"3x{args.hidden_dim} trunks")
    return {"tasks": args.tasks, "batch_size": args.batch_size, "hidden_dim": args.hidden_dim,
            "results": results, "stages": stages}
