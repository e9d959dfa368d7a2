"""What every benchmark shares: the machine's description, timing, tables and the JSON file."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from mtrl.experiment.checkpoint import atomic_write_json
from mtrl.validation import fail, non_negative_int_type, positive_int_type as positive_int

__all__ = ["machine_info", "synchronize", "timed_median", "print_table", "write_json", "names", "positive_int",
           "non_negative_int_type", "usage_error"]


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """CPU count, GPU name, library versions: what a reader needs to compare two JSON files."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "device": None if device is None else str(device),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for module in ("numpy", "envpool", "mujoco", "metaworld", "gymnasium"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - absent or broken: say so, do not fail the benchmark
            info[module] = None
    return info


def synchronize(device: str | torch.device | None) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_median(fn: Callable[[], Any], repeats: int, warmup: int = 1,
                 device: str | torch.device | None = None) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> str:
    """Print ``rows`` as a Markdown table (columns: the given ones, else the first row's keys); returns it."""
    if not rows:
        text = f"{title}\n(no rows)" if title else "(no rows)"
        print(text)
        return text
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in cells]
    text = "\n".join(([f"\n{title}\n"] if title else []) + lines)
    print(text, flush=True)
    return text


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` to ``path`` (parents created), atomically
    (:func:`mtrl.experiment.checkpoint.atomic_write_json`)."""
    atomic_write_json(result, path)
    return Path(path)


def names(text: str) -> list[str]:
    """An argparse ``type``: a comma-separated list, blanks dropped (``"ls, pivrg,"`` -> ``["ls", "pivrg"]``)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def usage_error(message: str) -> NoReturn:
    """Bad options found after parsing: one line on stderr that says what to change, exit code 2."""
    fail("mtrl.bench", message)
