"""What a paper benchmark is made of: :class:`Benchmark`, its :class:`MetricColumn` s and :class:`Splits`.

A benchmark is one class that owns everything about its data set and nothing about training:

* data — :meth:`Benchmark.splits` reads the published files from a local ``data_dir`` into
  ``torch.utils.data.Dataset`` s; :meth:`Benchmark.loader` batches them (a plain ``DataLoader`` unless the
  data need their own collation, e.g. PyG graphs); a missing or malformed directory raises
  :class:`BenchmarkDataError` with the expected layout (:attr:`Benchmark.layout`);
* model — :meth:`Benchmark.build_model` and :meth:`Benchmark.shared_parameters` (what the aggregator's
  Jacobian is taken over, as the authors' code chooses it);
* objective — :meth:`Benchmark.forward` and :meth:`Benchmark.losses` (the ``[k]`` per-task losses);
* evaluation — :meth:`Benchmark.new_metrics` returns a :class:`MetricAccumulator` that sees every batch of a
  split and returns the paper's metric columns (:attr:`Benchmark.columns`, in the paper's table units, so
  the single-task row of the paper's table is a plain constant in ``configs/bench/<name>.yaml``);
* cost — :meth:`Benchmark.synthetic_batch` builds one batch of random tensors of the real input sizes, what
  ``python -m mtrl.bench supervised`` times a training step on.

The training loop, Δm, the STL references, ``results.json`` and the sweeps are the framework's
(:mod:`mtrl.supervised.benchmarks.training`); a benchmark never sees an aggregator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["Benchmark", "BenchmarkDataError", "MetricColumn", "MetricAccumulator", "Splits", "move_to"]


class BenchmarkDataError(FileNotFoundError):
    """The data directory is missing or does not hold the benchmark's layout; the message names the layout
    expected and where the data are published (``python -m mtrl.supervised`` exits with code 2)."""


@dataclass(frozen=True)
class MetricColumn:
    """One column of the paper's results table.

    Attributes:
        name: the column's key in ``results.json`` and the STL row (``"mIoU"``, ``"abs_err"``).
        task: the task it measures; PIVRG's per-task score is the mean Δm of a task's columns.
        higher_is_better: δ_i of PIVRG Eq. 3 (mIoU, pixel accuracy, within-t° shares: True; errors: False).
        label: the header the report prints (default: ``name``).
    """

    name: str
    task: str
    higher_is_better: bool
    label: str = ""

    @property
    def header(self) -> str:
        return self.label or self.name


class Splits(NamedTuple):
    """The benchmark's data sets; ``val`` is ``None`` where the benchmark has no validation split."""

    train: Dataset
    val: Dataset | None
    test: Dataset


class MetricAccumulator(Protocol):
    """Accumulates a whole split, batch after batch, then gives the metric columns (paper's table units)."""

    def update(self, outputs: Any, batch: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (also inside tuples, lists, dicts and objects with ``.to``) on ``device``."""
    if isinstance(batch, Tensor) or hasattr(batch, "to") and not isinstance(batch, (tuple, list, dict)):
        return batch.to(device)
    if isinstance(batch, tuple):
        return type(batch)(*(move_to(b, device) for b in batch)) if hasattr(batch, "_fields") else \
            tuple(move_to(b, device) for b in batch)
    if isinstance(batch, list):
        return [move_to(b, device) for b in batch]
    if isinstance(batch, dict):
        return {key: move_to(value, device) for key, value in batch.items()}
    return batch


class Benchmark(ABC):
    """A paper benchmark: data, model, losses and metrics (see the module docstring).

    Subclasses set the class attributes and implement the abstract methods, then register themselves
    with :func:`mtrl.supervised.benchmarks.register`. ``options`` is the benchmark's config
    (``configs/bench/<name>.yaml`` after command-line overrides); a benchmark reads its own keys from it.

    Class attributes:
        name: the ``bench=`` value.
        tasks: the task names, in the order of :meth:`losses`.
        columns: the paper's metric columns, grouped by task in table order.
        performance_split: the split whose metrics give the Δm that PIVRG-style aggregators read:
            ``"val"`` where the benchmark has a validation split, ``"train"`` otherwise (PIVRG Sec. 4.1).
        noisy_tasks: the tasks whose training labels ``noise=<level>`` corrupts (ExcessMTL Sec. 4.2);
            empty where the benchmark has no noise option.
        layout: the on-disk layout expected under ``data_dir`` and where the data are published.
        train_size: the real training split's size (``python -m mtrl.bench supervised`` turns the time per
            step into a time per epoch with it); ``None`` where unknown.
        quick_options: options that shrink :meth:`synthetic_batch` for a CI-sized ``--quick`` benchmark run
            (e.g. a smaller image size); ``{}`` keeps the real sizes.
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]
    columns: ClassVar[tuple[MetricColumn, ...]]
    performance_split: ClassVar[str] = "val"
    noisy_tasks: ClassVar[tuple[str, ...]] = ()
    layout: ClassVar[str] = ""
    train_size: ClassVar[int | None] = None
    quick_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task_columns(self, task: str) -> list[MetricColumn]:
        return [column for column in self.columns if column.task == task]

    # ------------------------------------------------------------------------------------------- data
    @abstractmethod
    def splits(self, data_dir: Path, *, seed: int, noise: float = 0.0) -> Splits:
        """The train / val / test data sets read from ``data_dir``. ``seed`` draws anything random in them
        (a split drawn by shuffling, the label noise); ``noise`` is the share of the :attr:`noisy_tasks`'
        training samples whose labels are corrupted (the framework passes 0 unless the benchmark has
        noisy tasks). Raises :class:`BenchmarkDataError`."""

    def loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool,
               generator: torch.Generator | None = None) -> Iterable[Any]:
        """Batches of ``dataset``. Training batches are shuffled with ``generator`` and the last partial
        batch is kept (as the authors' loaders do)."""
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          num_workers=int(self.options.get("num_workers") or 0))

    def to_device(self, batch: Any, device: torch.device) -> Any:
        return move_to(batch, device)

    # ------------------------------------------------------------------------------------------ model
    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (the caller seeds the RNG first)."""

    def shared_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the per-task Jacobian is taken over; default ``model.shared``'s."""
        return list(model.shared.parameters())

    @abstractmethod
    def forward(self, model: nn.Module, batch: Any) -> Any:
        """The model's outputs on a batch (what :meth:`losses` and the metric accumulators read)."""

    @abstractmethod
    def losses(self, outputs: Any, batch: Any) -> Tensor:
        """The ``[k]`` per-task training losses, in the order of :attr:`tasks`."""

    @abstractmethod
    def new_metrics(self) -> MetricAccumulator:
        """An empty accumulator of :attr:`columns` over one split."""

    # ------------------------------------------------------------------------------------------- cost
    @abstractmethod
    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> Any:
        """One training batch of random tensors with the real data's sizes and types (for timing)."""


def check_columns(columns: Sequence[MetricColumn], tasks: Sequence[str]) -> None:
    """Every task has a column, every column a known task, and names are unique."""
    names = [column.name for column in columns]
    if len(set(names)) != len(names):
        raise ValueError(f"Metric column names must be unique, got {names}.")
    unknown = {column.task for column in columns} - set(tasks)
    missing = set(tasks) - {column.task for column in columns}
    if unknown or missing:
        raise ValueError(f"Columns name unknown tasks {sorted(unknown)} or leave tasks {sorted(missing)} without a column.")
