"""Wall time of one multi-task SAC update (critic, actor, temperatures, target) per aggregator.

    python -m mtrl.benchmarks.sac_update_time --tasks 10 --batch-size 1280 --aggregators ls jacobian pivrg

``jacobian`` is not a method: equal weights computed through the task-partitioned Jacobian path, so that
the Jacobian's cost can be told apart from an aggregator's own solve. Times are medians over ``--repeats``
updates after ``--warmup`` untimed ones, on random replay contents (the cost does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from agents import MultiTaskSAC, ReplayBuffer, SACConfig
from mtrl.aggregation import Aggregator, TaskStats, available, make


class _EqualWeightsThroughJacobian(Aggregator):
    """Equal weights, but declared as needing the Jacobian: times the Jacobian path alone."""

    name = "jacobian"
    needs_jacobian = True

    def _weights(self, jacobian: torch.Tensor | None, stats: TaskStats) -> torch.Tensor:
        return torch.full((stats.num_tasks,), 1.0 / stats.num_tasks, dtype=stats.losses.dtype,
                          device=stats.losses.device)

    def __repr__(self) -> str:
        return "EqualWeightsThroughJacobian()"


def _aggregator(name: str) -> Aggregator:
    return _EqualWeightsThroughJacobian() if name == "jacobian" else make(name)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_updates(aggregator: str, tasks: int, obs_dim: int, action_dim: int, batch_size: int, hidden_dim: int,
                 head_layers: int, device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    config = SACConfig(hidden_dim=hidden_dim, head_layers=head_layers, batch_size=batch_size)
    agent = MultiTaskSAC(obs_dim, action_dim, tasks, config, _aggregator(aggregator), _aggregator(aggregator),
                         device=device, seed=0)
    buffer = ReplayBuffer(tasks, obs_dim, action_dim, capacity=tasks * 2000, device=device, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        buffer.add(rng.normal(size=(tasks, obs_dim)), rng.uniform(-1, 1, (tasks, action_dim)), rng.normal(size=tasks),
                   rng.normal(size=(tasks, obs_dim)), np.zeros(tasks, dtype=bool))
    performance = torch.linspace(0.0, 90.0, tasks, device=device)
    times = []
    for index in range(warmup + repeats):
        batch = buffer.sample(agent.batch_per_task)
        _synchronize(device)
        start = time.perf_counter()
        agent.update(batch, performance=performance)
        _synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aggregators", nargs="+", default=["ls", "jacobian", "pivrg"],
                        help="registered names, or 'jacobian' (equal weights through the Jacobian path)")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--obs-dim", type=int, default=49, help="Meta-World 39 + one-hot")
    parser.add_argument("--action-dim", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1280)
    parser.add_argument("--hidden-dim", type=int, default=400)
    parser.add_argument("--head-layers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {}
    for name in args.aggregators:
        if name != "jacobian" and name not in available():
            print(f"{name}: not registered in mtrl.aggregation (available: {', '.join(available())}); skipped")
            continue
        results[name] = time_updates(name, args.tasks, args.obs_dim, args.action_dim, args.batch_size,
                                     args.hidden_dim, args.head_layers, device, args.warmup, args.repeats)
        print(f"{name:>10}: {results[name]['median_ms']:.1f} ms per update (median; min {results[name]['min_ms']:.1f})",
              flush=True)
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "tasks": args.tasks,
                      "batch_size": args.batch_size, "hidden_dim": args.hidden_dim, "head_layers": args.head_layers,
                      "results": results}))


if __name__ == "__main__":
    main()
