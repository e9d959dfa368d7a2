"""``python -m mtrl.supervised``'s checks: every key of ``configs/supervised.yaml`` and of the chosen
benchmark, before anything is written (the validation layer, :mod:`mtrl.validation`).

A benchmark's keys are those of its own file, ``configs/bench/<name>.yaml`` (Hydra refuses any other); each
value is checked against the type of its default there (an integer key takes integers, a number key numbers,
a list key lists, a mapping key mappings; a ``null`` default takes anything), and keys with the same name in
every benchmark get their range checked too (:data:`BENCH_RANGES`: ``epochs`` and ``batch_size`` positive
integers, ``lr`` positive, ...). A new benchmark file therefore needs nothing here. What only the benchmark's
code can judge (``bench.data``'s extra arguments, the number of tasks an ``stl_file`` must list) it reports
as a :class:`~mtrl.supervised.bench.BenchError` before the run writes anything of its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtrl import validation
from mtrl.validation import ConfigError, boolean, choice, integer, number, readable_file

__all__ = ["COMMAND", "check", "check_bench", "BENCH_RANGES"]

BENCH_DIR = validation.CONFIGS / "bench"
WRT = ("parameters", "representation")
BASELINES = ("stl", "none")


def _positive_int(value: Any, key: str) -> int:
    return integer(value, key, 1)


def _positive(value: Any, key: str) -> float:
    return number(value, key, 0, low_open=True)


def _non_negative(value: Any, key: str) -> float:
    return number(value, key, 0)


def _task_index(value: Any, key: str) -> int:
    return integer(value, key, 0)


def _task_indices(value: Any, key: str) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} should be a non-empty list of task indices, e.g. {key}=[0,1]. Found `{key}={value!r}`.")
    indices = [integer(item, f"{key}[{index}]", 0) for index, item in enumerate(value)]
    if len(set(indices)) < len(indices):
        raise ConfigError(f"{key}: task {next(i for i in indices if indices.count(i) > 1)} is listed twice.")
    return indices


#: Range checks of keys that mean the same in every benchmark file (applied when the value is a scalar and
#: the benchmark has the key; ``null`` passes where the file's default is ``null``).
BENCH_RANGES: dict[str, Callable[[Any, str], Any]] = {
    "epochs": _positive_int, "steps": _positive_int, "batch_size": _positive_int, "record_every": _positive_int,
    "log_every": _positive_int, "max_steps_per_epoch": _positive_int,
    "lr": _positive, "scale": _positive, "tolerance": _positive, "max_grad_norm": _positive,
    "weight_decay": _non_negative, "noisy_task": _task_index, "noisy_tasks": _task_indices,
}


def check(job: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Every value of a composed ``supervised`` config; returns it plain. Raises :class:`ConfigError`."""
    from mtrl.supervised.bench import _specs   # the aggregators exactly as the run builds them
    from mtrl.aggregation import make
    from mtrl.supervised.bench import resolve_options

    cfg = OmegaConf.to_container(job, resolve=True)
    assert isinstance(cfg, dict)
    check_bench(cfg.get("bench"))
    integer(cfg.get("seed"), "seed", 0)
    validation.resolve_device(cfg.get("device"))
    number(cfg.get("noise"), "noise", 0, 1)
    boolean(cfg.get("sweep"), "sweep")
    boolean(cfg.get("tensorboard"), "tensorboard")
    choice(cfg.get("wrt"), "wrt", WRT)
    baseline = cfg.get("baseline")
    choice("none" if baseline in (None, False) else baseline, "baseline", BASELINES)
    if cfg.get("noises") is not None:
        _distinct_list(cfg["noises"], "noises", lambda value, key: number(value, key, 0, 1))
    if cfg.get("seeds") is not None:
        _distinct_list(cfg["seeds"], "seeds", lambda value, key: integer(value, key, 0))
    _data_dir(cfg)
    if cfg.get("stl_file") is not None:
        stl_reference_file(cfg["stl_file"])
    elif baseline == "stl":
        validation.check_writable_dir(str(cfg.get("cache_dir")), "cache_dir", "Set cache_dir=<a writable folder>.")
    aggs = cfg.get("aggs")
    if aggs is not None and not (isinstance(aggs, list) and aggs and all(isinstance(a, str) for a in aggs)) \
            and not (isinstance(aggs, str) and aggs.strip(",").strip()):
        raise ConfigError(f"aggs should list aggregator names, e.g. aggs=[ls,pivrg]. Found `aggs={aggs!r}`.")
    if isinstance(aggs, list) and len(set(aggs)) < len(aggs):
        raise ConfigError(f"aggs: {next(a for a in aggs if aggs.count(a) > 1)} is listed twice.")
    if not isinstance((cfg.get("agg") or {}).get("options") or {}, dict):
        raise ConfigError(f"agg.options should hold the aggregator's options. Found `agg.options={cfg['agg']['options']!r}`.")
    try:
        for name, options in _specs(cfg):
            make(name, **resolve_options(options))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"agg: {validation.one_line(error)}") from error
    return cfg


def check_bench(bench: Any) -> None:
    """The ``bench`` section against its own file's keys, default types and :data:`BENCH_RANGES`."""
    options = sorted(path.stem for path in BENCH_DIR.glob("*.yaml"))
    name = bench.get("name") if isinstance(bench, dict) else None
    if name not in options:
        raise ConfigError(f"bench.name should be a benchmark of configs/bench/ ({', '.join(options)}); choose one with "
                          f"bench=<name>. Found `bench.name={name!r}`.")
    defaults = OmegaConf.to_container(OmegaConf.load(BENCH_DIR / f"{name}.yaml"), resolve=False)
    assert isinstance(defaults, dict)
    unknown = sorted(set(bench) - set(defaults))
    if unknown:
        raise ConfigError(f"bench: unknown key(s) {unknown} for bench={name}. Valid keys: {', '.join(defaults)}.")
    for key, value in bench.items():
        default = defaults[key]
        full = f"bench.{key}"
        if value is None and default is None:
            continue
        if key in BENCH_RANGES and isinstance(value, dict) and isinstance(default, dict):
            for name, item in value.items():   # a mapping (the toy's max_grad_norm per aggregator): each value
                BENCH_RANGES[key](item, f"{full}.{name}")
        elif key in BENCH_RANGES and not isinstance(default, dict):
            BENCH_RANGES[key](value, full)
        else:
            _same_type(value, default, full)


def _same_type(value: Any, default: Any, key: str) -> None:
    if default is None:
        return
    if isinstance(default, bool):
        boolean(value, key)
    elif isinstance(default, int):
        integer(value, key)
    elif isinstance(default, float):
        number(value, key)
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key} should be a string. Found `{key}={value!r}`.")
    elif isinstance(default, list) and not isinstance(value, list):
        raise ConfigError(f"{key} should be a list, e.g. {key}=[0,1]. Found `{key}={value!r}`.")
    elif isinstance(default, dict) and not isinstance(value, dict):
        raise ConfigError(f"{key} should be a mapping, e.g. {key}={{a: 1}}. Found `{key}={value!r}`.")


def _distinct_list(value: Any, key: str, item: Callable[[Any, str], Any]) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} should be a non-empty list, e.g. {key}=[0,1]. Found `{key}={value!r}`.")
    items = [item(element, f"{key}[{index}]") for index, element in enumerate(value)]
    repeated = [element for element in items if items.count(element) > 1]
    if repeated:
        raise ConfigError(f"{key}: {repeated[0]:g} is listed twice.")
    return items


def _data_dir(cfg: dict[str, Any]) -> None:
    """``data_dir``: an existing folder; a paper benchmark needs one, and a refusal names its layout."""
    from mtrl.supervised import benchmarks

    name = (cfg.get("bench") or {}).get("name")
    layout = None
    if name in benchmarks.available():
        layout = " ".join(line.strip() for line in benchmarks.get(name).layout.splitlines() if line.strip())
    if cfg.get("data_dir") is None:
        if layout:
            raise ConfigError(f"bench={name} needs data_dir=<folder>. Expected layout: {layout}")
        return
    try:
        _directory(cfg["data_dir"], "data_dir")
    except ConfigError as error:
        raise ConfigError(f"{error} Expected layout: {layout}" if layout else str(error)) from None


def _directory(value: Any, key: str) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{key}={value}: {'not a directory' if path.exists() else 'no such directory'}.")
    return path


def stl_reference_file(value: Any) -> dict[str, list[float]]:
    """An ``stl_file``'s single-task metrics, checked for form: ``{"val": [k], "test": [k]}`` (finite numbers,
    equal lengths) or one list for both. That ``k`` is the benchmark's is checked by the run."""
    path = readable_file(value, "stl_file")
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"stl_file={value}: cannot read it ({validation.one_line(error)}).") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"stl_file={value}: not valid JSON ({error}).") from error
    if isinstance(payload, list):
        payload = {"val": payload, "test": payload}
    shape = 'one list of per-task metrics, or {"val": [...], "test": [...]}'
    if not isinstance(payload, dict) or not all(isinstance(payload.get(split), list) and payload[split]
                                                for split in ("val", "test")):
        raise ConfigError(f"stl_file={value}: should hold {shape}.")
    for split in ("val", "test"):
        if not all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in payload[split]):
            raise ConfigError(f"stl_file={value}: '{split}' should list finite numbers, found {payload[split]!r}.")
    if len(payload["val"]) != len(payload["test"]):
        raise ConfigError(f"stl_file={value}: 'val' lists {len(payload['val'])} tasks, 'test' {len(payload['test'])}.")
    return payload


#: ``python -m mtrl.supervised`` for the validation layer: the aggregator's constructor judges ``agg.options``;
#: ``bench.data`` / ``bench.model`` are the benchmark's extra arguments.
COMMAND = validation.HydraCommand(prog="mtrl.supervised", config_name="supervised", check=check,
                                  open_keys=("agg.options", "bench.data", "bench.model", "bench.agg_overrides"))
