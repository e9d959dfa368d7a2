"""The paper benchmarks' training loop, single-task references and ``results.json``.

:func:`run` is what ``python -m mtrl.supervised bench=<paper benchmark>`` calls. For every (aggregator, seed):

1. read the splits from ``data_dir`` (:meth:`Benchmark.splits`), build the model, the optimiser and the
   schedule of ``configs/bench/<name>.yaml`` (``optimizer``, ``scheduler``);
2. take the single-task reference (:func:`reference`): the STL row of the paper's table stored in the config
   (``baseline`` unset, the default), a single-task run of this toolkit (``baseline=stl``: one model per task
   trained on that task's loss alone with the same budget, cached under ``cache_dir``), a JSON file
   (``stl_file``), or none (``baseline=none``: no Δm);
3. train with :class:`mtrl.supervised.MultiTaskTrainer`; every epoch evaluate the validation split (when the
   benchmark has one) and the test split with the benchmark's whole-split metrics, then hand PIVRG-style
   aggregators the per-task Δm of ``performance_split`` (the training split's metrics accumulated during
   the epoch, or the validation split's; PIVRG Sec. 4.1). Δm starts at 0 (ω = 1 in the first epoch) and is
   refreshed once per epoch, as the PIVRG authors' code does;
4. report the test metrics by the config's ``report`` rule (``last``; ``last_mean`` over the last
   ``epochs`` epochs, Nash-MTL's protocol on NYUv2; ``best_val``, the epoch of the best validation Δm, the
   QM9 protocol), their Δm against the reference (mean over metric columns) and Var[Δm] (:mod:`.delta`),
   and write ``results.json`` (``"kind": "paper_benchmark"``, read by :mod:`mtrl.report.supervised`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregation import make
from mtrl.supervised.adapter import MultiTaskTrainer
from mtrl.experiment.checkpoint import atomic_write_json
from mtrl.supervised.bench import BenchError, resolve_options, stl_cache_path
from mtrl.supervised.benchmarks import Benchmark, BenchmarkDataError, get
from mtrl.supervised.benchmarks.delta import delta_m, delta_m_variance, metric_deltas, task_scores

log = logging.getLogger("mtrl.supervised")

__all__ = ["run", "train", "reference", "single_task_reference", "build_optimizer", "build_scheduler",
           "evaluate", "RESULTS_KIND"]

RESULTS_KIND = "paper_benchmark"


class ConfigError(BenchError):
    """A setting the paper benchmarks cannot run with; the message says what to change."""


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- optimisation
def build_optimizer(params: Iterable[torch.nn.Parameter], spec: Mapping[str, Any] | None) -> torch.optim.Optimizer:
    """``{name: adam|adamw|sgd, lr, weight_decay, ...}`` -> the optimiser (remaining keys go to its constructor)."""
    spec = dict(spec or {"name": "adam", "lr": 1e-3})
    name = str(spec.pop("name", "adam")).lower()
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if name not in classes:
        raise ConfigError(f"bench.optimizer.name should be one of {sorted(classes)}. Found {name!r}.")
    return classes[name](params, **spec)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: Mapping[str, Any] | None):
    """``{name: step|plateau|cosine, ...}`` (or null: constant rate) -> a scheduler stepped once per epoch.

    ``step``: StepLR(step_size, gamma); ``plateau``: ReduceLROnPlateau(mode min, factor, patience, min_lr),
    stepped on the validation Δm (:func:`train` passes it); ``cosine``: CosineAnnealingLR(T_max).
    """
    if not spec:
        return None
    spec = dict(spec)
    name = str(spec.pop("name", "")).lower()
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, **spec)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **{"mode": "min", **spec})
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **spec)
    raise ConfigError(f"bench.scheduler.name should be step, plateau or cosine (or scheduler: null). Found {name!r}.")


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(benchmark: Benchmark, model: torch.nn.Module, batches: Iterable[Any], device: torch.device,
             max_batches: int | None = None) -> tuple[dict[str, float], list[float]]:
    """The metric columns and the mean per-task losses of a split, in ``eval`` mode."""
    was_training = model.training
    model.eval()
    metrics = benchmark.new_metrics()
    loss_sum, count = None, 0
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            batch = benchmark.to_device(batch, device)
            outputs = benchmark.forward(model, batch)
            metrics.update(outputs, batch)
            losses = benchmark.losses(outputs, batch).double().cpu()
            loss_sum = losses if loss_sum is None else loss_sum + losses
            count += 1
    finally:
        model.train(was_training)
    return metrics.compute(), ([] if loss_sum is None else (loss_sum / count).tolist())


def _detach(outputs: Any) -> Any:
    if isinstance(outputs, Tensor):
        return outputs.detach()
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_detach(o) for o in outputs)
    return outputs


# ---------------------------------------------------------------------------------------------- references
def _budget(bench: Mapping[str, Any]) -> dict[str, Any]:
    """What a single-task run depends on: the config without the parts that only concern the comparison."""
    return {key: value for key, value in sorted(bench.items()) if key not in ("stl", "agg_overrides")}


def reference(benchmark: Benchmark, bench: Mapping[str, Any], *, baseline: str | None, stl_file: str | None,
              train_stl=None) -> dict[str, Any] | None:
    """The single-task reference ``{"source", "test": {column: value}[, "train", "val"]}`` or ``None``.

    ``stl_file`` (JSON ``{"source"?, "values": {...}}`` or per split ``{"test": {...}, ...}``) wins; then
    ``baseline``: unset / ``paper`` -> the config's ``stl`` row (unset without a row: ``train_stl()``);
    ``stl`` -> ``train_stl()`` (single-task runs);
    ``none`` -> no reference. A paper row serves every split, as the authors' code uses it for the
    training- and validation-split Δm too.
    """
    names = [column.name for column in benchmark.columns]
    if stl_file:
        payload = json.loads(Path(stl_file).read_text())
        ref = _per_split(payload, f"stl_file={stl_file}")
        ref.setdefault("source", str(stl_file))
    elif baseline is None and not (bench.get("stl") or {}).get("values"):
        ref = train_stl()   # no STL row in the papers (SARCOS, Office): single-task runs of this toolkit
    elif baseline in (None, "paper"):
        row = bench.get("stl") or {}
        if not row.get("values"):
            raise ConfigError(f"configs/bench/{benchmark.name}.yaml has no `stl.values` row; use baseline=stl "
                              "(single-task runs) or baseline=none.")
        ref = _per_split(row, f"bench.stl of {benchmark.name}")
    elif baseline == "stl":
        ref = train_stl()
    elif baseline in ("none", False):
        return None
    else:
        raise ConfigError(f"baseline should be unset (the paper's STL row), 'paper', 'stl' or 'none'. Found {baseline!r}.")
    missing = [name for name in names if name not in ref["test"]]
    if missing:
        raise ConfigError(f"The single-task reference ({ref['source']}) lacks the columns {missing}.")
    return ref


def _per_split(payload: Mapping[str, Any], what: str) -> dict[str, Any]:
    if "values" in payload:
        values = dict(payload["values"])
        return {"source": payload.get("source", what), "test": values, "train": values, "val": values}
    if "test" not in payload:
        raise ConfigError(f"{what} must hold `values: {{column: value}}` or per split `test: {{...}}`.")
    return {"source": payload.get("source", what), **{split: dict(payload[split]) for split in ("train", "val", "test")
                                                      if split in payload}}


def single_task_reference(benchmark: Benchmark, bench: Mapping[str, Any], splits, seed: int, noise: float,
                          device: torch.device, cache_dir: str | Path) -> dict[str, Any]:
    """One model per task, trained on that task's loss alone with the multi-task run's budget; its metric
    columns on each split at the epoch the ``report`` rule picks. Cached under ``cache_dir``."""
    path = stl_cache_path(cache_dir, bench, noise, seed, budget=_budget(bench))
    if path.is_file():
        log.info("Single-task references from the cache %s", path)
        return {**json.loads(path.read_text()), "source": str(path)}
    payload: dict[str, Any] = {"bench": benchmark.name, "seed": int(seed), "noise": float(noise), "budget": _budget(bench)}
    for split in ("train", "val", "test"):
        payload[split] = {}
    for task_index, task in enumerate(benchmark.tasks):
        log.info("%s: single-task run for %s (seed %d)", benchmark.name, task, seed)
        result = train(benchmark, bench, splits, "ls", {}, seed, device, None, reference=None, task=task_index,
                       noise=noise)
        for column in benchmark.task_columns(task):
            for split in ("train", "val", "test"):
                values = result.get(split) or {}
                if column.name in values:
                    payload[split][column.name] = values[column.name]
    payload = {key: value for key, value in payload.items() if value != {}}
    atomic_write_json(payload, path)
    return {**payload, "source": str(path)}


# ------------------------------------------------------------------------------------------------ training
def _pick(history: Sequence[Mapping[str, Any]], rule: Mapping[str, Any]) -> tuple[list[int], str]:
    """The epochs whose metrics the results report, by the config's ``report`` rule."""
    name = str(rule.get("rule", "last"))
    epochs = [entry["epoch"] for entry in history]
    if name == "last":
        return epochs[-1:], "last epoch"
    if name == "last_mean":
        n = max(1, int(rule.get("epochs", 10)))
        return epochs[-n:], f"mean over the last {min(n, len(epochs))} epochs"
    if name == "best_val":
        scored = [(entry.get("val_delta_m", math.inf) if entry.get("val_delta_m") is not None
                   else sum(entry.get("val_losses") or [math.inf]), entry["epoch"]) for entry in history]
        best = min(scored)[1]
        return [best], f"epoch {best}, the best validation Δm"
    raise ConfigError(f"bench.report.rule should be last, last_mean or best_val. Found {name!r}.")


def _mean_metrics(history: Sequence[Mapping[str, Any]], epochs: Sequence[int], key: str) -> dict[str, float] | None:
    entries = [entry[key] for entry in history if entry["epoch"] in epochs and entry.get(key)]
    if not entries:
        return None
    return {name: float(np.mean([entry[name] for entry in entries])) for name in entries[0]}


def train(benchmark: Benchmark, bench: Mapping[str, Any], splits, agg_name: str, agg_options: Mapping[str, Any],
          seed: int, device: torch.device, out_dir: str | Path | None, *, reference: Mapping[str, Any] | None,
          task: int | None = None, noise: float = 0.0, tensorboard: bool = False) -> dict[str, Any]:
    """Train one model with aggregator ``agg_name`` and return the results (written to ``out_dir/results.json``
    when ``out_dir`` is given). ``task``: train on that task's loss alone (a single-task reference run);
    ``noise``: the label-noise level the splits were built with (recorded in the results)."""
    _seed_everything(seed)
    model = benchmark.build_model().to(device)
    optimizer = build_optimizer(model.parameters(), bench.get("optimizer"))
    scheduler = build_scheduler(optimizer, bench.get("scheduler"))
    generator = torch.Generator().manual_seed(int(seed))
    batch_size = int(bench["batch_size"])
    eval_batch_size = int(bench.get("eval_batch_size") or batch_size)
    max_steps = bench.get("max_steps_per_epoch")
    max_eval = bench.get("max_eval_batches")
    train_loader = benchmark.loader(splits.train, batch_size, shuffle=True, generator=generator)
    steps_per_epoch = min(len(train_loader), int(max_steps)) if max_steps is not None else len(train_loader)
    tasks = list(benchmark.tasks) if task is None else [benchmark.tasks[task]]
    columns = [c for c in benchmark.columns if c.task in tasks]
    options = resolve_options(agg_options, max(steps_per_epoch, 1))
    split_for_performance = benchmark.performance_split if splits.val is not None else "train"
    performance_reference = None if reference is None else reference.get(split_for_performance, reference["test"])
    train_metrics = None

    def loss_fn(batch: Any) -> Tensor:
        outputs = benchmark.forward(model, batch)
        if train_metrics is not None and torch.is_grad_enabled():   # FAMO's no-grad re-evaluation is not counted
            train_metrics.update(_detach(outputs), batch)
        losses = benchmark.losses(outputs, batch)
        return losses if task is None else losses[task:task + 1]

    trainer = MultiTaskTrainer(model, loss_fn, make(agg_name, **options), optimizer,
                               shared=benchmark.shared_parameters(model), max_grad_norm=bench.get("max_grad_norm"))
    writer = None
    if tensorboard and out_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out_dir))

    def deltas(values: Mapping[str, float] | None, split: str) -> dict[str, float] | None:
        if reference is None or values is None:
            return None
        return metric_deltas(values, reference.get(split, reference["test"]), columns)

    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    epochs = int(bench["epochs"])
    for epoch in range(1, epochs + 1):
        train_metrics = benchmark.new_metrics() if split_for_performance == "train" else None
        weights, losses = [], []
        for step, batch in enumerate(train_loader):
            if max_steps is not None and step >= int(max_steps):
                break
            out = trainer.step(benchmark.to_device(batch, device))
            weights.append(out.weights.double().cpu().numpy())
            losses.append(out.losses.double().cpu().numpy())
        entry: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                                 "train_losses": np.mean(losses, 0).tolist(), "weights": np.mean(weights, 0).tolist()}
        if train_metrics is not None:
            entry["train"] = train_metrics.compute()
        if splits.val is not None:
            entry["val"], entry["val_losses"] = evaluate(
                benchmark, model, benchmark.loader(splits.val, eval_batch_size, shuffle=False), device, max_eval)
        entry["test"], entry["test_losses"] = evaluate(
            benchmark, model, benchmark.loader(splits.test, eval_batch_size, shuffle=False), device, max_eval)
        for split in ("train", "val", "test"):
            split_deltas = deltas(entry.get(split), split)
            if split_deltas is not None:
                entry[f"{split}_delta_m"] = delta_m(split_deltas)
        performance = entry.get(split_for_performance)
        if performance_reference is not None and performance is not None:
            scores = task_scores(metric_deltas(performance, performance_reference, columns), columns, tasks)
            if all(math.isfinite(s) for s in scores):
                trainer.set_performance(delta_m=torch.tensor(scores, dtype=torch.float64))
                entry["performance"] = scores
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                criterion = entry.get("val_delta_m")
                scheduler.step(criterion if criterion is not None else sum(entry.get("val_losses") or entry["test_losses"]))
            else:
                scheduler.step()
        history.append(entry)
        _log_epoch(writer, entry, tasks)
        log.info("%s %s epoch %d/%d  losses %s  weights %s  test %s", benchmark.name, agg_name, epoch, epochs,
                 np.round(entry["train_losses"], 4).tolist(), np.round(entry["weights"], 3).tolist(),
                 {k: round(v, 4) for k, v in entry["test"].items()})
    seconds = time.perf_counter() - started

    chosen, rule_text = _pick(history, dict(bench.get("report") or {}))
    results: dict[str, Any] = {
        "kind": RESULTS_KIND, "bench": benchmark.name, "aggregator": agg_name, "aggregator_options": dict(options),
        "seed": int(seed), "noise": float(noise), "tasks": tasks, "trained_task": None if task is None else tasks[0],
        "columns": [{"name": c.name, "task": c.task, "higher_is_better": c.higher_is_better, "header": c.header}
                    for c in columns],
        "performance_split": split_for_performance, "report_rule": rule_text, "report_epochs": chosen,
        "epochs": epochs, "steps": trainer.steps, "device": str(device), "seconds": seconds,
        "test": _mean_metrics(history, chosen, "test"), "val": _mean_metrics(history, chosen, "val"),
        "train": _mean_metrics(history, chosen, "train"),
        "stl": None if reference is None else {"source": reference["source"],
                                                "values": {c.name: reference["test"][c.name] for c in columns}},
        "delta_m": None, "delta_m_mean": None, "delta_m_var": None, "task_delta_m": None,
        "weights_last_epoch": history[-1]["weights"], "fallbacks": int(trainer.aggregator.fallbacks),
        "history": history,
    }
    test_deltas = deltas(results["test"], "test")
    if test_deltas is not None:
        results.update(delta_m=test_deltas, delta_m_mean=delta_m(test_deltas), delta_m_var=delta_m_variance(test_deltas),
                       task_delta_m=dict(zip(tasks, task_scores(test_deltas, columns, tasks))))
    if writer is not None:
        writer.close()
    if out_dir is not None:
        atomic_write_json(results, Path(out_dir) / "results.json")
    return results


def _log_epoch(writer, entry: Mapping[str, Any], tasks: Sequence[str]) -> None:
    if writer is None:
        return
    epoch = entry["epoch"]
    for t, name in enumerate(tasks):
        writer.add_scalar(f"train/loss/{name}", entry["train_losses"][t], epoch)
        writer.add_scalar(f"weights/{name}", entry["weights"][t], epoch)
    for split in ("train", "val", "test"):
        for column, value in (entry.get(split) or {}).items():
            writer.add_scalar(f"{split}/{column}", value, epoch)
        if entry.get(f"{split}_delta_m") is not None:
            writer.add_scalar(f"{split}/delta_m", entry[f"{split}_delta_m"], epoch)


# --------------------------------------------------------------------------------------------- entry point
def run(cfg: Any, out_dir: str | Path, specs: Sequence[tuple[str, dict[str, Any]]], device: torch.device) -> dict[str, Any]:
    """``python -m mtrl.supervised bench=<paper benchmark>``: every (aggregator in ``specs``, seed)."""
    bench = _plain(cfg["bench"])
    benchmark = get(bench["name"])(bench)
    data_dir = cfg.get("data_dir")
    if not data_dir:
        raise BenchmarkDataError(f"bench={benchmark.name} needs data_dir=<folder>. Expected layout:\n{benchmark.layout}")
    noise = float(cfg.get("noise", 0.0) or 0.0)
    if noise and not benchmark.noisy_tasks:
        raise ConfigError(f"bench={benchmark.name} has no label-noise option; drop noise={noise:g}.")
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"noise should be in [0, 1]. Found noise={noise:g}.")
    seeds = _plain(cfg.get("seeds")) or [int(cfg["seed"])]
    out_dir = Path(out_dir)
    single = len(specs) == 1 and len(seeds) == 1
    all_results = []
    for seed in seeds:
        splits = benchmark.splits(Path(str(data_dir)).expanduser(), seed=int(seed), noise=noise)
        ref = reference(benchmark, bench, baseline=cfg.get("baseline"), stl_file=cfg.get("stl_file"),
                        train_stl=lambda: single_task_reference(benchmark, bench, splits, int(seed), noise, device,
                                                                cfg.get("cache_dir", "runs/supervised/stl_cache")))
        for name, opts in specs:
            run_dir = out_dir if single else out_dir / name / f"seed{int(seed)}"
            log.info("%s: %s seed=%d -> %s", benchmark.name, name, int(seed), run_dir)
            result = train(benchmark, bench, splits, name, opts, int(seed), device, run_dir, reference=ref,
                           noise=noise, tensorboard=bool(cfg.get("tensorboard", True)))
            all_results.append(result)
            print(summary_line(result))
    return all_results[0] if single else {"runs": len(all_results)}


def summary_line(result: Mapping[str, Any]) -> str:
    """One line per run: the test columns, Δm and Var[Δm]."""
    cells = ", ".join(f"{c['header']} {result['test'][c['name']]:.4g}" for c in result["columns"])
    dm = "n/a" if result["delta_m_mean"] is None else f"{result['delta_m_mean']:.2f} %"
    var = "n/a" if result["delta_m_var"] is None else f"{result['delta_m_var']:.1f}"
    return f"[{result['bench']}] agg={result['aggregator']} seed={result['seed']}: {cells}; Δm {dm}, Var[Δm] {var}"
