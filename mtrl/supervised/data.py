"""Offline multi-task data sets with controlled label noise (ExcessMTL paper Sec. 4.2, App. C.2).

Three benchmarks, each returned as a :class:`MultiTaskDataset` of tensors (train / clean val / clean test):

* :func:`multidigits` — two-digit images built from scikit-learn's bundled 8×8 digits, one
  classification task per position, in the spirit of MultiMNIST. Needs nothing but scikit-learn.
* :func:`noisy_regression` — SARCOS-like regression, 21 inputs → 7 outputs from a fixed random
  nonlinear teacher, Gaussian target noise on the first two outputs.
* :func:`multimnist` — the MultiMNIST construction of Sener & Koltun (2018) from MNIST IDX files
  the user already has on disk (:func:`read_idx` / :func:`write_idx` handle the format).

Noise follows ExcessMTL Sec. 4.2: the noise level is the proportion of *training* rows of the noisy
task(s) that go through the injection procedure; validation and test labels stay clean.

* Classification — symmetric noise (:func:`symmetric_label_noise`): a selected label is replaced by a
  class drawn uniformly from *all* classes ("flipping the true label to any possible labels uniformly at
  random"), so about 1/C of the selected labels keep their value and noise level 1 means fully random
  labels.
* Regression — additive Gaussian noise whose variance equals the target's variance
  (:func:`gaussian_target_noise`).

Two seeds: ``data_seed`` fixes the clean data (source-digit split, pairing, teacher), so every run of a
benchmark evaluates on the same validation and test sets and single-task references stay comparable;
``seed`` draws the noise.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MultiTaskDataset", "DATASETS", "MNIST_FILES",
    "multidigits", "noisy_regression", "multimnist",
    "symmetric_label_noise", "gaussian_target_noise",
    "read_idx", "write_idx",
]


@dataclass
class MultiTaskDataset:
    """A multi-task data set held in memory; every sample carries a label for every task.

    Attributes:
        name: benchmark name (``multidigits``, ``noisyregression``, ``multimnist``).
        task_names: one name per task.
        task_kinds: ``"classification"`` or ``"regression"`` per task.
        num_classes: number of classes per task (``None`` for regression).
        x_train, x_val, x_test: inputs, ``[N, *input_shape]`` float32.
        y_train, y_val, y_test: ``[N, k]`` labels: int64 when every task is a classification, float32 otherwise.
        noisy_tasks: the tasks whose *training* labels went through noise injection.
        noise: the noise level, the proportion of training rows of a noisy task selected for injection.
        train_noise_mask: ``[N_train, k]`` bool, True where a training label was selected for injection.
            With symmetric noise about 1/C of these keep their original value (drawn uniformly from all classes).
        meta: how the data were built (sizes, seeds, normalisation), for logs and results files.
    """

    name: str
    task_names: list[str]
    task_kinds: list[str]
    num_classes: list[int | None]
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    noisy_tasks: list[int]
    noise: float
    train_noise_mask: Tensor | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def clean_tasks(self) -> list[int]:
        """Tasks whose training labels are clean."""
        return [t for t in range(self.num_tasks) if t not in self.noisy_tasks]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def higher_is_better(self) -> list[bool]:
        """Direction of each task's metric (accuracy for classification, MSE for regression)."""
        return [kind == "classification" for kind in self.task_kinds]

    def to(self, device: torch.device | str) -> "MultiTaskDataset":
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved)


# ----------------------------------------------------------------------------------------------------------------
# Noise injection (ExcessMTL paper Sec. 4.2)
# ----------------------------------------------------------------------------------------------------------------

def _check_fraction(fraction: float) -> None:
    if not (0.0 <= float(fraction) <= 1.0) or math.isnan(float(fraction)):
        raise ValueError(f"Parameter `fraction` (the noise level) should be in [0, 1]. Found `fraction = {fraction}`.")


def _count(fraction: float, n: int) -> int:
    """round(fraction·n), halves rounded up (Python's round() rounds halves to even)."""
    return min(n, int(math.floor(float(fraction) * n + 0.5)))


def symmetric_label_noise(labels: Tensor, fraction: float, num_classes: int,
                          generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Symmetric label noise: ``round(fraction·N)`` labels, chosen uniformly without replacement, are
    replaced by a class drawn uniformly from all ``num_classes`` classes.

    ExcessMTL paper Sec. 4.2 ("flipping the true label to any possible labels uniformly at random"); the
    new class may equal the old one, so the expected share of labels that actually change is
    ``fraction · (1 - 1/num_classes)``.

    .. note:: The authors' code (``examples/office/create_dataset.py``) selects ``int(fraction·N)`` rows and
       redraws a selected row's label every time the sample is loaded; here the noisy labels are drawn once
       (a fixed noisy data set) and the count is rounded to nearest.

    Args:
        labels: ``[N]`` integer class labels in ``[0, num_classes)``.
        fraction: the noise level in ``[0, 1]``.
        num_classes: number of classes (≥ 2).
        generator: a CPU ``torch.Generator``; the result is a function of its state.

    Returns:
        ``(noisy_labels, mask)``: ``noisy_labels`` like ``labels``; ``mask`` ``[N]`` bool, True for the rows
        selected for injection.
    """
    _check_fraction(fraction)
    if int(num_classes) < 2:
        raise ValueError(f"Parameter `num_classes` should be at least 2. Found `num_classes = {num_classes}`.")
    if labels.ndim != 1:
        raise ValueError(f"`labels` should be a [N] tensor, got shape {tuple(labels.shape)}.")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"`labels` should hold integer classes, got dtype {labels.dtype}.")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"`labels` should lie in [0, {num_classes}), found [{int(labels.min())}, {int(labels.max())}].")
    n = labels.shape[0]
    chosen = torch.randperm(n, generator=generator)[: _count(fraction, n)]
    replacement = torch.randint(0, int(num_classes), (chosen.numel(),), generator=generator)
    noisy = labels.clone()
    noisy[chosen.to(labels.device)] = replacement.to(device=labels.device, dtype=labels.dtype)
    mask = torch.zeros(n, dtype=torch.bool, device=labels.device)
    mask[chosen.to(labels.device)] = True
    return noisy, mask


def gaussian_target_noise(targets: Tensor, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Additive Gaussian noise with the targets' variance on ``round(fraction·N)`` rows chosen uniformly.

    ExcessMTL paper Sec. 4.2 / App. C.2: "additive Gaussian noise with the variance equal to that of the
    original regression target". Each column ``j`` of a selected row gets ``ε ~ N(0, Var[targets[:, j]])``,
    the variance taken over all ``N`` rows of ``targets`` (unbiased estimate) before any noise is added.

    Args:
        targets: ``[N]`` or ``[N, m]`` float targets.
        fraction: the noise level in ``[0, 1]``: the proportion of rows that get noise.
        generator: a CPU ``torch.Generator``.

    Returns:
        ``(noisy_targets, mask)``: both shaped like ``targets``; ``mask`` is True on every entry of a selected row.
    """
    _check_fraction(fraction)
    if not targets.dtype.is_floating_point or targets.ndim not in (1, 2):
        raise ValueError(f"`targets` should be a float [N] or [N, m] tensor, got {targets.dtype} {tuple(targets.shape)}.")
    columns = targets.reshape(targets.shape[0], -1)
    n, m = columns.shape
    std = columns.var(dim=0).sqrt() if n > 1 else torch.zeros(m, dtype=targets.dtype, device=targets.device)
    chosen = torch.randperm(n, generator=generator)[: _count(fraction, n)].to(targets.device)
    eps = torch.randn(chosen.numel(), m, generator=generator, dtype=targets.dtype).to(targets.device)
    noisy = columns.clone()
    noisy[chosen] += eps * std
    mask = torch.zeros(n, m, dtype=torch.bool, device=targets.device)
    mask[chosen] = True
    return noisy.reshape(targets.shape), mask.reshape(targets.shape)


def _inject_label_noise(y_train: Tensor, noisy_tasks: list[int], noise: float, num_classes: list[int | None],
                        seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(int(seed))
    y = y_train.clone()
    mask = torch.zeros_like(y, dtype=torch.bool)
    for task in noisy_tasks:
        y[:, task], mask[:, task] = symmetric_label_noise(y[:, task], noise, int(num_classes[task]), generator)
    return y, mask


def _check_noisy_task(noisy_task: int, num_tasks: int) -> None:
    if not 0 <= int(noisy_task) < num_tasks:
        raise ValueError(f"Parameter `noisy_task` should be in [0, {num_tasks}). Found `noisy_task = {noisy_task}`.")


def _check_size(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and int(value) < minimum:
        raise ValueError(f"Parameter `{name}` should be at least {minimum}. Found `{name} = {value}`.")


# ----------------------------------------------------------------------------------------------------------------
# Two-digit images (shared by multidigits and multimnist)
# ----------------------------------------------------------------------------------------------------------------

def _overlay(left: Tensor, right: Tensor, shift: int, canvas_size: int | None = None) -> Tensor:
    """Left digits at the top-left, right digits shifted by ``shift`` pixels down and right, pixel-wise max.

    ``left``, ``right``: ``[N, s, s]`` → ``[N, c, c]`` with ``c = canvas_size`` (default ``s + shift``).
    """
    n, size, _ = left.shape
    canvas_size = size + shift if canvas_size is None else canvas_size
    a = torch.zeros(n, canvas_size, canvas_size, dtype=left.dtype)
    b = torch.zeros_like(a)
    a[:, :size, :size] = left
    b[:, shift:shift + size, shift:shift + size] = right
    return torch.maximum(a, b)


def _standardise_images(train: Tensor, *others: Tensor) -> tuple[list[Tensor], dict[str, float]]:
    """One mean and standard deviation over all training pixels, applied to every split."""
    mean, std = train.mean().item(), train.std().item()
    std = std if std > 0 else 1.0
    return [(x - mean) / std for x in (train, *others)], {"pixel_mean": mean, "pixel_std": std}


def multidigits(noise: float = 0.0, seed: int = 0, noisy_task: int = 1, *, n_train: int = 5000,
                n_val: int = 1000, n_test: int = 2000, shift: int = 4, data_seed: int = 0,
                source_fractions: tuple[float, float] = (0.2, 0.2)) -> MultiTaskDataset:
    """Two-digit images from scikit-learn's 8×8 digits: task 0 = top-left digit, task 1 = bottom-right digit.

    The 1,797 bundled digits (pixel values 0..16, scaled to [0, 1]) are split once, by ``data_seed``, into
    disjoint source pools for train / val / test (``source_fractions`` = val and test shares, the rest trains),
    so no digit image appears in two splits. Each sample draws a left and a right digit uniformly from its
    split's pool; the right digit is shifted ``shift`` pixels down and right on a ``(8 + shift)``² canvas and
    the two overlap with a pixel-wise max (the MultiMNIST construction scaled to 8×8 digits: 12×12 canvas and
    a 4×4 overlap by default). Pixels are standardised with the mean and std of all training pixels.
    Symmetric label noise at level ``noise`` goes into task ``noisy_task``'s training labels, drawn with ``seed``.

    Returns:
        ``x``: ``[N, 1, 8 + shift, 8 + shift]`` float32; ``y``: ``[N, 2]`` int64 in ``[0, 10)``.
    """
    from sklearn.datasets import load_digits

    _check_noisy_task(noisy_task, 2)
    _check_fraction(noise)
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check_size(name, value)
    if not 0 <= int(shift) <= 8:
        raise ValueError(f"Parameter `shift` should be in [0, 8] pixels. Found `shift = {shift}`.")
    val_share, test_share = source_fractions
    if min(val_share, test_share) <= 0 or val_share + test_share >= 1:
        raise ValueError(f"Parameter `source_fractions` should be two positive shares summing below 1. "
                         f"Found `source_fractions = {source_fractions}`.")

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0     # [1797, 8, 8]
    labels = torch.as_tensor(digits.target, dtype=torch.int64)              # [1797]
    generator = torch.Generator().manual_seed(int(data_seed))
    order = torch.randperm(len(labels), generator=generator)
    n_val_src, n_test_src = round(val_share * len(order)), round(test_share * len(order))
    pools = {"val": order[:n_val_src], "test": order[n_val_src:n_val_src + n_test_src],
             "train": order[n_val_src + n_test_src:]}

    def build(pool: Tensor, n: int) -> tuple[Tensor, Tensor]:
        left = pool[torch.randint(len(pool), (n,), generator=generator)]
        right = pool[torch.randint(len(pool), (n,), generator=generator)]
        x = _overlay(images[left], images[right], int(shift)).unsqueeze(1)  # [n, 1, 8 + shift, 8 + shift]
        return x, torch.stack([labels[left], labels[right]], dim=1)

    x_train, y_train = build(pools["train"], n_train)
    x_val, y_val = build(pools["val"], n_val)
    x_test, y_test = build(pools["test"], n_test)
    (x_train, x_val, x_test), norm = _standardise_images(x_train, x_val, x_test)
    y_noisy, mask = _inject_label_noise(y_train, [int(noisy_task)], noise, [10, 10], seed)
    return MultiTaskDataset(
        name="multidigits", task_names=["left", "right"], task_kinds=["classification"] * 2, num_classes=[10, 10],
        x_train=x_train, y_train=y_noisy, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        noisy_tasks=[int(noisy_task)], noise=float(noise), train_noise_mask=mask,
        meta={"seed": int(seed), "data_seed": int(data_seed), "shift": int(shift),
              "source_digits": {k: len(v) for k, v in pools.items()}, **norm},
    )


# ----------------------------------------------------------------------------------------------------------------
# SARCOS-like regression
# ----------------------------------------------------------------------------------------------------------------

NUM_INPUTS, NUM_OUTPUTS, TEACHER_HIDDEN = 21, 7, 16


def _teacher(x: Tensor, generator: torch.Generator) -> Tensor:
    """A random two-layer tanh network, ``[N, 21] → [N, 7]``: one shared nonlinear feature map (so the
    outputs are related tasks, like the seven joint torques of SARCOS) plus a per-output linear part.

    Sized so that the nonlinearity matters but is learnable from a few thousand samples: on the clean
    standardised data a least-squares linear fit leaves a test MSE of about 0.17, the default MLP about 0.04."""
    w1 = torch.randn(NUM_INPUTS, TEACHER_HIDDEN, generator=generator) * (2.0 / math.sqrt(NUM_INPUTS))
    b1 = torch.randn(TEACHER_HIDDEN, generator=generator) * 0.5
    w2 = torch.randn(TEACHER_HIDDEN, NUM_OUTPUTS, generator=generator) / math.sqrt(TEACHER_HIDDEN)
    linear = torch.randn(NUM_INPUTS, NUM_OUTPUTS, generator=generator) * (0.3 / math.sqrt(NUM_INPUTS))
    return torch.tanh(x @ w1 + b1) @ w2 + x @ linear


def noisy_regression(noise: float = 0.0, seed: int = 0, *, noisy_tasks: tuple[int, ...] = (0, 1),
                     n_train: int = 4000, n_val: int = 1000, n_test: int = 2000,
                     data_seed: int = 0) -> MultiTaskDataset:
    """SARCOS-like multi-output regression (ExcessMTL paper App. C.2): 21 inputs, 7 outputs, 7 tasks.

    Inputs are i.i.d. standard normal; targets come from a fixed random nonlinear teacher (:func:`_teacher`)
    drawn with ``data_seed``, with no noise of their own. Inputs and targets are standardised per column with
    the mean and std of the clean training split (val/test use the same statistics). Then Gaussian noise with
    the variance of the standardised clean training targets (≈ 1) is added to outputs ``noisy_tasks`` on
    ``round(noise·N_train)`` training rows drawn with ``seed`` (the same rows for every noisy output, as when
    a data source corrupts whole records). Validation and test targets stay clean, so a test MSE is in units
    of the clean target variance.

    Returns:
        ``x``: ``[N, 21]`` float32; ``y``: ``[N, 7]`` float32.
    """
    _check_fraction(noise)
    noisy = sorted({int(t) for t in noisy_tasks})
    for task in noisy:
        _check_noisy_task(task, NUM_OUTPUTS)
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check_size(name, value, minimum=2 if name == "n_train" else 1)

    generator = torch.Generator().manual_seed(int(data_seed))
    n_total = n_train + n_val + n_test
    x = torch.randn(n_total, NUM_INPUTS, generator=generator)
    y = _teacher(x, generator)
    x_mean, x_std = x[:n_train].mean(0), x[:n_train].std(0)
    y_mean, y_std = y[:n_train].mean(0), y[:n_train].std(0)
    x, y = (x - x_mean) / x_std, (y - y_mean) / y_std
    x_train, x_val, x_test = x.split([n_train, n_val, n_test])
    y_train, y_val, y_test = y.split([n_train, n_val, n_test])

    y_noisy = y_train.clone()
    mask = torch.zeros_like(y_train, dtype=torch.bool)
    if noisy:
        y_noisy[:, noisy], mask[:, noisy] = gaussian_target_noise(
            y_train[:, noisy].contiguous(), noise, torch.Generator().manual_seed(int(seed)))
    return MultiTaskDataset(
        name="noisyregression", task_names=[f"output{t}" for t in range(NUM_OUTPUTS)],
        task_kinds=["regression"] * NUM_OUTPUTS, num_classes=[None] * NUM_OUTPUTS,
        x_train=x_train.contiguous(), y_train=y_noisy, x_val=x_val.contiguous(), y_val=y_val.contiguous(),
        x_test=x_test.contiguous(), y_test=y_test.contiguous(),
        noisy_tasks=noisy, noise=float(noise), train_noise_mask=mask,
        meta={"seed": int(seed), "data_seed": int(data_seed),
              "target_mean": y_mean.tolist(), "target_std": y_std.tolist()},
    )


# ----------------------------------------------------------------------------------------------------------------
# IDX files and MultiMNIST
# ----------------------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {dt.newbyteorder("=").str[1:]: code for code, dt in _IDX_DTYPES.items()}  # "u1" -> 0x08, ...


def _open(path: Path, mode: str):
    return gzip.open(path, mode) if path.suffix == ".gz" else open(path, mode)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` decompressed on the fly) into a numpy array."""
    path = Path(path)
    with _open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()}).")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: the header announces shape {shape} ({expected} bytes) but the file has {len(data)}.")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray | Tensor) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    array = np.asarray(array.cpu() if isinstance(array, Tensor) else array)
    key = array.dtype.newbyteorder("=").str[1:]
    if key not in _IDX_CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, int32, float32, float64.")
    if array.ndim > 255 or array.ndim == 0:
        raise ValueError(f"IDX stores arrays with 1 to 255 dimensions, got {array.ndim}.")
    code = _IDX_CODES[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with _open(Path(path), "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes())


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_mnist(data_dir: Path) -> dict[str, Path]:
    """The four MNIST files in ``data_dir`` (or torchvision's ``data_dir/MNIST/raw``), plain or ``.gz``."""
    folders = [data_dir, data_dir / "MNIST" / "raw"]
    found, missing = {}, []
    for key, name in MNIST_FILES.items():
        candidates = [folder / (name + suffix) for folder in folders for suffix in ("", ".gz")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(name)
        else:
            found[key] = hit
    if missing:
        raise FileNotFoundError(
            f"MultiMNIST needs the four MNIST IDX files in data_dir={str(data_dir)!r} "
            f"(also searched {str(folders[1])!r}); missing: {', '.join(missing)} (plain or .gz). "
            f"Expected files: {', '.join(MNIST_FILES.values())}. Download them from the MNIST page "
            f"(or torchvision.datasets.MNIST(root, download=True)) and pass data_dir=<that folder>.")
    return found


def _multimnist_images(left: Tensor, right: Tensor) -> Tensor:
    """Sener & Koltun (2018): 28×28 digits on a 36×36 canvas, right digit shifted by 6 px, pixel-wise max in
    the overlap, nearest-neighbour resize back to 28×28 (PIL's NEAREST: source pixel ``⌊(i + ½)·36/28⌋``)."""
    canvas = _overlay(left, right, shift=6, canvas_size=36)                   # [n, 36, 36]
    size, out = canvas.shape[-1], left.shape[-1]
    src = ((torch.arange(out, dtype=torch.float64) + 0.5) * size / out).floor().long()
    return canvas[:, src][:, :, src]


def multimnist(data_dir: str | Path, noise: float = 0.0, seed: int = 0, noisy_task: int = 1, *,
               n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
               val_fraction: float = 1 / 6, data_seed: int = 0) -> MultiTaskDataset:
    """MultiMNIST from local MNIST IDX files: task 0 = top-left digit, task 1 = bottom-right digit.

    The construction of Sener & Koltun (2018, ``multi_mnist_loader.py``): every source image is the left
    digit of one sample; the right digit is drawn uniformly from the same pool; both are put on a 36×36
    canvas (left at (0, 0), right at (6, 6), pixel-wise max where they overlap) and the canvas is resized to
    28×28 with nearest-neighbour interpolation. The MNIST training images are split by ``data_seed`` into
    disjoint train / val pools (``val_fraction`` of them validate); the t10k images give the test set, so no
    digit image appears in two splits. ``n_train`` / ``n_val`` / ``n_test`` subsample the pools (and hence
    the number of samples) to keep runs fast; ``None`` keeps everything (50,000 / 10,000 / 10,000).
    Pixels are scaled to [0, 1] and standardised with the mean and std of the training images (the loader of
    Sener & Koltun uses MNIST's constants 0.1307 / 0.3081). Symmetric label noise goes into task
    ``noisy_task`` (the bottom-right digit by default, as in ExcessMTL Sec. 4.1).

    Raises:
        FileNotFoundError: a file is missing; the message names the expected files and the directory.

    Returns:
        ``x``: ``[N, 1, 28, 28]`` float32; ``y``: ``[N, 2]`` int64 in ``[0, 10)``.
    """
    _check_noisy_task(noisy_task, 2)
    _check_fraction(noise)
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check_size(name, value)
    if not 0 < val_fraction < 1:
        raise ValueError(f"Parameter `val_fraction` should be in (0, 1). Found `val_fraction = {val_fraction}`.")
    paths = _find_mnist(Path(data_dir).expanduser())
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"MNIST {split} files disagree: images {images.shape}, labels {labels.shape} "
                             f"(expected [N, H, W] and [N]).")
        if labels.size and labels.max() > 9:
            raise ValueError(f"MNIST {split} labels should be digits 0-9, found {int(labels.max())}.")

    generator = torch.Generator().manual_seed(int(data_seed))
    # Overlay in uint8 (a quarter of the memory of float32); scaled to [0, 1] afterwards.
    train_images = torch.from_numpy(np.ascontiguousarray(arrays["train_images"], dtype=np.uint8))
    train_labels = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    test_images = torch.from_numpy(np.ascontiguousarray(arrays["test_images"], dtype=np.uint8))
    test_labels = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    order = torch.randperm(len(train_labels), generator=generator)
    n_val_src = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    pools = {"train": order[n_val_src:], "val": order[:n_val_src],
             "test": torch.randperm(len(test_labels), generator=generator)}
    limits = {"train": n_train, "val": n_val, "test": n_test}
    pools = {k: v if limits[k] is None else v[: int(limits[k])] for k, v in pools.items()}

    def build(pool: Tensor, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        right = pool[torch.randint(len(pool), (len(pool),), generator=generator)]
        x = _multimnist_images(images[pool], images[right]).unsqueeze(1).float() / 255.0  # [n, 1, 28, 28]
        return x, torch.stack([labels[pool], labels[right]], dim=1)

    x_train, y_train = build(pools["train"], train_images, train_labels)
    x_val, y_val = build(pools["val"], train_images, train_labels)
    x_test, y_test = build(pools["test"], test_images, test_labels)
    (x_train, x_val, x_test), norm = _standardise_images(x_train, x_val, x_test)
    y_noisy, mask = _inject_label_noise(y_train, [int(noisy_task)], noise, [10, 10], seed)
    return MultiTaskDataset(
        name="multimnist", task_names=["left", "right"], task_kinds=["classification"] * 2, num_classes=[10, 10],
        x_train=x_train, y_train=y_noisy, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        noisy_tasks=[int(noisy_task)], noise=float(noise), train_noise_mask=mask,
        meta={"seed": int(seed), "data_seed": int(data_seed), "data_dir": str(data_dir),
              "source_digits": {k: len(v) for k, v in pools.items()}, **norm},
    )


DATASETS: dict[str, Callable[..., MultiTaskDataset]] = {
    "multidigits": multidigits,
    "noisyregression": noisy_regression,
    "noisy_regression": noisy_regression,
    "multimnist": multimnist,
}
