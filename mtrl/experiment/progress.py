"""The console's progress bar: the phase, a rate and an ETA over training steps only, the last evaluation.

::

    mt10/pivrg/seed0:  12%|███▏      | 24000/200000 [13:02, training, 151 steps/s, ETA 19:25, eval 0.12 (best 0.15)]

Phases: ``warm-up`` (random actions, no updates), ``training``, ``training + eval`` (an evaluation runs
in its worker meanwhile) and ``evaluating`` (the loop waits for an evaluation, or runs one inline). Warm-up
steps cost no update and run about ten times faster than training steps, so a rate over all steps
says little about what is left: the rate shown is that of the current phase, and the ETA counts the
remaining training steps at the training rate (over the last :attr:`Progress.window_s` seconds of
training, evaluations and checkpoints included), plus the remaining warm-up steps at the warm-up rate.
Before the first training steps there is no ETA.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["Progress"]


class Progress:
    """Tracks the steps of a run and shows them in a tqdm bar (off when ``enabled`` is false).

    Args:
        total: the run's steps; initial: steps already done (a resumed run); learn_from: its first training step.
        description: the bar's label; clock: seconds (``time.perf_counter``; the tests pass a fake one).
        refresh_s: the bar is redrawn at most this often; per step the cost is one clock read.
    """

    window_s = 120.0
    """The training rate is measured over this many seconds of training (all of it, at first)."""

    def __init__(self, total: int, initial: int, learn_from: int, description: str, enabled: bool,
                 clock: Callable[[], float] = time.perf_counter, refresh_s: float = 0.5,
                 file: TextIO | None = None) -> None:
        self.total, self.step, self.learn_from = total, initial, learn_from
        self.clock, self.refresh_s = clock, refresh_s
        self.phase = "warm-up" if initial < learn_from else "training"
        self.evaluation_running = False
        self.success: tuple[float, float] | None = None     # (last mean success, best)
        self._samples: dict[bool, deque[tuple[float, int]]] = {True: deque(), False: deque()}  # (time, step)
        self._next_refresh = 0.0
        self._updating: bool | None = None
        self._last_time = clock()
        self.bar = tqdm(total=total, initial=min(initial, total), unit="step", dynamic_ncols=True, disable=not enabled,
                        desc=description, file=file,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    # ------------------------------------------------------------------------------------ events
    def advance(self, step: int, updating: bool) -> None:
        """Step ``step`` is done; ``updating``: it held an update (training) or not (warm-up)."""
        now = self.clock()
        samples = self._samples[updating]
        if updating != self._updating or not samples:   # the phase starts where the previous step ended
            samples.clear()
            samples.append((self._last_time, step - 1))
        self._updating, self._last_time, self.step = updating, now, step
        if now >= self._next_refresh:
            samples.append((now, step))
            while len(samples) > 2 and now - samples[1][0] >= self.window_s:
                samples.popleft()
            self.phase = "training" if updating else "warm-up"
            self._redraw(now)

    def set_phase(self, phase: str) -> None:
        """``evaluating`` while the loop waits for an evaluation; the step phase again after."""
        self.phase = phase
        self._redraw(self.clock())

    def evaluation(self, running: bool) -> None:
        """An evaluation runs (in its worker) while training goes on, or no longer does."""
        self.evaluation_running = running

    def evaluated(self, mean: float, best: float) -> None:
        """The last recorded evaluation's mean success over tasks, and the best so far."""
        self.success = (mean, best)
        self._redraw(self.clock())

    # ------------------------------------------------------------------------------------ fields
    def rate(self, training: bool) -> float | None:
        """Steps per second of the phase (training or warm-up) over its recent steps; None before two samples."""
        samples = self._samples[training]
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return None
        return (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])

    def eta(self) -> float | None:
        """Seconds left: warm-up steps at the warm-up rate, training steps at the training rate."""
        training = self.rate(True)
        if training is None:
            return None
        warmup_left = max(0, self.learn_from - self.step)
        warmup = self.rate(False) if warmup_left else None
        return (self.total - max(self.step, self.learn_from)) / training + (warmup_left / warmup if warmup else 0.0)

    def fields(self) -> dict[str, Any]:
        """What the bar shows after its bar: phase, rate (steps/s of that phase), eta (s), success (mean, best)."""
        phase = self.phase
        if phase == "training" and self.evaluation_running:
            phase = "training + eval"
        return {"phase": phase, "rate": self.rate(self.phase != "warm-up"), "eta": self.eta(),
                "success": self.success}

    def text(self) -> str:
        fields = self.fields()
        parts = [fields["phase"]]
        if fields["rate"] is not None:
            parts.append(f"{fields['rate']:.3g} steps/s")
        if fields["eta"] is not None:
            parts.append(f"ETA {tqdm.format_interval(fields['eta'])}")
        if fields["success"] is not None:
            parts.append(f"eval {fields['success'][0]:.2f} (best {fields['success'][1]:.2f})")
        return ", ".join(parts)

    # ------------------------------------------------------------------------------------ drawing
    def _redraw(self, now: float) -> None:
        self._next_refresh = now + self.refresh_s
        if self.bar.disable:
            return
        self.bar.n = min(self.step, self.total)
        self.bar.set_postfix_str(self.text(), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.n = min(self.step, self.total)
        self.bar.set_postfix_str(self.text(), refresh=False)
        self.bar.close()
