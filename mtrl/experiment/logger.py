"""TensorBoard logging with stable tags, the accumulators behind them, and the watch on the run's log file.

Update outputs stay on the training device: :class:`UpdateAccumulator` sums them there and moves the
window's means to the host in one transfer every ``log_every`` steps, so training steps never wait on
the device for logging.

Tags (``<task>`` is the Meta-World task name)::

    eval/success/<task>, eval/success_mean, eval/best_success_mean, eval/return/<task>
    train/success/<task>, train/return/<task>, train/success_mean, train/episodes
    loss/critic/<task>, loss/actor/<task>, alpha/<task>
    agg/critic/weight/<task>, agg/actor/weight/<task>, agg/critic/fallbacks, agg/actor/fallbacks
    agg/delta_m/<task>                      (the Δm handed to the aggregators)
    agg/omega/<task>, agg/var_dm            (aggregators exposing last_omega / last_var_delta_m: PIVRG)
    perf/env_steps_per_s, perf/updates_per_s  (training steps, those with an update, and updates per second
                                               of their wall time: evaluations and checkpoints left out)
    perf/warmup_env_steps_per_s             (warm-up steps, without updates, per second of their wall time:
                                             written for the windows that hold some; about 10x faster)
    perf/env_restarts, train/skipped_updates  (crashed environment workers restarted; updates dropped by
                                               on_nonfinite=skip), both totals over the run

The last window of a run (shorter than ``log_every``) is written too, at the end and on ctrl-C.

Events are written by :class:`EventFile`, in this thread, once per window (:meth:`TrainLogger.flush`):
a write the disk refuses raises :class:`OSError` here, with the file cut back to its last whole
record, instead of failing later in a writer thread.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["UpdateAccumulator", "EpisodeWindow", "EventFile", "TrainLogger", "LogFileWatch", "UPDATE_TAGS"]

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
        if outputs.keys() != self._sums.keys():
            for key, value in outputs.items():
                if key not in self._sums:
                    self._sums[key] = torch.zeros_like(value, dtype=torch.float32)
        keys = list(outputs)
        torch._foreach_add_([self._sums[key] for key in keys], [outputs[key].detach() for key in keys])
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


class EventFile:
    """A TensorBoard event file written in the caller's thread: scalars are kept until :meth:`flush`.

    The file appears at the first flush (``events.out.tfevents.<time>.<host>.<pid>.<n>``, TensorBoard's naming).
    ``purge_step`` (a resumed run): TensorBoard hides the events of earlier files from that step on, as
    ``torch.utils.tensorboard.SummaryWriter(purge_step=...)`` does.
    """

    _files_opened = 0

    def __init__(self, directory: str | Path, purge_step: int | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self.directory = Path(directory)
        self.path: Path | None = None
        self._file: Any = None
        self._size = 0
        self._pending: list[Any] = [Event(wall_time=time.time(), file_version="brain.Event:2")]
        if purge_step is not None:
            self._pending += [Event(wall_time=time.time(), step=purge_step, file_version="brain.Event:2"),
                              Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START))]

    def scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._pending.append(Event(wall_time=time.time(), step=int(step),
                                   summary=Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])))

    def flush(self) -> None:
        """Append the pending events in one write.

        Raises:
            OSError: the disk refused it; the file is cut back to its last whole record and the events are dropped.
        """
        if not self._pending:
            return
        from tensorboard.summary.writer.record_writer import RecordWriter

        records: list[bytes] = []
        writer = RecordWriter(_Collect(records))
        for event in self._pending:
            writer.write(event.SerializeToString())
        data, self._pending = b"".join(records), []
        if self._file is None:
            EventFile._files_opened += 1
            name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                    f"{EventFile._files_opened}")
            self.path = self.directory / name
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)   # noqa: SIM115 - kept open for the run
        try:
            written = 0
            while written < len(data):   # a raw write may take part of the data
                written += self._file.write(data[written:])
        except OSError as error:
            os.ftruncate(self._file.fileno(), self._size)
            raise OSError(error.errno, error.strerror, str(self.path)) from error
        self._size += len(data)

    def close(self) -> None:
        """Close the file; pending events are dropped (flush first to keep them)."""
        self._pending = []
        if self._file is not None:
            self._file.close()
            self._file = None


class _Collect:
    """A file-like sink for tensorboard's RecordWriter: the records go to a list."""

    def __init__(self, records: list[bytes]) -> None:
        self.records = records

    def write(self, data: bytes) -> None:
        self.records.append(data)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


class TrainLogger:
    """The run's TensorBoard tags (above) and the throughput of each logging window.

    A window counts its steps and their wall time apart for warm-up steps (no update) and training steps
    (with one); the time the trainer spends on evaluations and checkpoints is left out of both.
    """

    def __init__(self, run_dir: Path, task_names: list[str], updates: UpdateAccumulator, episodes: EpisodeWindow,
                 purge_step: int | None = None) -> None:
        self.task_names = list(task_names)
        self.events = EventFile(run_dir, purge_step)
        self.updates, self.episodes = updates, episodes   # filled by the training steps
        self._steps = {True: 0, False: 0}          # training (updating) and warm-up steps of the window
        self._seconds = {True: 0.0, False: 0.0}
        self._last = time.perf_counter()

    # ------------------------------------------------------------------------------------ helpers
    def per_task(self, prefix: str, values: Any, step: int, mask: np.ndarray | None = None) -> None:
        array = _to_numpy(values).reshape(-1)
        if array.shape[0] != len(self.task_names):
            self.events.scalar(prefix, float(array.mean()), step)   # not per task: log the mean
            return
        for index, name in enumerate(self.task_names):
            if mask is None or mask[index]:
                self.events.scalar(f"{prefix}/{name}", float(array[index]), step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.events.scalar(tag, float(value), step)

    def count_step(self, updating: bool) -> None:
        """One vector step ended now: ``updating`` whether it held an update (training) or not (warm-up)."""
        now = time.perf_counter()
        self._steps[updating] += 1
        self._seconds[updating] += now - self._last
        self._last = now

    @property
    def window_open(self) -> bool:
        """Steps were taken since the last :meth:`log_window` (the last, partial window of a run)."""
        return self._steps[True] + self._steps[False] > 0

    def exclude_time(self) -> None:
        """Leave the time since the last counted step (an evaluation, a checkpoint) out of the throughput."""
        self._last = time.perf_counter()

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

        if self._steps[True]:
            seconds = max(self._seconds[True], 1e-9)
            self.scalar("perf/env_steps_per_s", self._steps[True] / seconds, step)
            self.scalar("perf/updates_per_s", updates_in_window / seconds, step)
        if self._steps[False]:
            self.scalar("perf/warmup_env_steps_per_s", self._steps[False] / max(self._seconds[False], 1e-9), step)
        self._steps = {True: 0, False: 0}
        self._seconds = {True: 0.0, False: 0.0}
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
        for name, value in (record.get("return_per_task") or {}).items():
            self.scalar(f"eval/return/{name}", value, step)
        self.scalar("eval/success_mean", record["mean"], step)
        self.scalar("eval/best_success_mean", best_mean, step)

    def flush(self) -> None:
        """Write the pending events (raises OSError when the disk refuses)."""
        self.events.flush()

    def close(self) -> None:
        self.events.close()


class LogFileWatch:
    """Notices when a log file inside the run directory (Hydra's ``train.log``) can no longer be written.

    :mod:`logging` reports a failed write of a handler by printing a traceback and going on; for the
    handlers writing into ``run_dir`` this keeps the first refused write instead, silently (also for the
    lines logged after it), and :meth:`check` raises it where the trainer can stop cleanly. Other logging
    errors (a bad format string) are reported as usual.
    """

    def __init__(self, run_dir: str | Path) -> None:
        directory = Path(run_dir).resolve()
        self.error: OSError | None = None
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().parent == directory:
                handler.handleError = self._keeper(handler)   # type: ignore[method-assign]

    def _keeper(self, handler: logging.FileHandler) -> Any:
        report = handler.handleError

        def keep(record: logging.LogRecord) -> None:
            error = sys.exc_info()[1]
            if not isinstance(error, OSError):
                report(record)
            elif self.error is None:
                self.error = OSError(error.errno, error.strerror, handler.baseFilename)
        return keep

    def check(self) -> None:
        """Raise the first refused write of a watched log file (an OSError naming the file), if any."""
        if self.error is not None:
            raise self.error
