"""Sustained throughput of the real training loop, and where its time goes.

    python -m mtrl.bench train --aggs ls,pivrg                       # MT10, the paper's networks and batch
    python -m mtrl.bench train --aggs pivrg --orders overlap,sequential --window 300

For each aggregator (and each loop order), one :class:`mtrl.experiment.Trainer` is built from the repository's
config exactly as ``python -m mtrl.train`` builds it, and trained for ``--warmup`` steps (replay warm-up and
the first updates, untimed), then for ``--window`` steps, timed: the figure is vector steps per second over
that window. With several ``--orders`` they take turns every ``--chunk`` steps of the same run, so that
they share the machine's load and its ratio holds. The shares split the window's wall time into ``env`` (sending actions and waiting for the
environments: with EnvPool's threads only the part the update did not hide), ``act``, ``update``,
``store`` (replay buffer and episode bookkeeping), ``evaluation`` (inline evaluations, or waiting for one)
and ``other`` (logging, checkpoints, the loop). Before training, the same environment is stepped alone
with random actions: ``train_over_env_only_ratio`` says how far the loop is from the environment's own
speed. Orders: ``overlap`` is the loop as it is (act, send, update, receive, store); ``sequential`` steps
the environments before the update, as the loop did before the overlap; ``overlap_over_sequential_ratio``
compares the two. The device is synchronised only at the ends of each chunk (and, with ``--sync-phases``,
after every update, to charge the update its GPU time at the cost of the overlap).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mtrl.bench._common import names, positive_int, print_table, synchronize
from mtrl.validation import config_groups

HELP = "training-loop vector steps/s per aggregator, time shares (env/act/update/eval), ratio to env-only"

ORDERS = ("overlap", "sequential")
PHASES = ("env", "act", "update", "store", "evaluation")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aggs", default="ls,pivrg", help="comma-separated aggregators (configs/agg/)")
    parser.add_argument("--orders", default="overlap", help="overlap and/or sequential (see above)")
    parser.add_argument("--env", default="mt10", choices=config_groups()["env"], help="mt10 | mt50 | mt1 (configs/env/)")
    parser.add_argument("--backend", default="auto", choices=("auto", "envpool", "gymnasium"),
                        help="env.backend: auto | envpool | gymnasium")
    parser.add_argument("--warmup", type=positive_int, default=300, help="untimed steps first (replay warm-up included)")
    parser.add_argument("--window", type=positive_int, default=300, help="timed vector steps (all orders together)")
    parser.add_argument("--chunk", type=positive_int, default=10, help="the orders take turns every this many steps")
    parser.add_argument("--eval-every", type=positive_int, default=None,
                        help="evaluate every this many steps inside the window (default: never)")
    parser.add_argument("--sync-phases", action="store_true",
                        help="synchronise the device after every update, so that the update's share holds its GPU "
                             "time (serialises the update and the environments: lowers vector_steps_per_s); by "
                             "default the update's share is the time it holds the host, and GPU time shows up where "
                             "the host next waits (act)")
    parser.add_argument("--override", action="append", default=[],
                        help="any further `python -m mtrl.train` override, e.g. --override agent.batch_size=640")


def _usage_error(message: str) -> None:
    print(f"mtrl.bench train: error: {message}", file=sys.stderr)
    sys.exit(2)


def _overrides(args: argparse.Namespace, agg: str) -> list[str]:
    steps = args.warmup + args.window
    eval_every = args.eval_every if args.eval_every else 10 * steps   # never inside the run ...
    overrides = [f"agg={agg}", f"env={args.env}", f"env.backend={args.backend}", f"steps={steps}",
                 f"warmup_steps={max(1, args.warmup // 2)}", f"eval_every={eval_every}", f"log_every={steps}",
                 f"checkpoint_every={10 * steps}", "progress=false", f"device={args.device}",
                 "buffer_size=100000"]
    if args.quick:
        overrides += ["env.task=reach-v3", "agent.hidden_dim=32", "agent.trunk_layers=1", "agent.batch_size=16",
                      "protocol.max_episode_steps=10", "eval_episodes=1"]
    elif args.env == "mt1":
        overrides.append("env.task=reach-v3")
    return overrides + list(args.override)


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    import mtrl.train  # noqa: F401  (registers the config's resolvers)

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


class _PhaseClock:
    """Wall time per (order, phase) inside the window; wraps bound methods of the trainer and its environment."""

    def __init__(self, device: str) -> None:
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.order: str | None = None   # None: outside the window
        self.device = device

    def wrap(self, phase: str, function: Callable[..., Any], sync: bool = False) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.order is None:
                return function(*args, **kwargs)
            started = time.perf_counter()
            value = function(*args, **kwargs)
            if sync:   # the update's GPU kernels belong to the update
                synchronize(self.device)
            self.seconds[self.order, phase] += time.perf_counter() - started
            return value
        return timed


def _sequential_iteration(steps: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The loop before the overlap: the environments step, then the update (same draws, same result)."""
    def iteration(obs: np.ndarray) -> np.ndarray:
        action = steps.act(obs)
        steps.env.step_async(action)
        result = steps.env.step_wait()
        steps.update()
        steps.store(obs, action, result)
        return result.obs
    return iteration


def measure(args: argparse.Namespace, agg: str, orders: list[str]) -> list[dict[str, Any]]:
    """One run of ``agg``; inside the window the orders take turns every ``--chunk`` steps, so that they
    share the machine's load (this machine is shared); one row per order."""
    from mtrl.bench.env import vector_steps_per_second
    from mtrl.experiment import Trainer, prepare

    settings = prepare(_compose(_overrides(args, agg)))
    with tempfile.TemporaryDirectory(prefix="mtrl-bench-train-") as run_dir:
        trainer = Trainer(settings, run_dir)
        k = settings.num_tasks
        actions = np.random.default_rng(0).uniform(-1, 1, size=(max(20, args.window // 3), k, 4)).astype(np.float32)
        loop = trainer.run.steps   # the training steps' phases (mtrl.experiment.stepping.StepLoop)
        trainer.run.evaluations.wait_ready()   # the evaluation worker builds its environments before the timing
        env_only = vector_steps_per_second(loop.env, actions)

        clock = _PhaseClock(args.device)
        loop.act = clock.wrap("act", loop.act)
        loop.update = clock.wrap("update", loop.update, sync=args.sync_phases)
        loop.store = clock.wrap("store", loop.store)
        trainer.evaluate = clock.wrap("evaluation", trainer.evaluate)
        loop.env.step_async = clock.wrap("env", loop.env.step_async)
        loop.env.step_wait = clock.wrap("env", loop.env.step_wait)
        iterations = {"overlap": loop.iteration, "sequential": _sequential_iteration(loop)}
        wall: dict[str, float] = defaultdict(float)
        steps: dict[str, int] = defaultdict(int)
        started = [0.0]
        after_step = trainer.after_step

        current = [0]

        # The wall time is taken per chunk of --chunk steps (one order each), with the device synchronised at
        # the chunk's ends only: inside a chunk the update's GPU work overlaps the environments as in training.
        def iteration(obs: np.ndarray) -> np.ndarray:
            offset = current[0] = loop.step - args.warmup
            in_window = 0 <= offset < args.window
            clock.order = orders[(offset // args.chunk) % len(orders)] if in_window else None
            if clock.order is not None and offset % args.chunk == 0:
                synchronize(args.device)
                started[0] = time.perf_counter()
            return iterations[clock.order or "overlap"](obs)

        def timed_after_step() -> None:   # logging, evaluations, checkpoints count to the step's order
            after_step()
            if clock.order is not None:
                steps[clock.order] += 1
                if (current[0] + 1) % args.chunk == 0 or current[0] + 1 == args.window:
                    synchronize(args.device)
                    wall[clock.order] += time.perf_counter() - started[0]
            clock.order = None

        loop.iteration, trainer.after_step = iteration, timed_after_step
        trainer.train()
    rows = []
    for order in orders:
        shares = {f"{phase}_share": clock.seconds[order, phase] / wall[order] for phase in PHASES}
        shares["other_share"] = max(0.0, 1.0 - sum(shares.values()))
        steps_per_s = steps[order] / wall[order]
        rows.append({"agg": agg, "order": order, "backend": settings.backend, "steps": steps[order],
                     "vector_steps_per_s": steps_per_s, "env_only_vector_steps_per_s": env_only,
                     "train_over_env_only_ratio": steps_per_s / env_only, "window_s": wall[order], **shares})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.env, args.warmup, args.window, args.chunk = "mt1", 8, 12, 3
    aggs = names(args.aggs)
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    if not aggs:
        _usage_error("--aggs names no aggregator (e.g. --aggs ls,pivrg).")
    if unknown := sorted(set(orders) - set(ORDERS)):
        _usage_error(f"unknown order(s) {unknown}; use --orders {','.join(ORDERS)} (or one of them).")
    if args.warmup < 2 or args.window < len(orders) or args.chunk < 1:
        _usage_error("--warmup should be at least 2, --chunk positive and --window at least one step per order.")
    from mtrl.experiment import ConfigError

    configs = Path(__file__).resolve().parents[2] / "configs" / "agg"
    valid = sorted(path.stem for path in configs.glob("*.yaml"))
    if unknown := sorted(set(aggs) - set(valid)):
        _usage_error(f"unknown aggregator(s) {unknown}; valid: {', '.join(valid)}.")
    from mtrl.train import check_command_line

    for agg in aggs:   # every run's overrides (--override too) through mtrl.train's own checks, before any run
        try:
            check_command_line(_overrides(args, agg))
        except ConfigError as error:
            _usage_error(str(error))
    rows: list[dict[str, Any]] = []
    for agg in aggs:
        try:
            measured = measure(args, agg, orders)
        except ConfigError as error:
            _usage_error(str(error))
        rows += measured
        for row in measured:   # as they come: a long run that gets stopped still leaves its first rows
            print(f"{agg} {row['order']} ({row['backend']}): {row['vector_steps_per_s']:.4g} vector steps/s",
                  flush=True)
    result: dict[str, Any] = {"env": args.env, "warmup": args.warmup, "window": args.window, "chunk": args.chunk,
                              "rows": rows}
    for agg in aggs:
        by_order = {row["order"]: row for row in rows if row["agg"] == agg}
        if len(by_order) == 2:
            result[f"{agg}_overlap_over_sequential_ratio"] = (
                by_order["overlap"]["vector_steps_per_s"] / by_order["sequential"]["vector_steps_per_s"])
    columns = ["agg", "order", "backend", "vector_steps_per_s", "env_only_vector_steps_per_s",
               "train_over_env_only_ratio", *(f"{phase}_share" for phase in (*PHASES, "other"))]
    print_table(rows, columns, title=f"{args.env} training loop ({args.window} timed steps after {args.warmup})")
    for key, value in result.items():
        if "ratio" in key:
            print(f"{key}: {value:.2f}")
    return result
