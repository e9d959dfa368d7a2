"""Environment-only throughput: vector steps per second of the multi-task environment, random actions.

    python -m mtrl.bench env                                     # MT10: gymnasium sync, async; EnvPool
    python -m mtrl.bench env --benchmark mt50 --steps 500 --out runs/bench/env.json

One vector step is one step of every task (10 MuJoCo steps for MT10). Every configuration steps the same
tasks with the same uniform random actions through :class:`envs.MultiTaskEnv` (so the bookkeeping the
training loop pays is included), measured in turns (gymnasium sync, gymnasium async, EnvPool, again, ...)
so that their ratios hold on a shared machine; the table gives the median and best of ``--repeats``.
``envpool_over_gymnasium_ratio``: EnvPool's median over the best gymnasium strategy's median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mtrl.bench._common import names, positive_int, print_table

HELP = "env-only vector steps/s per backend and vector strategy, and EnvPool / gymnasium"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", default=None, type=_one_of("BENCHMARKS", "benchmark"),
                        help="mt10 (default) | mt50 | mt1 (with --task; --quick: mt1 reach-v3)")
    parser.add_argument("--task", default=None, type=_one_of("BENCHMARKS", "task", "mt1"), help="the task of mt1")
    parser.add_argument("--protocol", default="metaworld", type=_one_of("PROTOCOLS", "protocol"), help="metaworld | mtrl")
    parser.add_argument("--strategies", default="sync,async", help="gymnasium vector strategies to measure")
    parser.add_argument("--backends", default="gymnasium,envpool", help="backends to measure")
    parser.add_argument("--steps", type=positive_int, default=1000, help="vector steps per measurement")
    parser.add_argument("--repeats", type=positive_int, default=3)


def _one_of(table: str, what: str, key: str | None = None) -> Callable[[str], str]:
    """An argparse ``type``: a name of ``envs.<table>`` (or of ``envs.<table>[key]``), read when parsing."""
    def check(text: str) -> str:
        import envs

        valid = list(getattr(envs, table) if key is None else getattr(envs, table)[key])
        if text not in valid:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from {', '.join(valid)}")
        return text

    return check


def _usage_error(message: str) -> None:
    print(f"mtrl.bench env: error: {message}", file=sys.stderr)
    sys.exit(2)


def vector_steps_per_second(env: Any, actions: np.ndarray) -> float:
    """Vector steps per second of ``env`` stepping ``actions`` [steps, k, action_dim] from a reset."""
    env.reset()
    started = time.perf_counter()
    for action in actions:
        env.step(action)
    return len(actions) / (time.perf_counter() - started)


def configurations(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(backend, strategy) pairs; EnvPool's strategy is its own threads."""
    backends = names(args.backends)
    unknown = sorted(set(backends) - {"gymnasium", "envpool"})
    if unknown:
        _usage_error(f"unknown backend(s) {unknown}; use --backends gymnasium,envpool (or one of them).")
    pairs = []
    if "gymnasium" in backends:
        pairs += [("gymnasium", s.strip()) for s in args.strategies.split(",") if s.strip()]
    if "envpool" in backends:
        import envs

        if envs.envpool_available():
            pairs.append(("envpool", "threads"))
        else:
            print("EnvPool does not import here: measuring gymnasium only.")
    return pairs


def run(args: argparse.Namespace) -> dict[str, Any]:
    import envs

    if args.quick:   # one task: building MT10's goals alone takes longer than a CI test may
        args.steps, args.repeats, args.strategies = 30, 1, "sync"
        if args.benchmark is None:
            args.benchmark, args.task = "mt1", args.task or "reach-v3"
    args.benchmark = args.benchmark or "mt10"
    protocol = envs.make_protocol(args.protocol)
    try:
        task_names = envs.benchmark_tasks(args.benchmark, args.task)
    except ValueError as error:
        _usage_error(f"--benchmark {args.benchmark} --task {args.task}: {error}")
    built: dict[tuple[str, str], Any] = {}
    try:
        for backend, strategy in configurations(args):
            built[backend, strategy] = envs.make_multitask_env(
                args.benchmark, protocol, 0, args.task, vector_strategy="sync" if strategy == "threads" else strategy,
                backend=backend)
        rng = np.random.default_rng(0)
        actions = rng.uniform(-1.0, 1.0, size=(args.steps, len(task_names), 4)).astype(np.float32)
        rates: dict[tuple[str, str], list[float]] = {key: [] for key in built}
        for env in built.values():   # warm-up: first resets, caches, worker start
            vector_steps_per_second(env, actions[: min(20, args.steps)])
        for _ in range(args.repeats):
            for key, env in built.items():
                rates[key].append(vector_steps_per_second(env, actions))
    finally:
        for env in built.values():
            env.close()

    rows = [{"backend": backend, "strategy": strategy,
             "median_vector_steps_per_s": statistics.median(values), "best_vector_steps_per_s": max(values),
             "transitions_per_s": statistics.median(values) * len(task_names)}
            for (backend, strategy), values in rates.items()]
    result: dict[str, Any] = {"benchmark_tasks": args.benchmark, "task": args.task, "protocol": args.protocol,
                              "steps": args.steps, "repeats": args.repeats, "rows": rows}
    gymnasium = [row for row in rows if row["backend"] == "gymnasium"]
    envpool = [row for row in rows if row["backend"] == "envpool"]
    if gymnasium and envpool:
        best = max(gymnasium, key=lambda row: row["median_vector_steps_per_s"])
        result["envpool_over_gymnasium_ratio"] = envpool[0]["median_vector_steps_per_s"] / best["median_vector_steps_per_s"]
        result["ratio_reference"] = f"gymnasium {best['strategy']}"
        for row in gymnasium:
            result[f"envpool_over_gymnasium_{row['strategy']}_ratio"] = (
                envpool[0]["median_vector_steps_per_s"] / row["median_vector_steps_per_s"])
    print_table(rows, title=f"{args.benchmark} env-only throughput ({args.steps} random-action steps x {args.repeats})")
    for key, value in result.items():
        if "ratio" in key and isinstance(value, float):
            print(f"{key}: {value:.2f}")
    return result
