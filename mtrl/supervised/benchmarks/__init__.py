"""The papers' supervised benchmarks (PIVRG Tables 1–3 and 5, ExcessMTL, RLW), one command each.

    python -m mtrl.supervised bench=nyuv2 data_dir=~/data/nyuv2 agg=pivrg seed=0
    python -m mtrl.supervised --multirun bench=nyuv2 agg=ls,pivrg,nashmtl seed=0,1,2 data_dir=~/data/nyuv2
    python -m mtrl.report runs/supervised/multirun/<time>        # the paper's table, mean ± s.e. over seeds

How a benchmark plugs in (one module per benchmark, found whole in one file):

1. Subclass :class:`Benchmark` (:mod:`._base`): class attributes ``name``, ``tasks``, ``columns``
   (:class:`MetricColumn`: name, task, direction), ``performance_split`` (``"val"`` where the benchmark has a
   validation split, ``"train"`` otherwise: the split PIVRG's ω reads, PIVRG Sec. 4.1) and ``layout`` (the
   on-disk layout and where the data are published); methods ``splits`` (Datasets from ``data_dir``; raise
   :class:`BenchmarkDataError` when it is missing or malformed), ``build_model``, ``shared_parameters``,
   ``forward``, ``losses`` (``[k]``), ``new_metrics`` (a whole-split accumulator returning the columns in the
   paper's table units) and ``synthetic_batch`` (random tensors of the real sizes, for
   ``python -m mtrl.bench supervised``, which also reads ``train_size`` for a time per epoch and
   ``quick_options`` for its CI-sized run). Override ``loader`` when the data need their own batching.
2. Decorate the class with :func:`register` and add ``"<name>": "<module>"`` to :data:`MODULES` so that
   :func:`get` can import it on demand (benchmarks with heavy optional imports stay lazy).
3. Add ``configs/bench/<name>.yaml`` (``# @package bench``) with the paper's budget and optimiser as
   defaults, every key commented: ``name``, ``epochs``, ``batch_size``, ``eval_batch_size``, ``optimizer``,
   ``scheduler``, ``report``, ``stl`` (the STL row of the paper's table, ``{source, values}``), ``agg_overrides``
   and the benchmark's own keys (read from ``self.options``). :data:`FRAMEWORK_KEYS` lists the keys the
   framework reads.

The framework (:mod:`.training`) then trains with :class:`mtrl.supervised.MultiTaskTrainer`, evaluates the
splits every epoch, feeds the per-task Δm of ``performance_split`` to PIVRG-style aggregators, and writes
``results.json`` (the columns, Δm, Var[Δm], the STL row used, the history). Δm is computed over the metric
columns (:mod:`.delta`).
"""

from __future__ import annotations

import importlib

from mtrl.supervised.benchmarks._base import (Benchmark, BenchmarkDataError, MetricAccumulator, MetricColumn, Splits,
                                              check_columns, move_to)

__all__ = ["Benchmark", "BenchmarkDataError", "MetricAccumulator", "MetricColumn", "Splits", "move_to",
           "register", "get", "available", "MODULES", "FRAMEWORK_KEYS"]

#: ``bench=`` name -> module of this package that registers it (imported on first use).
MODULES: dict[str, str] = {
    "nyuv2": "nyuv2",
    "cityscapes": "cityscapes",
    "qm9": "qm9",
    "celeba": "celeba",
    "officehome": "office",
    "office31": "office",
    "sarcos": "sarcos",
}

#: Keys of ``configs/bench/<name>.yaml`` that the framework (not the benchmark) reads.
FRAMEWORK_KEYS: tuple[str, ...] = (
    "name", "epochs", "batch_size", "eval_batch_size", "optimizer", "scheduler", "max_grad_norm", "report",
    "stl", "agg_overrides", "max_steps_per_epoch", "max_eval_batches", "num_workers",
)

_REGISTRY: dict[str, type[Benchmark]] = {}


def register(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make ``cls`` available as ``bench=<cls.name>``."""
    check_columns(cls.columns, cls.tasks)
    if cls.performance_split not in ("train", "val"):
        raise ValueError(f"{cls.__name__}.performance_split should be 'train' or 'val'. Found {cls.performance_split!r}.")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """The ``bench=`` names of the paper benchmarks."""
    return sorted(set(MODULES) | set(_REGISTRY))


def get(name: str) -> type[Benchmark]:
    """The benchmark class registered as ``name`` (importing its module on first use)."""
    if name not in _REGISTRY and name in MODULES:
        importlib.import_module(f"{__name__}.{MODULES[name]}")
    if name not in _REGISTRY:
        raise KeyError(f"Unknown benchmark `{name}`. Valid: {', '.join(available())}.")
    return _REGISTRY[name]
