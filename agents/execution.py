"""How the SAC update is executed: eagerly, or captured in CUDA graphs.

:mod:`agents.sac` holds the maths: one readable Python function per phase of the update (the replay
sample, the critic, the actor and temperatures, the targets). :class:`PhaseRunner` runs each phase in the
configured mode, LeanRL's pattern of wrapping the same function from outside:

* ``none``: the phases run as written (the CPU, debugging, and the reference of the other mode).
* ``cudagraphs``: each phase is captured once in a :class:`torch.cuda.CUDAGraph` and replayed, which
  removes the kernel-launch overhead that dominates a small network's update on a GPU. We capture the eager phases with ``torch.cuda.graph`` (PyTorch's documented
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

``torch.compile`` is not offered: on the CPU it did not make the update faster at any size measured
(``python -m mtrl.bench update`` before its removal; the README's benchmark section), and no GPU
measurement has shown what it adds to the CUDA graphs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from mtrl.aggregation import Aggregator

__all__ = ["PhaseRunner", "HostTransfer", "resolve_compile_mode", "capture_blocker", "GraphedPhase"]

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


class PhaseRunner:
    """Runs the phases of an update in one (resolved) ``agent.compile`` mode: ``none`` or ``cudagraphs``.
    A phase is a function of tensors (or ``None``) returning a pytree of tensors."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._graphs: dict[tuple[Any, ...], GraphedPhase] = {}

    def __call__(self, name: str, phase: Callable[..., Any], *args: Any, variant: Any = None,
                 generators: Sequence[torch.Generator] = (), blocker: str | None = None) -> Any:
        """``phase(*args)`` in this runner's mode.

        ``variant`` tells apart inputs that need their own CUDA graph (e.g. an optional input given or
        not); ``generators`` are the non-default generators the phase draws from, ``blocker`` a reason
        known in advance why it cannot be captured (both for ``cudagraphs``).
        """
        if self.mode == "none":
            return phase(*args)
        key = (name, variant)
        if key not in self._graphs:
            self._graphs[key] = GraphedPhase(phase, name, generators, blocker)
        return self._graphs[key](*args)

    def own(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Copies of a CUDA graph's static outputs, which its next replay overwrites (other modes: as is)."""
        if self.mode != "cudagraphs":
            return outputs
        return {name: value.clone() for name, value in outputs.items()}

    def captured(self) -> list[str]:
        """The names of the phases running as CUDA-graph replays."""
        return sorted(graph.name for graph in self._graphs.values() if graph.captured)

    def reset(self) -> None:
        """Forget the graphs (after the state they hold was replaced, e.g. a resume)."""
        self._graphs.clear()


class HostTransfer:
    """Host <-> device copies of the acting path through page-locked buffers on CUDA (one copy each way,
    reused across calls); plain tensors elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned: dict[tuple[str, tuple[int, ...]], Tensor] = {}

    def to_device(self, array: Any) -> Tensor:
        """``array`` (NumPy or a tensor) as float32 on the device."""
        if self.device.type == "cuda" and not (isinstance(array, Tensor) and array.is_cuda):
            host = self._buffer("in", tuple(array.shape))
            host.copy_(torch.as_tensor(array))                           # casts to float32
            return host.to(self.device, non_blocking=True)
        return torch.as_tensor(array, dtype=torch.float32, device=self.device)

    def to_host(self, tensor: Tensor) -> Any:
        """``tensor`` as a NumPy array (waits for the device on CUDA: the one wait per step)."""
        if self.device.type != "cuda":
            return tensor.numpy()
        host = self._buffer("out", tuple(tensor.shape))
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host.numpy().copy()   # the pinned buffer is reused by the next call

    def _buffer(self, direction: str, shape: tuple[int, ...]) -> Tensor:
        key = (direction, shape)
        if key not in self._pinned:
            self._pinned[key] = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        return self._pinned[key]
