"""Success bookkeeping: the evaluation history (final and best) and the Δm fed to PIVRG-style aggregators."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtrl.metrics import success_drop

__all__ = ["EvalHistory", "PerformanceTracker"]


class EvalHistory:
    """Every evaluation's per-task success (and mean episode return); the final one and the best by mean success.

    The best is the evaluation with the highest mean success over tasks (the paper's reported
    metric; ties keep the earlier one). ``best_per_task`` is each task's own maximum over evaluations.
    """

    def __init__(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None

    def add(self, step: int, success: dict[str, float], returns: dict[str, float] | None = None) -> dict[str, Any]:
        """Record the evaluation of ``step``: success rate and (when given) mean episode return per task."""
        per_task = {name: float(success[name]) for name in self.task_names}
        record = {"step": int(step), "mean": float(np.mean(list(per_task.values()))), "per_task": per_task}
        if returns is not None:
            record["return_per_task"] = {name: float(returns[name]) for name in self.task_names}
        self.history.append(record)
        if self.best is None or record["mean"] > self.best["mean"]:
            self.best = record
        return record

    @property
    def final(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    @property
    def last_step(self) -> int | None:
        return self.history[-1]["step"] if self.history else None

    def best_per_task(self) -> dict[str, float] | None:
        if not self.history:
            return None
        return {name: max(record["per_task"][name] for record in self.history) for name in self.task_names}

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history, self.best = [], None
        for record in state["history"]:
            self.add(record["step"], record["per_task"], record.get("return_per_task"))


class PerformanceTracker:
    """The per-task performance drop Δm (percent) handed to the aggregators at every update.

    ``Δm_i = 100 (s_i^STL - s_i) / s_i^STL`` (PIVRG paper Sec. 4.3, :func:`mtrl.metrics.success_drop`)
    where ``s_i`` is, with ``source="eval"``, task ``i``'s success in the latest evaluation (refreshed
    after every evaluation) or, with ``source="train"``, its success over its last ``window`` training
    episodes (refreshed when one ends). Δm is 0 until the first evaluation (``eval``) or until every
    task has finished a training episode (``train``).

    The device copy in :attr:`delta_m` changes only on those refreshes, so updates read it without a
    host round-trip.
    """

    def __init__(self, source: str, reference: np.ndarray, window: int, device: torch.device) -> None:
        if source not in ("eval", "train"):
            raise ValueError(f"performance source should be `eval` or `train`, got {source!r}.")
        self.source, self.window, self.device = source, int(window), device
        self.reference = np.asarray(reference, dtype=np.float64)
        k = self.reference.shape[0]
        self.recent: list[deque[float]] = [deque(maxlen=self.window) for _ in range(k)]
        self.values = np.zeros(k, dtype=np.float64)        # host copy of Δm, for logging
        self.delta_m: Tensor = torch.zeros(k, dtype=torch.float32, device=device)
        self._stale = False

    def on_evaluation(self, success: np.ndarray) -> None:
        if self.source == "eval":
            self._set(np.asarray(success, dtype=np.float64))

    def on_episode(self, task: int, success: bool) -> None:
        self.recent[task].append(float(success))
        if self.source == "train":
            self._stale = True

    def current(self) -> Tensor:
        """Δm ``[k]`` float32 on the training device."""
        if self._stale:
            self._stale = False
            if all(self.recent):
                self._set(np.asarray([np.mean(r) for r in self.recent], dtype=np.float64))
        return self.delta_m

    def _set(self, success: np.ndarray) -> None:
        self.values = success_drop(torch.as_tensor(success), torch.as_tensor(self.reference)).numpy()
        self.delta_m = torch.as_tensor(self.values, dtype=torch.float32).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values.tolist(), "recent": [list(r) for r in self.recent]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for queue, saved in zip(self.recent, state["recent"]):
            queue.clear()
            queue.extend(saved)
        self.values = np.asarray(state["values"], dtype=np.float64)
        self.delta_m = torch.as_tensor(self.values, dtype=torch.float32).to(self.device)
        self._stale = False
