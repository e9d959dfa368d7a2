"""Hard-parameter-sharing models for the supervised benchmarks: a shared trunk and one head per task.

The architectures follow ExcessMTL App. C.1: an MLP trunk with linear heads for tabular inputs (SARCOS:
three layers of 128 ReLU units) and a two-layer CNN (kernel 5) + one fully connected layer of 80 units with
linear heads for MultiMNIST. ``multidigits`` uses a two-layer MLP on the flattened 12×12 image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiTaskModel", "mlp_trunk", "lenet_trunk", "make_model", "task_losses", "task_metrics"]


class MultiTaskModel(nn.Module):
    """``shared`` maps an input to a representation ``z``; head ``t`` maps ``z`` to task ``t``'s output.

    Classification heads output logits ``[B, C]``; regression heads output ``[B, 1]``.
    """

    def __init__(self, shared: nn.Module, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(heads) == 0:
            raise ValueError("A multi-task model needs at least one head.")
        self.shared = shared
        self.heads = nn.ModuleList(heads)

    @property
    def num_tasks(self) -> int:
        return len(self.heads)

    def representation(self, x: Tensor) -> Tensor:
        """The shared representation ``z = shared(x)`` (the MGDA-UB path differentiates the losses w.r.t. ``z``)."""
        return self.shared(x)

    def heads_forward(self, z: Tensor) -> list[Tensor]:
        """Per-task outputs from a representation ``z``."""
        return [head(z) for head in self.heads]

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.heads_forward(self.representation(x))


def mlp_trunk(in_features: int, hidden: int, layers: int) -> nn.Sequential:
    """``Flatten → [Linear → ReLU] × layers``: the shared feature extractor for vector (or flattened) inputs."""
    if layers < 1 or hidden < 1:
        raise ValueError(f"An MLP trunk needs layers ≥ 1 and hidden ≥ 1. Found `layers = {layers}`, `hidden = {hidden}`.")
    modules: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*modules)


def lenet_trunk(input_shape: Sequence[int], hidden: int = 80) -> nn.Sequential:
    """Two 5×5 convolutions (10 and 20 channels, each followed by 2×2 max-pooling and ReLU) and one fully
    connected layer of ``hidden`` units, as in ExcessMTL App. C.1 (the MultiLeNet of Sener & Koltun
    without its dropout: the paper applies no regularisation on MultiMNIST)."""
    channels, height, width = input_shape
    if min(height, width) < 16:
        raise ValueError(f"The CNN trunk needs images of at least 16×16 pixels (two 5×5 convolutions and two "
                         f"2×2 poolings), got {height}×{width}; use the MLP trunk.")
    convolutions = nn.Sequential(
        nn.Conv2d(channels, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = convolutions(torch.zeros(1, channels, height, width)).shape[1]
    return nn.Sequential(*convolutions, nn.Linear(flat, hidden), nn.ReLU())


# Per-benchmark defaults (ExcessMTL App. C.1 where the paper has the data set).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "multidigits": {"trunk": "mlp", "hidden": 128, "layers": 2},
    "noisyregression": {"trunk": "mlp", "hidden": 128, "layers": 3},
    "multimnist": {"trunk": "cnn", "hidden": 80},
}


def make_model(dataset: Any, hidden: int | None = None, layers: int | None = None,
               trunk: str | None = None) -> MultiTaskModel:
    """The benchmark's model: trunk per :data:`_DEFAULTS` (``mlp`` for vectors, ``cnn`` for images when asked),
    one linear head per task (``num_classes`` logits, or 1 output for regression).

    ``hidden`` / ``layers`` / ``trunk`` override the defaults; unknown data sets get a 2 × 128 MLP.
    """
    defaults = _DEFAULTS.get(dataset.name, {"trunk": "mlp", "hidden": 128, "layers": 2})
    trunk = trunk or defaults["trunk"]
    hidden = int(hidden or defaults["hidden"])
    input_shape = tuple(dataset.x_train.shape[1:])
    if trunk == "mlp":
        shared = mlp_trunk(math.prod(input_shape), hidden, int(layers or defaults.get("layers", 2)))
    elif trunk == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"The CNN trunk needs image inputs [C, H, W], got {input_shape}.")
        shared = lenet_trunk(input_shape, hidden)
    else:
        raise ValueError(f"Parameter `trunk` should be 'mlp' or 'cnn'. Found `trunk = {trunk!r}`.")
    heads = [nn.Linear(hidden, 1 if kind == "regression" else int(classes))
             for kind, classes in zip(dataset.task_kinds, dataset.num_classes)]
    return MultiTaskModel(shared, heads)


def _regression_output(output: Tensor) -> Tensor:
    return output.squeeze(-1) if output.ndim == 2 and output.shape[-1] == 1 else output


def task_losses(model_outputs: Sequence[Tensor], y: Tensor, dataset: Any) -> Tensor:
    """``[k]`` per-task mean losses of a batch: cross-entropy (classification) or MSE (regression).

    ``model_outputs``: the ``k`` head outputs; ``y``: ``[B, k]`` labels (a float ``y`` is cast for the
    classification columns).
    """
    if len(model_outputs) != len(dataset.task_kinds) or y.ndim != 2 or y.shape[1] != len(dataset.task_kinds):
        raise ValueError(f"Expected {len(dataset.task_kinds)} outputs and labels [B, {len(dataset.task_kinds)}], "
                         f"got {len(model_outputs)} outputs and labels {tuple(y.shape)}.")
    losses = []
    for task, (output, kind) in enumerate(zip(model_outputs, dataset.task_kinds)):
        if kind == "classification":
            losses.append(F.cross_entropy(output, y[:, task].long()))
        else:
            losses.append(F.mse_loss(_regression_output(output), y[:, task].to(output.dtype)))
    return torch.stack(losses)


@torch.no_grad()
def task_metrics(model: nn.Module, x: Tensor, y: Tensor, dataset: Any,
                 batch_size: int = 4096) -> tuple[Tensor, list[bool]]:
    """Per-task metric over ``(x, y)``: accuracy in [0, 1] (higher is better) for classification, MSE (lower
    is better) for regression. Evaluates in ``eval`` mode, in batches, on the model's device.

    Returns:
        ``(metrics [k] float64 on the CPU, higher_is_better per task)``.
    """
    kinds = list(dataset.task_kinds)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(len(kinds), dtype=torch.float64)
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(device)
            yb = y[start:start + batch_size].to(device)
            for task, (output, kind) in enumerate(zip(model(xb), kinds)):
                if kind == "classification":
                    totals[task] += (output.argmax(dim=-1) == yb[:, task].long()).sum().item()
                else:
                    err = _regression_output(output).double() - yb[:, task].double()
                    totals[task] += err.square().sum().item()
    finally:
        model.train(was_training)
    return totals / max(x.shape[0], 1), [kind == "classification" for kind in kinds]
