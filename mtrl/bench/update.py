"""Wall time of one full multi-task SAC update per aggregator and per ``agent.compile`` mode.

    python -m mtrl.bench update [--aggregators ls,pivrg] [--hidden-dim 128 --trunk-layers 2] [--device cuda]

One update is what training does per vector step: the replay sample (device-side indices), the
critic's aggregated step, the actor's aggregated step, the temperatures and the target critics
(:meth:`agents.MultiTaskSAC.update` with the buffer as its source). Per mode, ``ratio_to_ls`` is an
aggregator's time over ``ls``'s; per aggregator, ``ratio_to_eager`` is a mode's time over ``none``'s
(its speed-up is the inverse). ``warmup_s`` covers the first calls (on CUDA, warm-up and capture).
``cpu_ms`` is the process's CPU time per update, which a busy machine inflates less than wall time.
Times are medians over ``--repeats`` rounds that time every (mode, aggregator) once, interleaved so that
all rows see the same load, on random replay contents (the cost does not depend on them). On CUDA,
``kernels`` counts the kernels one update launches (the profiler's CUDA activity): what ``bench launches``
models on any machine; ``kernel_ms`` is their summed GPU time (below ``ms``: the rest is gaps between
kernels), and ``top_kernels`` (printed per row, and in the JSON) names those that take the most of it.
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agents import COMPILE_MODES, MultiTaskSAC, ReplayBuffer, SACConfig
from mtrl.aggregation import available, make
from mtrl.bench._common import names, positive_int, print_table, synchronize, timed_median, usage_error

HELP = "one full SAC update (sample, critic, actor, temperatures, targets) per aggregator and compile mode"

#: Calls before timing: a CUDA-graph phase warms up 3 times and is captured on the 4th.
MIN_WARMUP = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aggregators", type=names, default=None,
                        help="comma-separated registered names (default: ls and every method)")
    parser.add_argument("--modes", type=names, default=None,
                        help="comma-separated agent.compile modes (default: none; none,cudagraphs on CUDA)")
    parser.add_argument("--tasks", type=positive_int, default=10)
    parser.add_argument("--obs-dim", type=positive_int, default=49, help="Meta-World 39 + one-hot")
    parser.add_argument("--action-dim", type=positive_int, default=4)
    parser.add_argument("--batch-size", type=positive_int, default=1280)
    parser.add_argument("--hidden-dim", type=positive_int, default=400)
    parser.add_argument("--trunk-layers", type=positive_int, default=3)
    parser.add_argument("--warmup", type=positive_int, default=MIN_WARMUP)
    parser.add_argument("--repeats", type=positive_int, default=20)


def build(aggregator: str, mode: str, args: argparse.Namespace) -> tuple[MultiTaskSAC, ReplayBuffer, torch.Tensor]:
    """An agent (``aggregator`` for both networks), a buffer filled with random transitions, and Δm."""
    device, k = torch.device(args.device), args.tasks
    torch.manual_seed(0)
    config = SACConfig(hidden_dim=args.hidden_dim, trunk_layers=args.trunk_layers, batch_size=args.batch_size,
                       compile=mode)
    agent = MultiTaskSAC(args.obs_dim, args.action_dim, k, config, make(aggregator), make(aggregator),
                         device=device, seed=0)
    steps = 500
    buffer = ReplayBuffer(k, args.obs_dim, args.action_dim, capacity=k * steps, device=device, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        buffer.add(rng.normal(size=(k, args.obs_dim)), rng.uniform(-1, 1, (k, args.action_dim)), rng.normal(size=k),
                   rng.normal(size=(k, args.obs_dim)), np.zeros(k, dtype=bool))
    return agent, buffer, torch.linspace(0.0, 90.0, k, device=device)


def prepare(aggregator: str, mode: str, args: argparse.Namespace) -> tuple[Callable[[], Any], dict[str, Any]]:
    """An agent and a filled buffer, warmed up (compiled or captured); returns one update as a call."""
    device = torch.device(args.device)
    agent, buffer, performance = build(aggregator, mode, args)

    def update() -> None:
        agent.update(buffer, performance)

    synchronize(device)
    started = time.perf_counter()
    for _ in range(max(args.warmup, MIN_WARMUP)):
        update()
    synchronize(device)
    warmup_s = time.perf_counter() - started
    return update, {"warmup_s": warmup_s, "captured": ",".join(agent.runner.captured()) if mode == "cudagraphs" else None}


def profile_kernels(update: Callable[[], Any], top: int = 12) -> dict[str, Any]:
    """One update under the profiler's CUDA activity: its kernels (copies and fills excluded), their summed
    GPU time and the ``top`` kernels by GPU time (:func:`summarize_kernels`); ``{"error": ...}`` where the
    profiler cannot tell. Where a replayed update's time goes, for the next change to aim at."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            update()
            torch.cuda.synchronize()
        kernels = [(event.name, event.device_time) for event in profiler.events()
                   if event.device_type == torch.autograd.DeviceType.CUDA]
        return summarize_kernels(kernels, top)
    except Exception as error:  # noqa: BLE001 - a profile is a diagnostic; the timings stand without it
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"}


def summarize_kernels(kernels: list[tuple[str, float]], top: int) -> dict[str, Any]:
    """``(name, GPU µs)`` per kernel launch -> the launch count, the summed µs, and the ``top`` names by
    summed time (calls, µs, share). Copies and fills (``Memcpy``/``Memset``) are left out: not launches of ours."""
    kept = [(name, us) for name, us in kernels if not name.lower().startswith(("memcpy", "memset"))]
    total = sum(us for _, us in kept)
    by_name: dict[str, list[float]] = {}
    for name, us in kept:
        by_name.setdefault(name, []).append(us)
    ranked = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:top]
    return {"kernels": len(kept), "kernel_us": total,
            "top": [{"kernel": name[:90], "calls": len(times), "us": sum(times),
                     "share": sum(times) / total if total else None} for name, times in ranked]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = args.device.startswith("cuda")
    if args.quick:
        args.tasks, args.batch_size, args.hidden_dim, args.repeats, args.warmup = 3, 24, 16, 2, MIN_WARMUP
        args.aggregators = args.aggregators or ["ls", "pivrg"]
        args.modes = args.modes or ["none"]
    aggregators = args.aggregators or ["ls", *[name for name in available() if name != "ls"]]
    modes = args.modes or (["none", "cudagraphs"] if cuda else ["none"])
    unknown = [name for name in aggregators if name not in available()]
    if unknown:
        usage_error(f"update: unknown aggregator(s) {unknown}; choose from {', '.join(available())}.")
    if "ls" not in aggregators:
        usage_error("update: --aggregators should include ls, the reference of ratio_to_ls.")
    bad_modes = [mode for mode in modes if mode not in COMPILE_MODES]
    if bad_modes:
        usage_error(f"update: unknown mode(s) {bad_modes}; choose from {', '.join(COMPILE_MODES)}.")
    if args.batch_size % args.tasks:
        usage_error(f"update: --batch-size {args.batch_size} should be a multiple of --tasks {args.tasks} "
                    f"(the batch is stratified by task).")
    if "cudagraphs" in modes and not cuda:
        print("mode cudagraphs needs --device cuda: skipped")
        modes = [mode for mode in modes if mode != "cudagraphs"]

    results: dict[str, dict[str, Any]] = {mode: {} for mode in modes}
    updates: dict[tuple[str, str], Callable[[], Any]] = {}
    for mode in modes:
        for name in aggregators:
            try:
                updates[mode, name], results[mode][name] = prepare(name, mode, args)
            except Exception as error:  # noqa: BLE001 - one failing row must not lose the others
                traceback.print_exc()
                results[mode][name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"{mode:>10} {name:>10}: ready {results[mode][name]}", flush=True)
    # Interleaved rounds: every row sees the same load on a shared machine, so the ratios hold.
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in updates}
    cpu_samples: dict[tuple[str, str], list[float]] = {key: [] for key in updates}
    for _ in range(args.repeats):
        for key, update in updates.items():
            started = time.process_time()
            samples[key].append(timed_median(update, 1, warmup=0, device=args.device))
            cpu_samples[key].append(time.process_time() - started)
    for (mode, name), times in samples.items():
        results[mode][name]["ms"] = 1e3 * statistics.median(times)
        results[mode][name]["cpu_ms"] = 1e3 * statistics.median(cpu_samples[mode, name])
        if cuda:   # what `bench launches` models on the CPU, measured, and where the GPU time goes
            profile = profile_kernels(updates[mode, name])
            results[mode][name].update(kernels=profile.get("kernels", profile.get("error")),
                                       kernel_ms=1e-3 * profile["kernel_us"] if "kernel_us" in profile else None,
                                       top_kernels=profile.get("top"))

    rows = []
    for mode in modes:
        ls_ms = results[mode].get("ls", {}).get("ms")
        for name in aggregators:
            row = results[mode][name]
            if "ms" not in row:
                continue
            eager_ms = results.get("none", {}).get(name, {}).get("ms")
            row["ratio_to_ls"] = row["ms"] / ls_ms if ls_ms else None
            row["ratio_to_eager"] = row["ms"] / eager_ms if eager_ms else None
            rows.append({"mode": mode, "aggregator": name, **row})
    print_table(rows, ["mode", "aggregator", "ms", "cpu_ms", "ratio_to_ls", "ratio_to_eager", "kernels", "kernel_ms",
                       "warmup_s", "captured"],
                title=f"One SAC update, k={args.tasks}, batch {args.batch_size}, {args.trunk_layers}x{args.hidden_dim} "
                      f"trunks, {args.device}")
    for row in rows:
        if row.get("top_kernels"):
            print_table(row["top_kernels"], ["kernel", "calls", "us", "share"],
                        title=f"{row['mode']} {row['aggregator']}: the kernels with the most GPU time in one update")
    return {"tasks": args.tasks, "batch_size": args.batch_size, "hidden_dim": args.hidden_dim,
            "trunk_layers": args.trunk_layers, "device": args.device, "repeats": args.repeats, "results": results}
