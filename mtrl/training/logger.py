"""TensorBoard logging with stable tags, and the accumulators behind them.

Update outputs stay on the training device: :class:`UpdateAccumulator` sums them there and moves the
window's means to the host in one transfer every ``log_every`` steps, so training steps never wait on
the device for logging.

Tags (``<task>`` is the Meta-World task name)::

    eval/success/<task>, eval/success_mean, eval/best_success_mean
    train/success/<task>, train/return/<task>, train/success_mean, train/episodes
    loss/critic/<task>, loss/actor/<task>, alpha/<task>
    agg/critic/weight/<task>, agg/actor/weight/<task>, agg/critic/fallbacks, agg/actor/fallbacks
    agg/delta_m/<task>                      (the Δm handed to the aggregators)
    agg/omega/<task>, agg/var_dm            (aggregators exposing last_omega / last_var_delta_m: PIVRG)
    perf/env_steps_per_s, perf/updates_per_s  (vector steps / updates per second of training wall time:
                                               evaluations and checkpoints left out)
    perf/env_restarts, train/skipped_updates  (crashed environment workers restarted; updates dropped by
                                               on_nonfinite=skip), both totals over the run

The last window of a run (shorter than ``log_every``) is written too, at the end and on ctrl-C.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

__all__ = ["UpdateAccumulator", "EpisodeWindow", "TrainLogger", "UPDATE_TAGS"]

#: Agent update output key -> TensorBoard tag prefix (per-task values get ``/<task>`` appended).
UPDATE_TAGS = {
    "loss/critic": "loss/critic",
    "loss/actor": "loss/actor",
    "alpha": "alpha",
    "weights/critic": "agg/critic/weight",
    "weights/actor": "agg/actor/weight",
}


class UpdateAccumulator:
    """Sums the agent's per-update outputs on their device; :meth:`means` syncs once per window."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self.count = 0

    @torch.no_grad()
    def add(self, outputs: Mapping[str, Tensor]) -> None:
        for key, value in outputs.items():
            value = value.detach()
            total = self._sums.get(key)
            self._sums[key] = value.clone() if total is None else total.add_(value)
        self.count += 1

    def peek(self) -> dict[str, np.ndarray]:
        """The window's means so far (host arrays), keeping the window open (the divergence guard reads them)."""
        sums, count = dict(self._sums), self.count
        means = self.means()
        self._sums, self.count = sums, count
        return means

    def means(self) -> dict[str, np.ndarray]:
        """The window's mean of every output (host arrays), then start a new window."""
        if not self.count:
            return {}
        keys = list(self._sums)
        flat = torch.cat([self._sums[key].reshape(-1).float() for key in keys]).cpu().numpy() / self.count
        result, offset = {}, 0
        for key in keys:
            size = self._sums[key].numel()
            result[key] = flat[offset:offset + size].reshape(self._sums[key].shape)
            offset += size
        self._sums, self.count = {}, 0
        return result


class EpisodeWindow:
    """Training episodes that ended in the current logging window, per task."""

    def __init__(self, num_tasks: int) -> None:
        self.num_tasks = num_tasks
        self.reset()

    def reset(self) -> None:
        self.success = np.zeros(self.num_tasks)
        self.returns = np.zeros(self.num_tasks)
        self.count = np.zeros(self.num_tasks, dtype=np.int64)

    def add(self, task: int, success: bool, episode_return: float) -> None:
        self.success[task] += float(success)
        self.returns[task] += float(episode_return)
        self.count[task] += 1


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


class TrainLogger:
    """The run's TensorBoard writer with the tags above."""

    def __init__(self, run_dir: Path, task_names: list[str], purge_step: int | None = None) -> None:
        self.task_names = list(task_names)
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.updates = UpdateAccumulator()
        self.episodes = EpisodeWindow(len(task_names))
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self._excluded = 0.0

    # ------------------------------------------------------------------------------------ helpers
    def per_task(self, prefix: str, values: Any, step: int, mask: np.ndarray | None = None) -> None:
        array = _to_numpy(values).reshape(-1)
        if array.shape[0] != len(self.task_names):
            self.writer.add_scalar(prefix, float(array.mean()), step)   # not per task: log the mean
            return
        for index, name in enumerate(self.task_names):
            if mask is None or mask[index]:
                self.writer.add_scalar(f"{prefix}/{name}", float(array[index]), step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, float(value), step)

    def count_step(self) -> None:
        self._window_steps += 1

    @property
    def window_open(self) -> bool:
        """Steps were taken since the last :meth:`log_window` (the last, partial window of a run)."""
        return self._window_steps > 0

    def exclude_time(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation, a checkpoint) out of the window's throughput."""
        self._excluded += seconds

    # ----------------------------------------------------------------------------------- windows
    def log_window(self, step: int, aggregators: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Write the window's losses, training episodes, aggregator state and throughput."""
        updates_in_window = self.updates.count
        means = self.updates.means()
        for key, value in means.items():
            self.per_task(UPDATE_TAGS.get(key, key), value, step)

        window = self.episodes
        ended = window.count > 0
        if ended.any():
            rate = np.divide(window.success, np.maximum(window.count, 1))
            self.per_task("train/success", rate, step, mask=ended)
            self.per_task("train/return", np.divide(window.returns, np.maximum(window.count, 1)), step, mask=ended)
            self.scalar("train/success_mean", float(rate[ended].mean()), step)
            self.scalar("train/episodes", float(window.count.sum()), step)
        window.reset()

        for role, aggregator in aggregators.items():
            self.scalar(f"agg/{role}/fallbacks", getattr(aggregator, "fallbacks", 0), step)
        self.log_aggregator_extras(step, aggregators)

        elapsed = max(time.perf_counter() - self._window_start - self._excluded, 1e-9)
        self.scalar("perf/env_steps_per_s", self._window_steps / elapsed, step)
        self.scalar("perf/updates_per_s", updates_in_window / elapsed, step)
        self._window_start, self._window_steps, self._excluded = time.perf_counter(), 0, 0.0
        return means

    def log_aggregator_extras(self, step: int, aggregators: Mapping[str, Any]) -> None:
        """PIVRG's ω and Var(Δm): the first aggregator (critic first) that exposes them."""
        for aggregator in aggregators.values():
            omega = getattr(aggregator, "last_omega", None)
            if omega is not None:
                self.per_task("agg/omega", omega, step)
                break
        for aggregator in aggregators.values():
            var_dm = getattr(aggregator, "last_var_delta_m", None)
            if var_dm is not None:
                self.scalar("agg/var_dm", float(_to_numpy(var_dm).reshape(-1)[0]), step)
                break

    def log_evaluation(self, step: int, record: dict[str, Any], best_mean: float) -> None:
        for name, value in record["per_task"].items():
            self.scalar(f"eval/success/{name}", value, step)
        self.scalar("eval/success_mean", record["mean"], step)
        self.scalar("eval/best_success_mean", best_mean, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def finite(values: Mapping[str, np.ndarray]) -> bool:
    return all(math.isfinite(float(x)) for value in values.values() for x in np.ravel(value))
