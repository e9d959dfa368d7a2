"""Cost of the per-task Jacobian relative to one plain backward pass.

    python -m mtrl.benchmarks.jacobian_cost [--tasks 10] [--batch-per-task 128] [--hidden 400] [--device cpu]

A SAC-critic-shaped model: a 3-layer MLP trunk shared by ``k`` tasks and one linear head per task,
batch partitioned by task. Times (forward + backward each, median of repeats, in one process so the
ratios are comparable on a noisy shared machine):

* ``plain``: one backward of the summed loss (what LS costs);
* ``partitioned``: :func:`mtrl.aggregation.task_partitioned_jacobian` (torch.func vmap over tasks);
* ``batched``: the generic :func:`mtrl.aggregation.task_jacobian` (``is_grads_batched``);
* ``loop``: ``k`` separate backward passes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from mtrl.aggregation import task_jacobian, task_partitioned_jacobian


def make_problem(tasks: int, rows: int, hidden: int, in_dim: int, device: torch.device):
    trunk = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, hidden), nn.ReLU()).to(device)
    heads = nn.Parameter(torch.randn(tasks, hidden, device=device) / hidden ** 0.5)
    x = torch.randn(tasks, rows, in_dim, device=device)
    y = torch.randn(tasks, rows, device=device)

    def task_loss(params: dict, head: torch.Tensor, x_i: torch.Tensor, y_i: torch.Tensor) -> torch.Tensor:
        return ((functional_call(trunk, params, (x_i,)) @ head - y_i) ** 2).mean()

    def all_losses() -> torch.Tensor:
        features = trunk(x)  # [k, rows, hidden]
        return ((torch.einsum("krh,kh->kr", features, heads) - y) ** 2).mean(dim=1)

    return trunk, heads, x, y, task_loss, all_losses


def time_it(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--batch-per-task", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--in-dim", type=int, default=53, help="MT10 observation (49) + action (4)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    trunk, heads, x, y, task_loss, all_losses = make_problem(args.tasks, args.batch_per_task, args.hidden,
                                                             args.in_dim, device)
    shared = dict(trunk.named_parameters())
    params = list(shared.values())

    def plain() -> None:
        torch.autograd.grad(all_losses().sum(), params)

    def partitioned() -> None:
        task_partitioned_jacobian(task_loss, shared, heads, x, y)

    def batched() -> None:
        task_jacobian(all_losses(), params, retain_graph=False)

    def loop() -> None:
        losses = all_losses()
        for i in range(args.tasks):
            torch.autograd.grad(losses[i], params, retain_graph=i < args.tasks - 1)

    seconds = {name: time_it(fn, args.repeats, device)
               for name, fn in [("plain", plain), ("partitioned", partitioned), ("batched", batched), ("loop", loop)]}
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "tasks": args.tasks,
        "batch": args.tasks * args.batch_per_task, "hidden": args.hidden,
        "ms": {k: round(v * 1e3, 3) for k, v in seconds.items()},
        "ratio_to_plain": {k: round(v / seconds["plain"], 2) for k, v in seconds.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
