"""How the SAC update runs: eagerly, through ``torch.compile``, or captured in CUDA graphs.

LeanRL's pattern: the update stays one readable Python function per phase (critic, actor and
temperatures, targets, and the replay sample), and the speed comes from wrapping it from outside:

* ``none``: the phases run as written (debugging, and the reference of the other modes).
* ``compile``: each phase goes through :func:`torch.compile` (inductor by default). Host syncs in an
  aggregator become graph breaks: slower, never wrong.
* ``cudagraphs``: each phase is captured once in a :class:`torch.cuda.CUDAGraph` and replayed, which
  removes the launch overhead that dominates the update on a GPU (issue 11: ~0.1 ms of arithmetic in a
  7 ms update). We capture the eager phases with ``torch.cuda.graph`` (PyTorch's documented
  whole-network capture: warm-up on a side stream, capture, replay with static input buffers) rather
  than ``torch.compile(mode="reduce-overhead")``, whose graph trees re-record at every graph break and
  would re-record at every host sync of an aggregator. A phase whose function syncs with the host,
  detected during its last warm-up call through ``torch.cuda.set_sync_debug_mode``, or whose
  aggregator keeps Python state that a replay would not update, keeps running eagerly; the log says so
  once, with the reason.

What a captured phase needs from its function: the same tensors (parameters, optimizer state, replay
storage) at the same addresses on every call, tensor inputs copied into static buffers, Adam with
``capturable=True``, random numbers from generators registered with the graph, and no Python branch on a
tensor value. Python values (the step counter) are frozen at capture, so aggregators that read
``TaskStats.step`` must not be captured.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from mtrl.aggregation import Aggregator

__all__ = ["resolve_compile_mode", "check_compile_toolchain", "capture_blocker", "GraphedPhase", "OutsideCompile"]

log = logging.getLogger(__name__)

#: Eager calls before a phase is captured: the first ones initialise lazy state (cuBLAS handles,
#: optimizer moments, autograd buffers), which must not happen during capture.
CAPTURE_WARMUP_CALLS = 3


def resolve_compile_mode(mode: str, device: torch.device) -> str:
    """``auto`` -> ``cudagraphs`` on CUDA, ``none`` elsewhere; ``cudagraphs`` off CUDA is an error."""
    if mode == "auto":
        return "cudagraphs" if device.type == "cuda" else "none"
    if mode == "cudagraphs" and device.type != "cuda":
        raise ValueError(f"agent.compile=cudagraphs needs a CUDA device, the agent is on {device}; "
                         f"use agent.compile=auto, none or compile.")
    return mode


def check_compile_toolchain(device: torch.device, backend: str) -> None:
    """Inductor on the CPU writes C++ and needs a compiler; say so before the first update, not deep inside it."""
    if backend != "inductor" or device.type != "cpu":
        return
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        raise ValueError(f"agent.compile=compile on the CPU needs a C++ compiler for inductor (tried {compiler}, c++, "
                         f"clang++); install one (apt-get install g++) or use agent.compile=none.")


def capture_blocker(aggregator: Aggregator | None) -> str | None:
    """Why ``aggregator`` cannot live inside a CUDA graph, or ``None`` when it may.

    An aggregator may declare ``capturable`` (True once its state lives in device tensors updated in
    place). Without that declaration, one that keeps state across calls is not captured: a replay would
    re-run the kernels on the state tensors seen at capture and leave Python-side state unchanged.
    Host syncs are found separately, during warm-up.
    """
    if aggregator is None:
        return None
    declared = getattr(aggregator, "capturable", None)
    if declared is not None:
        return None if declared else f"aggregator {aggregator} declares capturable=False"
    state = type(aggregator)._state_attributes
    if state:
        return f"aggregator {aggregator} keeps state across calls ({', '.join(state)})"
    return None


class GraphedPhase:
    """A function of tensors, warmed up eagerly, then captured in a CUDA graph and replayed.

    ``fn(*args)`` takes tensors (or ``None``) and returns a pytree of tensors; the returned tensors are
    the graph's static outputs, overwritten by the next replay: clone what must outlive it. Python
    values that ``fn`` reads (the step counter) keep their value at capture in every replay.

    Args:
        fn: the phase, written as for eager execution.
        name: for the log.
        generators: the non-default CUDA generators ``fn`` draws from (registered with the graph so
            that every replay draws fresh numbers).
        blocker: a reason known in advance why ``fn`` cannot be captured (it then stays eager).
    """

    def __init__(self, fn: Callable[..., Any], name: str, generators: Sequence[torch.Generator] = (),
                 blocker: str | None = None) -> None:
        self.fn, self.name, self.generators = fn, name, tuple(generators)
        self.eager_reason = blocker
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static_args: tuple[Any, ...] = ()
        self._static_out: Any = None
        if blocker is not None:
            log.warning("agent.compile=cudagraphs: the %s phase runs eagerly: %s.", name, blocker)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *args: Any) -> Any:
        if self.graph is not None:
            for static, arg in zip(self._static_args, args):
                if isinstance(arg, Tensor) and arg.data_ptr() != static.data_ptr():
                    static.copy_(arg)
            self.graph.replay()
            return self._static_out
        if self.eager_reason is not None:
            return self.fn(*args)
        if self.calls < CAPTURE_WARMUP_CALLS:
            self.calls += 1
            return self._warm_up(args, watch_syncs=self.calls == CAPTURE_WARMUP_CALLS)
        self._capture(args)
        return self(*args) if self.graph is not None else self.fn(*args)

    def _warm_up(self, args: tuple[Any, ...], watch_syncs: bool) -> Any:
        """One real call on a side stream (as capture does); the last one watches for host syncs."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        previous = torch.cuda.get_sync_debug_mode()
        with torch.cuda.stream(stream), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if watch_syncs:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                out = self.fn(*args)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        torch.cuda.current_stream().wait_stream(stream)
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
        if watch_syncs and syncs:
            self._stay_eager(f"it synchronises with the host ({len(syncs)} time(s) per call, e.g. `{syncs[0][:120]}`)")
        return out

    def _capture(self, args: tuple[Any, ...]) -> None:
        try:
            self._static_args = tree_map(lambda x: x.clone() if isinstance(x, Tensor) else x, args)
            graph = torch.cuda.CUDAGraph()
            for generator in self.generators:
                graph.register_generator_state(generator)
            torch.cuda.synchronize()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):   # other threads may use CUDA
                self._static_out = self.fn(*self._static_args)
            self.graph = graph
            log.info("agent.compile=cudagraphs: the %s phase is captured.", self.name)
        except (RuntimeError, AttributeError) as error:   # e.g. a sync missed in warm-up, an old torch
            self._static_args, self._static_out = (), None
            self._stay_eager(f"its capture failed ({type(error).__name__}: {str(error).splitlines()[0][:160]})")

    def _stay_eager(self, reason: str) -> None:
        self.eager_reason = reason
        log.warning("agent.compile=cudagraphs: the %s phase runs eagerly from now on: %s.", self.name, reason)


class OutsideCompile:
    """An aggregator whose calls ``torch.compile`` leaves out of its graphs (run eagerly in between).

    For aggregators that do not declare ``capturable = True`` (a trace would freeze Python state kept
    across calls, and tracing them is not checked); one that declares it (device state updated in place,
    no host reads) is traced instead and needs no wrapper. Every other attribute is the wrapped one's.
    """

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def __getattr__(self, name: str) -> Any:
        return getattr(self.aggregator, name)

    @torch.compiler.disable
    def __call__(self, jacobian: Tensor | None, stats: Any) -> Tensor:
        return self.aggregator(jacobian, stats)

    @torch.compiler.disable
    def after_step(self, stats: Any) -> None:
        self.aggregator.after_step(stats)
