"""Cost of the per-task Jacobian on a SAC-critic-shaped trunk, relative to one plain backward pass.

    python -m mtrl.bench jacobian [--tasks 10] [--batch-per-task 128] [--hidden 400] [--device cpu]

A 3-layer MLP trunk shared by ``k`` tasks, one linear head per task, the batch partitioned by task
(what the multi-head SAC agent differentiates). Forward + backward each, medians in one process:

* ``plain``: one backward of the summed loss (what LS costs);
* ``partitioned``: :func:`mtrl.aggregation.task_partitioned_jacobian` (``torch.func.vmap`` over
  tasks), the route the agent uses; its ``ratio`` to ``plain`` should stay at most 1.5;
* ``batched``: the generic :func:`mtrl.aggregation.task_jacobian` (``is_grads_batched``);
* ``loop``: ``k`` separate backward passes.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtrl.aggregation import task_jacobian, task_partitioned_jacobian
from mtrl.bench._common import positive_int, print_table, timed_median

HELP = "per-task Jacobian (vmap over tasks, batched, loop) vs one plain backward"

#: The route the agent uses must cost at most this many plain backwards (issue 11).
PARTITIONED_RATIO_TARGET = 1.5


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
    shared = dict(trunk.named_parameters())

    def task_loss(params: dict[str, Tensor], head: Tensor, x_i: Tensor, y_i: Tensor) -> Tensor:
        return ((functional_call(trunk, params, (x_i,)) @ head - y_i) ** 2).mean()

    def all_losses() -> Tensor:                               # [k]
        return ((torch.einsum("krh,kh->kr", trunk(x), heads) - y) ** 2).mean(dim=1)

    params = list(shared.values())

    def loop() -> None:
        losses = all_losses()
        for i in range(tasks):
            torch.autograd.grad(losses[i], params, retain_graph=i < tasks - 1)

    return {
        "plain": lambda: torch.autograd.grad(all_losses().sum(), params),
        "partitioned": lambda: task_partitioned_jacobian(task_loss, shared, heads, x, y),
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
    ratio = seconds["partitioned"] / seconds["plain"]
    print(f"partitioned / plain = {ratio:.2f} (target <= {PARTITIONED_RATIO_TARGET})")
    return {
        "tasks": args.tasks, "batch": args.tasks * args.batch_per_task, "hidden": args.hidden,
        "device": str(device), "repeats": args.repeats,
        "ms": {name: 1e3 * value for name, value in seconds.items()},
        "ratio_to_plain": {name: value / seconds["plain"] for name, value in seconds.items()},
        "partitioned_ratio_target": PARTITIONED_RATIO_TARGET,
    }
