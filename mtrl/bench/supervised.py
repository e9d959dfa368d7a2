"""Time per training step of the paper benchmarks on their real input sizes, per aggregator, relative to LS.

    python -m mtrl.bench supervised [--benchmarks nyuv2,cityscapes,qm9] [--aggs ls,famo,pivrg,nashmtl] [--steps 1]

Every benchmark registered in :mod:`mtrl.supervised.benchmarks` (one that another module registers is timed
too: the registry is the list) gets one batch of random tensors of the real sizes and the paper's batch size
(:meth:`Benchmark.synthetic_batch`, ``batch_size`` of ``configs/bench/<name>.yaml``) and its real model. Each
method then runs ``--steps`` :meth:`mtrl.supervised.MultiTaskTrainer.step` calls after one warm-up (median
wall time; a first step shorter than 2 s is an untimed warm-up), in one process, one method after the other,
so that the ratios are measured under one load:

* every aggregator of ``--aggs``, and its ``ratio_to_ls``;
* ``k backward passes``: forward, then ``k`` separate ``autograd.grad`` calls over the shared parameters
  (what the authors' Jacobian methods pay), the heads' backward and the optimiser step. The Jacobian
  methods' ``ratio_to_k_backward`` is their cost relative to it.

Targets (issue 20), on the CPU at the papers' model sizes: the loss-weighting methods (FAMO, RLW, UW, DWA)
at most 1.1 × LS; the Jacobian methods no slower than the k backward passes. ``train epoch`` is the time
per step times the real training split's steps per epoch (evaluation excluded). ``--quick`` shrinks the
inputs (``quick_options``) and the batch to 2 for CI; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from mtrl.aggregation import make
from mtrl.bench._common import names, positive_int, print_table, timed_median, usage_error

HELP = "time per training step of the paper benchmarks (real sizes), aggregators vs LS and k backward passes"

LOSS_WEIGHTING_TARGET = 1.1    # × LS
JACOBIAN_TARGET = 1.0          # × k separate backward passes
DEFAULT_AGGS = ("ls", "famo", "pivrg", "nashmtl")
#: a first step shorter than this is a warm-up (not timed); a longer one is timed (its allocations are noise)
WARMUP_BELOW_S = 2.0
_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmarks", type=names, default=None,
                        help="comma-separated (default: every registered paper benchmark)")
    parser.add_argument("--aggs", type=names, default=list(DEFAULT_AGGS),
                        help="comma-separated aggregators (default: ls,famo,pivrg,nashmtl; add rlw,uw,dwa for the "
                             "other loss-weighting targets)")
    parser.add_argument("--steps", type=positive_int, default=1, help="timed steps per method (median)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="override the papers' batch sizes (shorter runs; then not the paper's step)")


def _config(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = _CONFIGS / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True) if path.is_file() else {}


def _loss_fn(benchmark, model):
    return lambda batch: benchmark.losses(benchmark.forward(model, batch), batch)


def _k_backward_step(benchmark, model, optimizer, batch) -> None:
    """Forward, k per-task gradients over the shared parameters, the heads' backward, the optimiser step."""
    shared = benchmark.shared_parameters(model)
    shared_ids = {id(p) for p in shared}
    heads = [p for p in model.parameters() if id(p) not in shared_ids]
    optimizer.zero_grad(set_to_none=True)
    losses = benchmark.losses(benchmark.forward(model, batch), batch)
    grads = [torch.autograd.grad(losses[i], shared, retain_graph=True, allow_unused=True) for i in range(len(losses))]
    for j, p in enumerate(shared):
        parts = [g[j] for g in grads if g[j] is not None]
        p.grad = torch.stack(parts).sum(0) if parts else None
    torch.autograd.backward(losses.sum(), inputs=heads)
    optimizer.step()


def _median_seconds(step, steps: int, device: torch.device) -> float:
    """Median wall time of ``steps`` calls; a short first call is an untimed warm-up (see WARMUP_BELOW_S)."""
    first = timed_median(step, 1, warmup=0, device=device)
    rest = [timed_median(step, 1, warmup=0, device=device) for _ in range(steps - (first >= WARMUP_BELOW_S))]
    times = ([first] if first >= WARMUP_BELOW_S else []) + rest
    return statistics.median(times)


def _time_benchmark(name: str, aggs: list[str], steps: int, quick: bool, device: torch.device,
                    batch_size: int | None = None) -> list[dict[str, Any]]:
    from mtrl.supervised import MultiTaskTrainer
    from mtrl.supervised.bench import aggregator_spec, resolve_options
    from mtrl.supervised.benchmarks import get

    cls = get(name)
    config = _config(name)
    benchmark = cls({**config, **(cls.quick_options if quick else {})})
    batch_size = 2 if quick else batch_size or int(config.get("batch_size") or 2)
    batch = benchmark.to_device(benchmark.synthetic_batch(batch_size, torch.Generator().manual_seed(0)), device)
    torch.manual_seed(0)
    model = benchmark.build_model().to(device)
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    parameters = sum(p.numel() for p in model.parameters())
    k = benchmark.num_tasks
    steps_per_epoch = math.ceil(cls.train_size / batch_size) if cls.train_size else None

    def measure(step) -> float:
        model.load_state_dict(initial)
        return _median_seconds(step, steps, device)

    seconds: dict[str, float] = {}
    for agg in aggs:
        agg_name, opts = aggregator_spec(agg, None, (config.get("agg_overrides") or {}).get(agg))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
        trainer = MultiTaskTrainer(model, _loss_fn(benchmark, model), make(agg_name, **resolve_options(opts)), optimizer,
                                   shared=benchmark.shared_parameters(model))
        seconds[agg] = measure(lambda: trainer.step(batch))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
    seconds["k backward passes"] = measure(lambda: _k_backward_step(benchmark, model, optimizer, batch))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for method, value in seconds.items():
        jacobian = method != "k backward passes" and make(method).needs_jacobian
        loss_weighting = method not in ("ls", "k backward passes") and not jacobian
        ratio_ls = value / seconds["ls"] if "ls" in seconds else None
        ratio_k = value / seconds["k backward passes"]
        target, meets = None, None
        if loss_weighting and ratio_ls is not None:
            target, meets = f"<= {LOSS_WEIGHTING_TARGET} x ls", ratio_ls <= LOSS_WEIGHTING_TARGET
        elif jacobian:
            target, meets = f"<= {JACOBIAN_TARGET} x k backward", ratio_k <= JACOBIAN_TARGET
        rows.append({"benchmark": name, "batch": batch_size, "parameters": parameters, "tasks": k, "method": method,
                     "s_per_step": value, "ratio_to_ls": ratio_ls, "ratio_to_k_backward": ratio_k,
                     "train_epoch_min": None if steps_per_epoch is None else value * steps_per_epoch / 60,
                     "target": target, "meets": meets, "load_1min": load})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mtrl.supervised.benchmarks import available

    chosen = args.benchmarks or available()
    unknown = sorted(set(chosen) - set(available()))
    if unknown:
        usage_error(f"unknown benchmark(s) {unknown}; valid: {', '.join(available())}.")
    from mtrl.aggregation import available as aggregators

    bad = sorted(set(args.aggs) - set(aggregators()))
    if bad:
        usage_error(f"unknown aggregator(s) {bad}; valid: {', '.join(aggregators())}.")
    if args.quick:
        args.steps = 1
    device = torch.device(args.device)
    rows = []
    for name in chosen:
        table = _time_benchmark(name, list(args.aggs), args.steps, args.quick, device, args.batch_size)
        print_table(table, ["method", "s_per_step", "ratio_to_ls", "ratio_to_k_backward", "train_epoch_min", "target",
                            "meets", "load_1min"],
                    title=f"{name}: batch {table[0]['batch']}, {table[0]['parameters']:,} parameters, "
                          f"k = {table[0]['tasks']}, {device}, torch threads {torch.get_num_threads()}, "
                          f"median of {args.steps} step(s)")
        rows += table
    return {"rows": rows, "steps": args.steps}
