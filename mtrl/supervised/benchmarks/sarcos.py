"""SARCOS inverse dynamics, 7 torque regressions (ExcessMTL longer version, App. C.1–C.2, Fig. 9).

    python -m mtrl.supervised bench=sarcos data_dir=~/data/sarcos agg=excessmtl noise=0.6

* **Data**: ``sarcos_inv.mat`` (key ``sarcos_inv``, 44,484 × 28) and ``sarcos_inv_test.mat`` (key
  ``sarcos_inv_test``, 4,449 × 28): columns 0–20 are the 21 inputs (7 joint positions, velocities,
  accelerations), columns 21–27 the 7 joint torques, one task each. The test file is the test split; a
  seeded ``val_fraction`` of the training rows is held out for validation (ExcessMTL gives no split).
  Inputs and targets are standardised with the mean and standard deviation of the remaining training rows
  (ExcessMTL Sec. 3.2, "standardize all input data"), so every metric is in units of a torque's variance.
* **Noise** (``noise=<level>``): ExcessMTL Sec. 4.2 and App. C.2: on that share of the training rows the first
  two torques get additive Gaussian noise with their own variance (:func:`mtrl.supervised.data.gaussian_target_noise`;
  the same rows for both, drawn with the seed); validation and test stay clean.
* **Model**: a three-layer MLP with 128 ReLU units, shared, and a linear head per torque (App. C.1):
  36,743 parameters.
* **Loss and metric**: mean squared error per torque (standardised units), lower is better.
* **Recipe** (``configs/bench/sarcos.yaml``): Adam lr 1e-3, weight decay 1e-2, constant learning rate
  (App. C.1). Epochs and batch size are not in the paper: the config's are this toolkit's choice.

There is no STL row in the paper (Fig. 9 plots the clean tasks' loss), so Δm is taken against single-task
runs of this toolkit unless ``stl_file`` gives one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from mtrl.supervised.benchmarks import Benchmark, BenchmarkDataError, MetricColumn, Splits, register
from mtrl.supervised.data import gaussian_target_noise
from mtrl.supervised.models import MultiTaskModel, mlp_trunk

__all__ = ["Sarcos", "read_sarcos", "TORQUES", "INPUTS"]

INPUTS, TORQUES = 21, 7
_FILES = {"train": ("sarcos_inv.mat", "sarcos_inv"), "test": ("sarcos_inv_test.mat", "sarcos_inv_test")}
_LAYOUT = (
    "  <data_dir>/sarcos_inv.mat        MATLAB file, variable sarcos_inv: 44484 × 28 (training rows)\n"
    "  <data_dir>/sarcos_inv_test.mat   MATLAB file, variable sarcos_inv_test: 4449 × 28 (test rows)\n"
    "columns 0-20: joint positions, velocities, accelerations; 21-27: the 7 joint torques. Published with\n"
    "'Gaussian Processes for Machine Learning' (Rasmussen & Williams): gaussianprocess.org/gpml/data/.")


def read_sarcos(root: Path) -> dict[str, np.ndarray]:
    """``{"train": [N, 28], "test": [M, 28]}`` float64 from the two ``.mat`` files; :class:`BenchmarkDataError`
    when a file, its variable or its 28 columns are missing."""
    from scipy.io import loadmat

    root = Path(root)
    if not root.is_dir():
        raise BenchmarkDataError(f"{root} is not a directory. Expected layout:\n{_LAYOUT}")
    arrays = {}
    for split, (filename, key) in _FILES.items():
        path = root / filename
        if not path.is_file():
            raise BenchmarkDataError(f"{path} is missing. Expected layout:\n{_LAYOUT}")
        try:
            content = loadmat(str(path))
        except Exception as error:   # noqa: BLE001 - scipy raises several types on a file that is not MATLAB's
            raise BenchmarkDataError(f"{path} is not a readable MATLAB file ({error}). Expected layout:\n{_LAYOUT}") from error
        array = content.get(key)
        if array is None or array.ndim != 2 or array.shape[1] != INPUTS + TORQUES or array.shape[0] < 2:
            found = "nothing" if array is None else f"shape {array.shape}"
            raise BenchmarkDataError(f"{path}: variable {key} should be an N × 28 matrix, found {found}. "
                                     f"Expected layout:\n{_LAYOUT}")
        arrays[split] = np.asarray(array, dtype=np.float64)
    return arrays


class _SquaredErrors:
    """Per-torque mean squared error over a split."""

    def __init__(self) -> None:
        self.total = torch.zeros(TORQUES, dtype=torch.float64)
        self.count = 0

    def update(self, outputs: Tensor, batch: tuple[Tensor, Tensor]) -> None:
        self.total += (outputs.detach().double() - batch[1].double()).square().sum(0).cpu()
        self.count += outputs.shape[0]

    def compute(self) -> dict[str, float]:
        return dict(zip(Sarcos.tasks, (self.total / max(self.count, 1)).tolist()))


@register
class Sarcos(Benchmark):
    """Options: ``val_fraction`` (training rows held out for validation), ``hidden``, ``layers`` (the MLP)."""

    name = "sarcos"
    tasks = tuple(f"torque{j + 1}" for j in range(TORQUES))
    columns = tuple(MetricColumn(task, task, False) for task in tasks)
    performance_split = "val"
    noisy_tasks = ("torque1", "torque2")
    layout = _LAYOUT
    train_size = 40_036   # 44,484 rows less the default 10 % held out

    def splits(self, data_dir: Path, *, seed: int, noise: float = 0.0) -> Splits:
        arrays = read_sarcos(Path(data_dir).expanduser())
        rows = torch.from_numpy(arrays["train"]).float()
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(rows.shape[0], generator=generator)
        n_val = int(round(float(self.options.get("val_fraction", 0.1)) * rows.shape[0]))
        if not 0 < n_val < rows.shape[0] - 1:
            raise BenchmarkDataError(f"{data_dir}: {rows.shape[0]} training rows cannot give a validation split of "
                                     f"val_fraction={self.options.get('val_fraction', 0.1)}.")
        train, val = rows[order[n_val:]], rows[order[:n_val]]
        test = torch.from_numpy(arrays["test"]).float()
        mean, std = train.mean(0), train.std(0).clamp_min(1e-12)
        train, val, test = ((part - mean) / std for part in (train, val, test))
        targets = train[:, INPUTS:].clone()
        if noise > 0:
            noisy = [self.tasks.index(task) for task in self.noisy_tasks]
            targets[:, noisy], _ = gaussian_target_noise(targets[:, noisy].contiguous(), noise, generator)
        return Splits(train=TensorDataset(train[:, :INPUTS], targets), val=TensorDataset(val[:, :INPUTS], val[:, INPUTS:]),
                      test=TensorDataset(test[:, :INPUTS], test[:, INPUTS:]))

    def build_model(self) -> MultiTaskModel:
        hidden = int(self.options.get("hidden", 128))
        trunk = mlp_trunk(INPUTS, hidden, int(self.options.get("layers", 3)))
        return MultiTaskModel(trunk, [nn.Linear(hidden, 1) for _ in range(TORQUES)])

    def forward(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return torch.cat(model(batch[0]), dim=1)

    def losses(self, outputs: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        return F.mse_loss(outputs, batch[1], reduction="none").mean(0)

    def new_metrics(self) -> _SquaredErrors:
        return _SquaredErrors()

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> Any:
        return torch.randn(batch_size, INPUTS, generator=generator), torch.randn(batch_size, TORQUES, generator=generator)
