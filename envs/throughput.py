"""Environment-only throughput (vector steps per second) of the multi-task environment, random actions.

    python -m envs.throughput --benchmark mt10 --strategies sync,async --steps 2000 --repeats 3

The strategies are measured in turns (sync, async, sync, async, ...), so that their ratio holds on a noisy
machine; the best and the median rate of each are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from envs.multitask import MultiTaskEnv, make_multitask_env
from envs.protocols import make_protocol


def vector_steps_per_second(env: MultiTaskEnv, steps: int, seed: int = 0) -> float:
    """Vector steps per second of ``env`` over ``steps`` steps with uniform random actions."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(env.action_low, env.action_high, size=(steps, env.num_tasks, env.action_dim))
    env.reset()
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="mt10")
    parser.add_argument("--task", default=None, help="the task of mt1")
    parser.add_argument("--protocol", default="metaworld")
    parser.add_argument("--strategies", default="sync,async")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    protocol = make_protocol(args.protocol)
    strategies = args.strategies.split(",")
    envs = {s: make_multitask_env(args.benchmark, protocol, 0, args.task, vector_strategy=s) for s in strategies}
    rates: dict[str, list[float]] = {s: [] for s in strategies}
    try:
        for strategy, env in envs.items():  # warm-up
            vector_steps_per_second(env, min(200, args.steps))
        for _ in range(args.repeats):
            for strategy, env in envs.items():
                rates[strategy].append(vector_steps_per_second(env, args.steps))
    finally:
        for env in envs.values():
            env.close()
    for strategy, values in rates.items():
        print(
            f"{args.benchmark} {strategy:>5}: best {max(values):7.1f}  median {statistics.median(values):7.1f} "
            f"vector steps/s  ({len(values)} x {args.steps} steps)"
        )
    return rates


if __name__ == "__main__":
    main()
