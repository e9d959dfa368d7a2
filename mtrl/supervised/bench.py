"""Train/eval loop of the supervised benchmarks, single-task references, sweeps, plots and summaries.

:func:`run` is what ``python -m mtrl.supervised`` calls with the Hydra config; every piece is also usable
from Python (:func:`train_multitask`, :func:`single_task_reference`, :func:`summarize`, :func:`plot_noise_sweep`).

For one (benchmark, aggregator, noise level, seed) the data benchmarks:

1. build the data set (``mtrl.supervised.data``; training labels of the noisy task(s) corrupted at the
   noise level, validation and test clean) and the model (``mtrl.supervised.models.make_model``);
2. get single-task (STL) reference metrics on the validation and test splits: from ``stl_file``, or from
   a cached single-task run (``baseline=stl``: one model per task trained alone with the same budget,
   cached under ``cache_dir`` keyed by benchmark, noise, seed and training budget);
3. train with :class:`~mtrl.supervised.adapter.MultiTaskTrainer`; after every epoch (and before the
   first) the validation metrics give Δm (PIVRG paper Eq. 3) that performance-informed aggregators read;
4. report the clean test set's per-task metric, the clean tasks' metric, the share of the weights the
   aggregator gives the clean tasks (averaged over the last epoch's steps), Δm and Var[Δm]
   (population variance over tasks) against the STL test metrics; log everything to TensorBoard and
   write ``results.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtrl import validation
from mtrl.aggregation import Aggregator, make, options
from mtrl.metrics import performance_drop
from mtrl.supervised.adapter import MultiTaskTrainer
from mtrl.experiment.checkpoint import atomic_savefig, atomic_write_json, atomic_write_text
from mtrl.validation import ConfigError, resolve_device

log = logging.getLogger("mtrl.supervised")

__all__ = [
    "run", "train_multitask", "single_task_reference", "summarize", "plot_noise_sweep", "resolve_device",
    "aggregator_spec", "load_results",
]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_NOISES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DATA_BENCHES = ("multidigits", "noisyregression", "multimnist")


class BenchError(ConfigError):
    """A configuration the benchmarks cannot run; the message says what to change."""


# ------------------------------------------------------------------------------------------------- helpers
def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (dicts, lists)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default) if cfg is not None else default


def aggregator_spec(name: str, base_options: Mapping[str, Any] | None = None,
                    overrides: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` for an aggregator: ``base_options`` (default: ``configs/agg/<name>.yaml``'s
    options, else the class defaults), then the benchmark's per-aggregator ``overrides`` for the options
    the method accepts (others are ignored with a log line)."""
    if base_options is None:
        path = CONFIG_DIR / "agg" / f"{name}.yaml"
        base_options = {}
        if path.is_file():
            from omegaconf import OmegaConf

            base_options = _plain(OmegaConf.load(path)).get("options") or {}
    merged = dict(base_options)
    valid = set(options(name))
    for key, value in dict(overrides or {}).items():
        if key in valid or (key == "warmup_epochs" and "warmup_steps" in valid):
            merged[key] = value
        else:
            log.info("Benchmark override %s=%r ignored: %s has no such option.", key, value, name)
    return name, merged


def resolve_options(opts: Mapping[str, Any], steps_per_epoch: int = 1) -> dict[str, Any]:
    """Constructor options with ``warmup_epochs`` (a benchmark convenience) turned into ``warmup_steps``."""
    resolved = dict(opts)
    if "warmup_epochs" in resolved:
        resolved["warmup_steps"] = int(round(float(resolved.pop("warmup_epochs")) * steps_per_epoch))
    return resolved


def _make_factory(name: str, opts: Mapping[str, Any]):
    opts = resolve_options(opts)
    make(name, **opts)  # validate now, with the method's own error message

    def factory() -> Aggregator:
        return make(name, **opts)

    return factory


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _writer(out_dir: Path, enabled: bool):
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out_dir))


# ------------------------------------------------------------------------------------------------- data set
def load_dataset(bench: Mapping[str, Any], noise: float, seed: int, data_dir: str | None = None):
    """The benchmark's :class:`~mtrl.supervised.data.MultiTaskDataset` at ``noise`` (noise drawn with ``seed``)."""
    from mtrl.supervised import data

    name = bench["name"]
    extra = dict(bench.get("data") or {})
    if name == "multidigits":
        return data.multidigits(noise=noise, seed=seed, noisy_task=int(bench.get("noisy_task", 1)), **extra)
    if name == "noisyregression":
        if bench.get("noisy_tasks") is not None:
            extra.setdefault("noisy_tasks", tuple(bench["noisy_tasks"]))
        return data.noisy_regression(noise=noise, seed=seed, **extra)
    if name == "multimnist":
        if not data_dir:
            raise BenchError("bench=multimnist needs data_dir=<folder with the MNIST IDX files "
                             f"({', '.join(data.MNIST_FILES.values())}, plain or .gz)>.")
        return data.multimnist(data_dir, noise=noise, seed=seed, noisy_task=int(bench.get("noisy_task", 1)), **extra)
    raise BenchError(f"Unknown benchmark `{name}`. Valid: toy, {', '.join(DATA_BENCHES)}.")


def _budget(bench: Mapping[str, Any]) -> dict[str, Any]:
    """What a single-task reference depends on besides benchmark, noise and seed."""
    keys = ("epochs", "batch_size", "lr", "weight_decay", "data", "model", "noisy_task", "noisy_tasks",
            "max_steps_per_epoch", "max_grad_norm")
    return {key: _plain(bench.get(key)) for key in keys}


def _batches(n: int, batch_size: int, generator: torch.Generator, limit: int | None) -> Iterable[Tensor]:
    order = torch.randperm(n, generator=generator)
    count = n // batch_size if n >= batch_size else 1   # drop the last partial batch (constant Jacobian width)
    if limit is not None:
        count = min(count, int(limit))
    for b in range(count):
        yield order[b * batch_size:(b + 1) * batch_size]


def _optimizer(params, bench: Mapping[str, Any]) -> torch.optim.Optimizer:
    # ExcessMTL App. C.1: Adam, constant learning rate, weight decay only where the paper used it.
    return torch.optim.Adam(params, lr=float(bench.get("lr", 1e-3)), weight_decay=float(bench.get("weight_decay", 0.0)))


# ------------------------------------------------------------------------------------------ single-task runs
def single_task_reference(dataset, bench: Mapping[str, Any], seed: int, device: torch.device) -> dict[str, Any]:
    """Train one model per task on that task's loss alone (same model, optimizer and budget as the
    multi-task run) and return its validation and test metrics: ``{"val": [k], "test": [k], ...}``."""
    from mtrl.supervised.models import make_model, task_losses, task_metrics

    k = dataset.num_tasks
    val, test = [0.0] * k, [0.0] * k
    higher = list(dataset.higher_is_better)
    x_train, y_train = dataset.x_train.to(device), dataset.y_train.to(device)
    for task in range(k):
        _seed_everything(seed)
        model = make_model(dataset, **dict(bench.get("model") or {})).to(device)
        optimizer = _optimizer(model.parameters(), bench)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(int(bench["epochs"])):
            for idx in _batches(x_train.shape[0], int(bench["batch_size"]), generator, bench.get("max_steps_per_epoch")):
                idx = idx.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = task_losses(model(x_train[idx]), y_train[idx], dataset)[task]
                loss.backward()
                if bench.get("max_grad_norm") is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(bench["max_grad_norm"]))
                optimizer.step()
        val[task] = float(task_metrics(model, dataset.x_val, dataset.y_val, dataset)[0][task])
        test[task] = float(task_metrics(model, dataset.x_test, dataset.y_test, dataset)[0][task])
    return {"val": val, "test": test, "higher_is_better": higher}


def stl_cache_path(cache_dir: str | Path, bench: Mapping[str, Any], noise: float, seed: int,
                   budget: Mapping[str, Any] | None = None) -> Path:
    """Where the single-task reference of (benchmark, noise, seed) is cached: the file name carries a digest of
    ``budget``, what the reference depends on besides those (default: this module's toy budget keys)."""
    budget = _budget(bench) if budget is None else budget
    digest = hashlib.sha1(json.dumps(budget, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"{bench['name']}_noise{float(noise):g}_seed{int(seed)}_{digest}.json"


def get_reference(dataset, bench: Mapping[str, Any], noise: float, seed: int, device: torch.device, *,
                  baseline: str | None, stl_file: str | None, cache_dir: str | Path) -> dict[str, Any] | None:
    """STL references: ``stl_file`` wins; else ``baseline=stl`` loads the cache or trains and caches it.

    A reference of 0 (or not finite) makes Δm undefined (PIVRG Eq. 3 divides by it): the run then goes
    on without Δm, with a warning naming the task.
    """
    reference = _get_reference(dataset, bench, noise, seed, device, baseline=baseline, stl_file=stl_file,
                               cache_dir=cache_dir)
    if reference is not None:
        for split in ("val", "test"):
            values = np.asarray(reference[split], dtype=float)
            bad = [t for t in range(len(values)) if not np.isfinite(values[t]) or values[t] == 0]
            if bad:
                log.warning("Single-task %s reference is 0 or not finite for task(s) %s (%s): Δm is undefined, "
                            "the run goes on without Δm.", split, bad, reference.get("source"))
                return None
    return reference


def _get_reference(dataset, bench: Mapping[str, Any], noise: float, seed: int, device: torch.device, *,
                   baseline: str | None, stl_file: str | None, cache_dir: str | Path) -> dict[str, Any] | None:
    k = dataset.num_tasks
    if stl_file:
        payload = json.loads(Path(stl_file).read_text())
        if isinstance(payload, list):
            payload = {"val": payload, "test": payload}
        for split in ("val", "test"):
            if split not in payload or len(payload[split]) != k:
                raise BenchError(f"stl_file={stl_file} must hold '{split}': a list of {k} per-task metrics "
                                 "(or be one list used for both splits).")
        return {**payload, "source": str(stl_file)}
    if baseline in ("none", False):
        return None
    if baseline not in (None, "stl"):   # unset: these benchmarks' default, a single-task run
        raise BenchError(f"baseline should be 'stl' or 'none'. Found `baseline = {baseline!r}`.")
    path = stl_cache_path(cache_dir, bench, noise, seed)
    if path.is_file():
        payload = json.loads(path.read_text())
        log.info("Single-task references from the cache %s", path)
        return {**payload, "source": str(path)}
    log.info("Training single-task references (%d tasks) for %s noise=%g seed=%d ...", k, bench["name"], noise, seed)
    started = time.perf_counter()
    payload = single_task_reference(dataset, bench, seed, device)
    payload.update({"bench": bench["name"], "noise": float(noise), "seed": int(seed), "budget": _budget(bench),
                    "seconds": time.perf_counter() - started})
    try:
        atomic_write_json(payload, path)
    except OSError as error:   # a cache: the run goes on with the references in memory
        log.warning("Could not cache the single-task references in %s (%s); the run goes on.", path,
                    error.strerror or error)
    return {**payload, "source": str(path)}


# ---------------------------------------------------------------------------------------- multi-task runs
def train_multitask(dataset, bench: Mapping[str, Any], agg_name: str, agg_options: Mapping[str, Any], seed: int,
                    device: torch.device, out_dir: str | Path, *, reference: Mapping[str, Any] | None = None,
                    wrt: str = "parameters", tensorboard: bool = True) -> dict[str, Any]:
    """Train one multi-task model with aggregator ``agg_name`` and write ``out_dir/results.json``."""
    from mtrl.supervised.models import make_model, task_losses, task_metrics

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(seed)
    k = dataset.num_tasks
    model = make_model(dataset, **dict(bench.get("model") or {})).to(device)
    x_train, y_train = dataset.x_train.to(device), dataset.y_train.to(device)
    higher = list(dataset.higher_is_better)

    def loss_fn(idx: Tensor):
        z = model.representation(x_train[idx])
        return z, task_losses(model.heads_forward(z), y_train[idx], dataset)

    steps_per_epoch = sum(1 for _ in _batches(x_train.shape[0], int(bench["batch_size"]), torch.Generator(),
                                              bench.get("max_steps_per_epoch")))
    agg_options = resolve_options(agg_options, steps_per_epoch)
    trainer = MultiTaskTrainer(model, loss_fn, make(agg_name, **agg_options), _optimizer(model.parameters(), bench),
                               shared=model.shared, wrt=wrt, higher_is_better=higher,
                               reference=None if reference is None else reference["val"],
                               max_grad_norm=bench.get("max_grad_norm"))
    writer = _writer(out_dir, tensorboard)
    names = list(dataset.task_names)
    clean, noisy = list(dataset.clean_tasks), list(dataset.noisy_tasks)

    def evaluate(epoch: int) -> dict[str, Any]:
        metrics, _ = task_metrics(model, dataset.x_val, dataset.y_val, dataset)
        entry: dict[str, Any] = {"epoch": epoch, "val_metrics": metrics.tolist()}
        if reference is not None:
            dm = trainer.set_performance(metrics)
            entry.update(val_delta_m=dm.tolist(), val_delta_m_mean=float(dm.mean()), val_delta_m_var=float(dm.var(unbiased=False)))
        if writer is not None:
            for t, name in enumerate(names):
                writer.add_scalar(f"val/{_metric_name(dataset, t)}/{name}", float(metrics[t]), epoch)
                if reference is not None:
                    writer.add_scalar(f"val/delta_m/{name}", entry["val_delta_m"][t], epoch)
            if reference is not None:
                writer.add_scalar("val/delta_m_mean", entry["val_delta_m_mean"], epoch)
                writer.add_scalar("val/delta_m_var", entry["val_delta_m_var"], epoch)
        return entry

    history = [evaluate(0)]
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    epochs = int(bench["epochs"])
    last_weights: list[np.ndarray] = []
    for epoch in range(1, epochs + 1):
        weights_epoch, losses_epoch = [], []
        for idx in _batches(x_train.shape[0], int(bench["batch_size"]), generator, bench.get("max_steps_per_epoch")):
            weights, losses = trainer.step(idx.to(device))
            weights_epoch.append(weights.double().cpu().numpy())
            losses_epoch.append(losses.double().cpu().numpy())
        w = np.stack(weights_epoch)
        l_mean = np.stack(losses_epoch).mean(0)
        entry = evaluate(epoch)
        entry.update(train_losses=l_mean.tolist(), weights=w.mean(0).tolist(), clean_weight=_clean_share(w, clean))
        history.append(entry)
        if writer is not None:
            for t, name in enumerate(names):
                writer.add_scalar(f"train/loss/{name}", float(l_mean[t]), epoch)
                writer.add_scalar(f"weights/{name}", float(w[:, t].mean()), epoch)
            if entry["clean_weight"] is not None:
                writer.add_scalar("weights/clean_share", entry["clean_weight"], epoch)
        log.info("epoch %d/%d  losses %s  weights %s  val %s", epoch, epochs, np.round(l_mean, 4).tolist(),
                 np.round(w.mean(0), 3).tolist(), np.round(entry["val_metrics"], 4).tolist())
        last_weights = weights_epoch
    seconds = time.perf_counter() - started

    test, _ = task_metrics(model, dataset.x_test, dataset.y_test, dataset)
    w_last = np.stack(last_weights) if last_weights else np.full((1, k), np.nan)
    results: dict[str, Any] = {
        "bench": dataset.name, "aggregator": agg_name, "aggregator_options": dict(agg_options),
        "noise": float(dataset.noise), "seed": int(seed), "wrt": wrt, "epochs": epochs,
        "steps": trainer.steps, "device": str(device), "seconds": seconds,
        "task_names": names, "noisy_tasks": noisy, "clean_tasks": clean,
        "metric": [_metric_name(dataset, t) for t in range(k)], "higher_is_better": higher,
        "test_metrics": test.tolist(), "val_metrics": history[-1]["val_metrics"],
        "clean_metric": float(test[clean].mean()) if clean else None,
        "noisy_metric": float(test[noisy].mean()) if noisy else None,
        "weights_last_epoch": w_last.mean(0).tolist(),
        "clean_weight": _clean_share(w_last, clean),
        "fallbacks": int(trainer.aggregator.fallbacks),
        "stl": None if reference is None else {key: reference[key] for key in ("val", "test", "source") if key in reference},
        "delta_m": None, "delta_m_mean": None, "delta_m_var": None,
        "history": history,
    }
    if all(kind == "classification" for kind in dataset.task_kinds):
        results["clean_accuracy"] = results["clean_metric"]
    if reference is not None:
        dm = performance_drop(test, torch.as_tensor(reference["test"], dtype=torch.float64), higher)
        results.update(delta_m=dm.tolist(), delta_m_mean=float(dm.mean()), delta_m_var=float(dm.var(unbiased=False)))
    if writer is not None:
        for t, name in enumerate(names):
            writer.add_scalar(f"test/{_metric_name(dataset, t)}/{name}", float(test[t]), epochs)
            if results["delta_m"] is not None:
                writer.add_scalar(f"test/delta_m/{name}", results["delta_m"][t], epochs)
        if results["delta_m"] is not None:
            writer.add_scalar("test/delta_m_mean", results["delta_m_mean"], epochs)
            writer.add_scalar("test/delta_m_var", results["delta_m_var"], epochs)
        writer.close()
    kept = f"the TensorBoard events in {out_dir} hold the curves" if writer is not None else "the run is not saved"
    with validation.writing(out_dir / "results.json", kept):
        atomic_write_json(results, out_dir / "results.json")
    return results


def _metric_name(dataset, task: int) -> str:
    return "accuracy" if dataset.task_kinds[task] == "classification" else "mse"


def _clean_share(weights: np.ndarray, clean: Sequence[int]) -> float | None:
    """Mean over steps of Σ_clean w_i / Σ_i w_i (the weights' scales differ between methods)."""
    if not clean or weights.size == 0:
        return None
    total = weights.sum(axis=1)
    ok = np.abs(total) > 1e-12
    if not ok.any():
        return None
    return float((weights[ok][:, list(clean)].sum(axis=1) / total[ok]).mean())


# ------------------------------------------------------------------------------------------------ toy bench
def run_toy_bench(cfg: Any, out_dir: Path, specs: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    from mtrl.supervised.toy import plot_toy, run_toy, save_toy_results, toy_table

    bench = cfg["bench"]
    runs = []
    for name, opts in specs:
        _seed_everything(int(cfg["seed"]))
        writer = _writer(out_dir / "tb" / name if len(specs) > 1 else out_dir, bool(cfg.get("tensorboard", True)))
        log_every = max(1, int(bench.get("log_every", 100)))

        def on_record(step, theta, losses, weights, writer=writer, log_every=log_every):
            if writer is None or step % log_every:
                return
            for s in range(theta.shape[0]):
                for tag, value in (("L1", losses[s, 0]), ("L2", losses[s, 1]), ("w1", weights[s, 0]),
                                   ("w2", weights[s, 1]), ("theta1", theta[s, 0]), ("theta2", theta[s, 1])):
                    writer.add_scalar(f"start{s}/{tag}", float(value), step)

        log.info("toy: %s %s, %d steps from %d starts", name, opts, int(bench["steps"]), 5)
        with validation.writing(out_dir, "no result was written (TensorBoard events only)"):
            run = run_toy(_make_factory(name, opts), name=name, steps=int(bench["steps"]), lr=float(bench["lr"]),
                          scale=float(bench["scale"]), record_every=int(bench.get("record_every", 10)),
                          max_grad_norm=(bench.get("max_grad_norm") or {}).get(name), on_record=on_record)
            if writer is not None:
                writer.close()
        runs.append(run)
        log.info("toy: %s done in %.1f s", name, run.seconds)
    tolerance = float(bench.get("tolerance", 0.05))
    table = toy_table(runs, tolerance)
    print(table)   # first: the numbers survive a full disk below
    with validation.writing(out_dir, "the table above holds the final losses"):
        results = save_toy_results(runs, out_dir, tolerance)
        plot = plot_toy(runs, out_dir / "toy.png", tolerance=tolerance)
        atomic_write_text(table + "\n", out_dir / "final_losses.md")
    print(f"\nPlot: {plot}\nResults: {out_dir / 'results.json'}")
    return results


# ----------------------------------------------------------------------------------------- entry point
def _specs(cfg: Any) -> list[tuple[str, dict[str, Any]]]:
    overrides = _plain(cfg["bench"].get("agg_overrides")) or {}
    names = _plain(cfg.get("aggs"))
    if names:
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        return [aggregator_spec(str(n), None, overrides.get(str(n))) for n in names]
    agg = cfg["agg"]
    name = str(agg["name"])
    return [aggregator_spec(name, _plain(agg.get("options")) or {}, overrides.get(name))]


def run(cfg: Any, out_dir: str | Path) -> dict[str, Any]:
    """Run what the config asks for; returns the results (what ``results.json`` holds).

    Raises:
        BenchError: input found bad only here (a data file, an ``stl_file`` of another size), before this
            run writes anything of its own.
        OutputError: a result could not be written (full disk); the message says which and what is intact.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = _plain(cfg["bench"])
    specs = _specs(cfg)
    for name, opts in specs:
        make(name, **resolve_options(opts))  # fail early, with the method's message, on a bad name or option
    from mtrl.supervised import benchmarks

    if bench["name"] in benchmarks.available():   # the papers' benchmarks (NYUv2, Cityscapes, QM9, ...)
        from mtrl.supervised.benchmarks.training import run as run_paper_benchmark

        return run_paper_benchmark(cfg, out_dir, specs, resolve_device(cfg.get("device", "auto")))
    if bench["name"] == "toy":
        return run_toy_bench({**_plain(cfg), "bench": bench}, out_dir, specs)

    device = resolve_device(cfg.get("device", "auto"))
    seeds = _plain(cfg.get("seeds")) or [int(cfg["seed"])]
    noises = _plain(cfg.get("noises"))
    if noises is None:
        noises = list(DEFAULT_NOISES) if cfg.get("sweep", False) else [float(cfg.get("noise", 0.0))]
    single = len(specs) == 1 and len(seeds) == 1 and len(noises) == 1
    all_results = []
    for noise in noises:
        for seed in seeds:
            dataset = _dataset(bench, float(noise), int(seed), cfg.get("data_dir"))
            reference = get_reference(dataset, bench, float(noise), int(seed), device, baseline=cfg.get("baseline", "stl"),
                                      stl_file=cfg.get("stl_file"), cache_dir=cfg.get("cache_dir", "runs/supervised/stl_cache"))
            for name, opts in specs:
                if reference is None and getattr(make(name, **resolve_options(opts)), "uses_performance", False):
                    log.warning("%s reads Δm but there is no single-task reference (baseline=none, no stl_file): "
                                "it sees Δm = 0 throughout.", name)
                run_dir = out_dir if single else out_dir / name / f"noise{float(noise):g}" / f"seed{int(seed)}"
                log.info("%s: %s noise=%g seed=%d -> %s", bench["name"], name, float(noise), int(seed), run_dir)
                done = (f"the {len(all_results)} run(s) before have their results.json under {out_dir}" if all_results
                        else "no result was written")
                with validation.writing(run_dir, done):
                    result = train_multitask(dataset, bench, name, opts, int(seed), device, run_dir, reference=reference,
                                             wrt=str(cfg.get("wrt", "parameters")),
                                             tensorboard=bool(cfg.get("tensorboard", True)))
                all_results.append(result)
                _print_result(result)
    if single:
        return all_results[0]
    with validation.writing(out_dir, "every run's results.json is complete"):
        summary = summarize(all_results, out_dir)
    return {"runs": len(all_results), "summary": summary}


def _dataset(bench: Mapping[str, Any], noise: float, seed: int, data_dir: str | None):
    """:func:`load_dataset`, its input errors (``bench.data``'s extra arguments, missing data files) and
    ``bench.model``'s as :class:`BenchError`: the benchmark's own code is what judges them."""
    from mtrl.supervised.models import make_model

    try:
        dataset = load_dataset(bench, noise, seed, data_dir)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise BenchError(f"data_dir={data_dir}: {validation.one_line(error)}") from error
    except (TypeError, ValueError) as error:
        if isinstance(error, BenchError):
            raise
        raise BenchError(f"bench.data: {validation.one_line(error)}") from error
    try:
        make_model(dataset, **dict(bench.get("model") or {}))
    except (TypeError, ValueError) as error:
        raise BenchError(f"bench.model: {validation.one_line(error)}") from error
    return dataset


def _print_result(r: Mapping[str, Any]) -> None:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    line = (f"[{r['bench']}] agg={r['aggregator']} noise={r['noise']:g} seed={r['seed']}: "
            f"test {r['metric'][0]} per task {np.round(r['test_metrics'], 4).tolist()}, clean {fmt(r['clean_metric'])}, "
            f"clean-task weight {fmt(r['clean_weight'])}, Δm {fmt(r['delta_m_mean'])} %, Var[Δm] {fmt(r['delta_m_var'])}")
    print(line)


# ------------------------------------------------------------------------------------------ summaries
SUMMARY_FIELDS = ("clean_metric", "clean_weight", "noisy_metric", "delta_m_mean", "delta_m_var")


def load_results(root: str | Path) -> list[dict[str, Any]]:
    """Every data-benchmark ``results.json`` under ``root`` (toy results are skipped)."""
    found = []
    for path in sorted(Path(root).rglob("results.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            log.warning("%s: unreadable (%s: %s); skipped.", path, type(error).__name__, error)
            continue
        if isinstance(payload, dict) and "aggregator" in payload and "test_metrics" in payload:
            payload["_path"] = str(path)
            found.append(payload)
    return found


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return float(np.mean(vals)), std, len(vals)


def summarize(results: Sequence[Mapping[str, Any]] | str | Path, out_dir: str | Path | None = None,
              plot: bool = True) -> list[dict[str, Any]]:
    """Mean ± std (sample std over seeds) per (benchmark, aggregator, noise) of the clean tasks' metric, the
    clean-task weight share, the noisy tasks' metric, Δm, Var[Δm] and each task's test metric.

    ``results``: result dicts or a directory searched for ``results.json``. With ``out_dir``, writes
    ``summary.json``, ``summary.md`` and, when there are several noise levels, ``noise_sweep.png``.
    """
    if isinstance(results, (str, Path)):
        out_dir = out_dir or results
        results = load_results(results)
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["bench"], r["aggregator"], float(r["noise"]), r.get("wrt", "parameters"))].append(r)
    rows = []
    for (bench, agg, noise, wrt), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        row: dict[str, Any] = {"bench": bench, "aggregator": agg, "noise": noise, "wrt": wrt,
                               "seeds": sorted(int(m["seed"]) for m in members), "n": len(members),
                               "metric": members[0]["metric"], "task_names": members[0]["task_names"]}
        for key in SUMMARY_FIELDS:
            mean, std, _ = _mean_std([m.get(key) for m in members])
            row[key] = {"mean": mean, "std": std}
        k = len(members[0]["test_metrics"])
        row["test_metrics"] = [dict(zip(("mean", "std"), _mean_std([m["test_metrics"][t] for m in members])[:2]))
                               for t in range(k)]
        rows.append(row)
    table = summary_table(rows)
    print(table)
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write_json(rows, out_dir / "summary.json")
        atomic_write_text(table + "\n", out_dir / "summary.md")
        if plot and len({r["noise"] for r in rows}) > 1:
            path = plot_noise_sweep(rows, out_dir / "noise_sweep.png")
            print(f"\nPlot: {path}")
    return rows


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    def ms(cell, scale=1.0, digits=2):
        if cell is None or cell.get("mean") is None:
            return "n/a"
        return f"{cell['mean'] * scale:.{digits}f} ± {cell['std'] * scale:.{digits}f}"

    lines = ["| bench | aggregator | noise | seeds | clean-task metric | clean-task weight | noisy-task metric | Δm % | Var[Δm] |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        percent = 100.0 if r["metric"][0] == "accuracy" else 1.0
        digits = 2 if percent == 100.0 else 4
        lines.append(f"| {r['bench']} | {r['aggregator']}{'' if r['wrt'] == 'parameters' else ' (' + r['wrt'] + ')'} "
                     f"| {r['noise']:g} | {r['n']} | {ms(r['clean_metric'], percent, digits)} | {ms(r['clean_weight'], 1, 3)} "
                     f"| {ms(r['noisy_metric'], percent, digits)} | {ms(r['delta_m_mean'])} | {ms(r['delta_m_var'], 1, 1)} |")
    if rows and rows[0]["metric"][0] == "accuracy":
        lines.append("\nAccuracies in %; weights are the clean tasks' share Σ_clean w / Σ w, mean over the last epoch's steps; "
                     "mean ± sample std over seeds.")
    return "\n".join(lines)


def plot_noise_sweep(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """ExcessMTL paper Fig. 6: clean-task metric and clean-task weight against the noise level, one line
    per aggregator (mean ± std over seeds as a band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    by_agg: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_agg[r["aggregator"] + ("" if r.get("wrt", "parameters") == "parameters" else f" ({r['wrt']})")].append(r)
    accuracy = rows[0]["metric"][0] == "accuracy"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for agg, members in sorted(by_agg.items()):
        members = sorted(members, key=lambda r: r["noise"])
        x = np.array([r["noise"] for r in members])
        for ax, key in zip(axes, ("clean_metric", "clean_weight")):
            mean = np.array([np.nan if r[key]["mean"] is None else r[key]["mean"] for r in members], dtype=float)
            std = np.array([np.nan if r[key]["std"] is None else r[key]["std"] for r in members], dtype=float)
            if key == "clean_metric" and accuracy:
                mean, std = mean * 100, std * 100
            line, = ax.plot(x, mean, "o-", label=agg)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    axes[0].set_ylabel("clean-task accuracy (%)" if accuracy else "clean-task MSE")
    axes[1].set_ylabel("clean-task weight share")
    for ax in axes:
        ax.set_xlabel("noise level")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{rows[0]['bench']}: clean task vs label noise on the other task")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110, facecolor="white")
    plt.close(fig)
    return path
