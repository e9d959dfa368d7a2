"""The contract every gradient aggregator follows, and the registry behind :func:`make`.

An aggregator turns the per-task gradients on the shared parameters (the ``[k, n]`` task Jacobian)
and per-task statistics into ``k`` weights; the shared update direction is ``weights @ jacobian``.
Methods that only weight losses (LS, RLW, UW, DWA, FAMO, ...) declare ``needs_jacobian = False`` and
receive ``jacobian=None``: :func:`mtrl.aggregation.mtl_backward` then skips building the Jacobian and
runs a single backward pass of the weighted loss instead.
"""

from __future__ import annotations

import copy
import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

__all__ = ["Aggregator", "TaskStats", "make", "available", "register"]


@dataclass
class TaskStats:
    """What an aggregator may know about the tasks besides their gradients.

    Attributes:
        losses: ``[k]`` tensor of the tasks' current (unweighted) losses.
        performance: optional ``[k]`` tensor of per-task performance drops Δm_i in percent
            (PIVRG paper Eq. 3): positive means worse than the single-task reference.
        step: the training step (update count) this call belongs to.
    """

    losses: Tensor
    performance: Tensor | None = None
    step: int = 0

    @property
    def num_tasks(self) -> int:
        return int(self.losses.shape[0])


_REGISTRY: dict[str, type["Aggregator"]] = {}


def register(name: str) -> Callable[[type["Aggregator"]], type["Aggregator"]]:
    """Class decorator: make an aggregator available to :func:`make` under ``name``."""

    def decorate(cls: type[Aggregator]) -> type[Aggregator]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"Aggregator name `{name}` is registered twice.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """Names accepted by :func:`make`, sorted."""
    return sorted(_REGISTRY)


def options(name: str) -> list[str]:
    """The constructor options of aggregator ``name``."""
    return [p for p in inspect.signature(_lookup(name).__init__).parameters if p != "self"]


def _lookup(name: str) -> type["Aggregator"]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"Unknown aggregator `{name}`. Valid names: {', '.join(available())}.")
    return _REGISTRY[name]


def make(name: str, **options_: Any) -> "Aggregator":
    """Build the aggregator registered as ``name`` with constructor ``options_``.

    Raises:
        ValueError: for an unknown name (listing the valid names) or an unknown option (listing the
            options the method accepts), or a bad option value (from the method's own validation).
    """
    cls = _lookup(name)
    valid = options(name)
    unknown = sorted(set(options_) - set(valid))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for aggregator `{name}`. "
            f"Valid options: {', '.join(valid) if valid else '(none)'}."
        )
    return cls(**options_)


class Aggregator(ABC):
    """Base class: ``weights = agg(jacobian, stats)``.

    Subclasses implement :meth:`_weights` and, when they keep state across steps, list the state's
    attribute names in ``_state_attributes`` and set them up in :meth:`_init_state`; the base class then
    provides :meth:`state_dict`, :meth:`load_state_dict` and :meth:`reset`. ``fallbacks`` counts the
    calls where a solver failed and the documented fallback was used instead of raising.
    """

    name: ClassVar[str] = "aggregator"
    needs_jacobian: ClassVar[bool] = True
    #: Loss-weighting methods (LS, RLW, UW, DWA, FAMO, ...) weight the task-specific parameters'
    #: gradients too in their papers; gradient-weighting methods leave them unweighted.
    #: :func:`mtl_backward` follows this unless told otherwise.
    loss_weighting: ClassVar[bool] = False
    #: PIVRG-style methods read ``stats.performance``; ``None`` there is read as Δm = 0.
    uses_performance: ClassVar[bool] = False
    _state_attributes: ClassVar[tuple[str, ...]] = ()
    #: Those of ``_state_attributes`` added after checkpoints were written without them: a state that
    #: lacks one loads and keeps the attribute's initial value.
    _added_state_attributes: ClassVar[tuple[str, ...]] = ()

    #: ``False`` (default): a non-finite loss, gradient or Δm raises ``ValueError`` inside the call,
    #: which reads a value back to the host. ``True``: the call never reads back; the offending tasks
    #: are accumulated in a device mask and :meth:`check` raises the same error later (a training loop
    #: turns this on and calls ``check()`` at log time, so the update has no host synchronisation).
    #: Calls traced by ``torch.compile`` or captured in a CUDA graph always defer. The deferred mask
    #: is built from row sums, so it also reports a finite row whose sum overflows its dtype (float32
    #: gradients summing beyond 3e38).
    deferred_checks: bool = False

    def __init__(self) -> None:
        self._fallbacks_host = 0
        self._fallbacks_device: Tensor | None = None
        self._non_finite: dict[str, Tensor] = {}
        self._init_state()

    # ----------------------------------------------------------------------------------- interface
    def __call__(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        k = self._validate(jacobian, stats)
        if self.needs_jacobian and jacobian is None:
            raise ValueError(f"{self.name} needs the task Jacobian; got jacobian=None.")
        weights = self._weights(jacobian, stats)
        if weights.shape != (k,):
            raise RuntimeError(f"{self.name} returned weights of shape {tuple(weights.shape)}, expected ({k},).")
        # Never hand a non-finite update to the optimizer: fall back to equal weights (mean), chosen
        # on the device so that the call needs no host read.
        finite = torch.isfinite(weights).all()
        self._count_fallback(~finite)
        return torch.where(finite, weights, 1.0 / k)

    @property
    def fallbacks(self) -> int:
        """Calls that used a documented fallback. Reading it waits for the device (read it at log time)."""
        if self._fallbacks_device is None:
            return self._fallbacks_host
        return self._fallbacks_host + int(self._fallbacks_device)

    @fallbacks.setter
    def fallbacks(self, value: int) -> None:
        self._fallbacks_host = int(value)
        self._fallbacks_device = None

    def _count_fallback(self, used: bool | Tensor) -> None:
        """Record whether this call used its documented fallback (a bool, or a 0-dim bool tensor).

        A tensor is added to a counter on its own device, without reading it back.
        """
        if not isinstance(used, Tensor):
            self._fallbacks_host += int(used)
        elif self._fallbacks_device is None:
            self._fallbacks_device = used.detach().to(torch.int64).clone()
        else:   # in place (a CUDA-graph replay adds to the same counter), one kernel: int64 += bool
            self._fallbacks_device.add_(used.detach().to(self._fallbacks_device.device))

    def check(self) -> None:
        """Raise the ``ValueError`` that a call with ``deferred_checks = False`` would have raised.

        Reads the device masks of tasks with non-finite inputs accumulated since the last
        :meth:`reset` (one host synchronisation); does nothing when every input was finite.
        """
        if not self._non_finite:
            return
        names = list(self._non_finite)
        masks = (~torch.isfinite(torch.stack([self._non_finite[name].to("cpu", torch.float64) for name in names]))).tolist()
        for name, mask in zip(names, masks):
            if any(mask):
                tasks = [i for i, bad in enumerate(mask) if bad]
                raise ValueError(_non_finite_message(name, tasks))

    @abstractmethod
    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        """Return the ``[k]`` weights; inputs are already checked to be finite and consistent."""

    @property
    def learns_from_steps(self) -> bool:
        """True when the method overrides :meth:`after_step`: callers then re-evaluate the batch's
        losses after the optimizer step (one extra forward) and pass them in; others skip that cost."""
        return type(self).after_step is not Aggregator.after_step

    def after_step(self, stats: TaskStats) -> None:
        """Hook called after the optimizer step with the losses of the *same* batch re-evaluated.

        Only methods that learn from the effect of the step (FAMO) use it; the default does nothing.
        """

    # -------------------------------------------------------------------------------------- state
    def _init_state(self) -> None:
        """Set up the mutable state; called by ``__init__`` and :meth:`reset`."""

    def reset(self) -> None:
        """Forget everything learned during training (the constructor options stay)."""
        self.fallbacks = 0
        self._non_finite = {}
        self._init_state()

    def state_dict(self) -> dict[str, Any]:
        state = {"fallbacks": self.fallbacks}
        for attribute in self._state_attributes:
            value = getattr(self, attribute)
            if isinstance(value, torch.Generator):
                value = {"generator_state": value.get_state(), "device": str(value.device)}
            state[attribute] = copy.deepcopy(value)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"fallbacks", *self._state_attributes} - set(state) - set(self._added_state_attributes)
        if missing:
            raise ValueError(f"State for {self.name} lacks {sorted(missing)}; was it saved by another aggregator?")
        self.fallbacks = int(state["fallbacks"])
        for attribute in self._state_attributes:
            if attribute not in state:
                continue
            value = state[attribute]
            current = getattr(self, attribute)
            if isinstance(current, torch.Generator):
                device = torch.device(value.get("device", "cpu"))
                if current.device != device:  # saved after the method moved to the device of its inputs
                    current = torch.Generator(device=device)
                    setattr(self, attribute, current)
                current.set_state(value["generator_state"])
            else:
                setattr(self, attribute, copy.deepcopy(value))

    # ------------------------------------------------------------------------------- presentation
    def _options(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in options(self.name) if hasattr(self, p)}

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self._options().items())
        return f"{type(self).__name__}({args})"

    def __str__(self) -> str:
        return self.name

    # --------------------------------------------------------------------------------- validation
    def _validate(self, jacobian: Tensor | None, stats: TaskStats) -> int:
        if not isinstance(stats, TaskStats):
            raise TypeError(f"stats must be a TaskStats, got {type(stats).__name__}.")
        losses = stats.losses
        if losses.ndim != 1 or losses.shape[0] == 0:
            raise ValueError(f"stats.losses must be a non-empty [k] tensor, got shape {tuple(losses.shape)}.")
        k = losses.shape[0]
        rows = {"loss": losses.reshape(k, 1)}
        if jacobian is not None:
            if jacobian.ndim != 2 or jacobian.shape[0] != k:
                raise ValueError(
                    f"jacobian must be [k, n] with k={k} tasks (one row per loss), got shape {tuple(jacobian.shape)}."
                )
            rows["gradient"] = jacobian
        if stats.performance is not None:
            if stats.performance.shape != (k,):
                raise ValueError(
                    f"stats.performance must be a [{k}] tensor of Δm in percent, got shape {tuple(stats.performance.shape)}."
                )
            rows["performance drop Δm"] = stats.performance.reshape(k, 1)
        self._check_finite_rows(rows)
        return k

    def _deferring(self) -> bool:
        """Whether this call must not read values back: deferred checks, or inside a trace or a capture."""
        return self.deferred_checks or _tracing_or_capturing()

    def _check_finite_rows(self, inputs: dict[str, Tensor]) -> None:
        """Raise now naming the tasks whose row of an input (``[k, m]``, by what it is) has a NaN or inf, or,
        with ``deferred_checks``, add them to the device record that :meth:`check` reads."""
        # A row sum is NaN or ±inf when any entry is: one vectorised reduction per input, where
        # isfinite().all() would be several. It also flags a finite row whose sum overflows its dtype
        # (float32: |Σ| > 3e38); the eager path confirms entry by entry.
        sums = {what: rows.detach().sum(dim=1) for what, rows in inputs.items()}
        if self._deferring():
            # The running maximum of |Σ| per task, updated in place (so that it also accumulates across
            # CUDA-graph replays): NaN and inf stay in it (maximum propagates NaN), so check() finds
            # every non-finite call since the last reset.
            for what, total in sums.items():
                seen = self._non_finite.get(what)
                if seen is None or seen.shape != total.shape:
                    self._non_finite[what] = total.abs()
                else:
                    torch.maximum(seen, total.abs().to(seen.device, seen.dtype), out=seen)
            return
        if bool(torch.isfinite(torch.cat(list(sums.values()))).all()):
            return
        for what, rows in inputs.items():
            bad = ~torch.isfinite(rows.detach()).all(dim=1)
            if bad.any():
                raise ValueError(_non_finite_message(what, bad.nonzero().flatten().tolist()))


def _tracing_or_capturing() -> bool:
    """Inside ``torch.compile`` or a CUDA-graph capture a host read would break the graph: defer."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _non_finite_message(what: str, tasks: list[int]) -> str:
    return f"Non-finite {what} (NaN or inf) for task(s) {tasks}; check those tasks' losses and inputs."


# ------------------------------------------------------------------------------ argument checks
def check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    """Validate a numeric constructor argument in the torchjd style, naming the bad value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"Parameter `{name}` should be a number. Found `{name} = {value!r}`.")
    if value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"Parameter `{name}` should be {kind}. Found `{name} = {value!r}`.")
    return value


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    if value not in choices:
        raise ValueError(f"Parameter `{name}` should be one of {choices}. Found `{name} = {value!r}`.")
    return value


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Parameter `{name}` should be an integer >= {minimum}. Found `{name} = {value!r}`.")
    return value


def check_seed(seed: Any) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"Parameter `seed` should be an integer or None. Found `seed = {seed!r}`.")
    return seed


def seeded_generator(seed: int | None) -> torch.Generator:
    """The aggregator's own CPU generator; ``None`` draws its seed from torch's global generator."""
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,))))
    return generator


def generator_on(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` itself when it lives on ``device``, else a new generator there, seeded once from it.

    Random methods draw on the device of their inputs, so that a draw needs no copy and no host read;
    on the CPU the stream is the CPU generator's, on a GPU a new stream seeded from it (the first
    call on a GPU does that one host-side draw).
    """
    if generator.device == device or (device.type == generator.device.type == "cuda" and device.index is None):
        return generator
    moved = torch.Generator(device=device)
    moved.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    return moved
