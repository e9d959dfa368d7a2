"""Cost of the per-task Jacobian on a SAC-critic-shaped trunk, relative to one plain backward pass.

    python -m mtrl.bench jacobian [--tasks 10] [--batch-per-task 128] [--hidden 400] [--device cpu]

A 3-layer MLP trunk shared by ``k`` tasks, one linear head per task, the batch partitioned by task
(what the multi-head SAC agent differentiates). Forward + backward each, medians in one process:

* ``plain``: one backward of the summed loss (no Jacobian);
* ``partitioned``: the trunk through per-task replicas (:func:`mtrl.aggregation.replicate_for_tasks`,
  :func:`mtrl.aggregation.task_linear`) and one backward (:func:`mtrl.aggregation.task_partitioned_gradients`),
  the agent's route;
* ``batched``: the generic :func:`mtrl.aggregation.task_jacobian` (``is_grads_batched``);
* ``loop``: ``k`` separate backward passes.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor, nn

from mtrl.aggregation import replicate_for_tasks, task_jacobian, task_linear, task_partitioned_gradients
from mtrl.bench._common import positive_int, print_table, timed_median

HELP = "per-task Jacobian (replicated trunk, batched, loop) vs one plain backward"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=positive_int, default=10)
    parser.add_argument("--batch-per-task", type=positive_int, default=128)
    parser.add_argument("--hidden", type=positive_int, default=400)
    parser.add_argument("--in-dim", type=positive_int, default=53, help="MT10 observation (49) + action (4)")
    parser.add_argument("--repeats", type=positive_int, default=20)


def _problem(tasks: int, rows: int, hidden: int, in_dim: int, device: torch.device) -> dict[str, Any]:
    trunk = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, hidden), nn.ReLU()).to(device)
    heads = nn.Parameter(torch.randn(tasks, hidden, device=device) / hidden ** 0.5)
    x = torch.randn(tasks, rows, in_dim, device=device)     # [k, b, in]: row block i is task i's
    y = torch.randn(tasks, rows, device=device)
    params = list(trunk.parameters())
    replicas = replicate_for_tasks(params, tasks)

    def all_losses(through_replicas: bool = False) -> Tensor:  # [k]
        features = x
        for layer in range(3):
            weight, bias = (replicas if through_replicas else params)[2 * layer: 2 * layer + 2]
            features = torch.relu(task_linear(features, weight, bias) if through_replicas else
                                  nn.functional.linear(features, weight, bias))
        return ((torch.einsum("krh,kh->kr", features, heads) - y) ** 2).mean(dim=1)

    def loop() -> None:
        losses = all_losses()
        for i in range(tasks):
            torch.autograd.grad(losses[i], params, retain_graph=i < tasks - 1)

    return {
        "plain": lambda: torch.autograd.grad(all_losses().sum(), [*params, heads]),
        "partitioned": lambda: task_partitioned_gradients(all_losses(through_replicas=True), replicas, [heads]),
        "batched": lambda: task_jacobian(all_losses(), params, retain_graph=False),
        "loop": loop,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.tasks, args.batch_per_task, args.hidden, args.repeats = 3, 8, 16, 2
    device = torch.device(args.device)
    torch.manual_seed(0)
    routes = _problem(args.tasks, args.batch_per_task, args.hidden, args.in_dim, device)
    seconds = {name: timed_median(fn, args.repeats, warmup=3, device=device) for name, fn in routes.items()}
    rows = [{"route": name, "ms": 1e3 * value, "ratio_to_plain": value / seconds["plain"]}
            for name, value in seconds.items()]
    print_table(rows, title=f"Per-task Jacobian, k={args.tasks}, batch {args.tasks * args.batch_per_task}, "
                            f"hidden {args.hidden}, {device}")
    return {
        "tasks": args.tasks, "batch": args.tasks * args.batch_per_task, "hidden": args.hidden,
        "device": str(device), "repeats": args.repeats,
        "ms": {name: 1e3 * value for name, value in seconds.items()},
        "ratio_to_plain": {name: value / seconds["plain"] for name, value in seconds.items()},
    }
