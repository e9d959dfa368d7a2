"""Dense prediction on the MTAN ``.npy`` releases (NYUv2, Cityscapes): data, augmentation, losses, metrics.

:class:`DenseBenchmark` holds what the two scene-understanding benchmarks share; :mod:`.nyuv2` and
:mod:`.cityscapes` set the image size, the label folder, the class count and the tasks.

**Layout** (MTAN's preprocessed release, read by Nash-MTL, FAMO, LibMTL and the PIVRG authors' code)::

    <root>/train/image/<i>.npy     H×W×3 float (RGB)
    <root>/train/<label>/<i>.npy   H×W, class index, −1 = unlabelled (NYUv2: ``label``, 13 classes;
                                   Cityscapes: ``label_7``, 7 classes)
    <root>/train/depth/<i>.npy     H×W×1 (0 = no measurement; Cityscapes: inverse depth)
    <root>/train/normal/<i>.npy    H×W×3 unit normals (NYUv2 only; 0 = no measurement)
    <root>/val/...                 the same; used as the test split (there is no validation split)

with ``i = 0 … n−1``. Images are cast to float, labels to long.

**Augmentation** (training split, on by default as in the papers' runs): a scale ``s`` drawn from
{1.0, 1.2, 1.5}, a random ``H/s × W/s`` crop resized back (bilinear with ``align_corners=True`` for the
image and the normals, nearest for labels and depth), depth divided by ``s``; then a horizontal flip with
probability 1/2, which negates the normals' x channel.

**Losses** (the authors' ``calc_loss``): NLL of the log-softmax output ignoring −1; L1 over pixels with
depth ≠ 0; ``1 − mean dot(prediction, normal)`` over pixels whose normal is not 0 (the prediction is
L2-normalised).

**Metrics** (:class:`DenseMetrics`, in the paper's table units):

* segmentation — one confusion matrix over the whole split (pixels labelled in [0, C)); IoU_c = TP/(TP + FP
  + FN); mIoU = mean over classes (×100), pixel accuracy = trace/total (×100). Classes absent from both the
  labels and the predictions are left out of the mean (the authors' plain mean would be NaN; the two agree
  whenever every class occurs, as on the real splits);
* depth — absolute and relative error over pixels with depth ≠ 0;
* normals — angle ``degrees(acos(clamp(dot, −1, 1)))`` over pixels with a normal; mean, median and the
  shares (%) below 11.25°, 22.5° and 30°.

``metric_reduction`` says how depth and normal statistics combine over the split: ``batch`` (default)
averages each batch's value over batches, as the Nash-MTL / PIVRG code that measured the STL rows of the
papers' tables does (the median is then the mean of per-batch medians, and the value depends on the
evaluation batch size, which that code sets to the training batch size); ``pixel`` pools every valid pixel
of the split (the median from a 0.001° histogram), as LibMTL weights depth.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from mtrl.supervised.benchmarks._base import Benchmark, BenchmarkDataError, MetricColumn, Splits
from mtrl.supervised.benchmarks.segnet import MTANSegNet

__all__ = ["DenseBenchmark", "DenseDataset", "DenseMetrics", "random_scale_crop", "horizontal_flip",
           "segmentation_columns", "depth_columns", "normal_columns", "ANGLE_THRESHOLDS"]

ANGLE_THRESHOLDS: tuple[float, ...] = (11.25, 22.5, 30.0)
SCALES: tuple[float, ...] = (1.0, 1.2, 1.5)
_HISTOGRAM_BIN = 1e-3   # degrees: the ``pixel`` median's resolution


def segmentation_columns() -> tuple[MetricColumn, ...]:
    return (MetricColumn("mIoU", "segmentation", True), MetricColumn("pix_acc", "segmentation", True, "Pix Acc"))


def depth_columns() -> tuple[MetricColumn, ...]:
    return (MetricColumn("abs_err", "depth", False, "Abs Err"), MetricColumn("rel_err", "depth", False, "Rel Err"))


def normal_columns() -> tuple[MetricColumn, ...]:
    return (MetricColumn("angle_mean", "normal", False, "Mean"), MetricColumn("angle_median", "normal", False, "Median"),
            *(MetricColumn(f"within_{t:g}", "normal", True, f"{t:g}°") for t in ANGLE_THRESHOLDS))


# ------------------------------------------------------------------------------------------------ data
def random_scale_crop(sample: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Scale ``s ∈ {1, 1.2, 1.5}``, random ``H/s × W/s`` crop resized back to ``H × W``; depth ÷ ``s``."""
    height, width = sample["image"].shape[-2:]
    scale = SCALES[int(torch.randint(len(SCALES), (1,), generator=generator))]
    h, w = int(height / scale), int(width / scale)
    top = int(torch.randint(height - h + 1, (1,), generator=generator))
    left = int(torch.randint(width - w + 1, (1,), generator=generator))
    out = {}
    for key, value in sample.items():
        crop = value[..., top:top + h, left:left + w]
        if key in ("image", "normal"):
            out[key] = F.interpolate(crop[None], size=(height, width), mode="bilinear", align_corners=True)[0]
        else:
            stacked = crop[None, None] if key == "label" else crop[None]
            resized = F.interpolate(stacked.float(), size=(height, width), mode="nearest")
            out[key] = resized[0, 0].to(value.dtype) if key == "label" else resized[0]
    if "depth" in out:
        out["depth"] = out["depth"] / scale
    return out


def horizontal_flip(sample: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mirror left–right; the normals' x component changes sign."""
    out = {key: value.flip(-1) for key, value in sample.items()}
    if "normal" in out:
        out["normal"] = out["normal"].clone()
        out["normal"][0] = -out["normal"][0]
    return out


class DenseDataset(Dataset):
    """One split of an MTAN ``.npy`` release: items ``{"image", "label", "depth"[, "normal"]}`` as tensors
    ``[3, H, W]`` float, ``[H, W]`` long, ``[1, H, W]`` float, ``[3, H, W]`` float.

    Args:
        folder: ``<root>/train`` or ``<root>/val``.
        fields: item key -> sub-folder (``{"image": "image", "label": "label_7", "depth": "depth"}``).
        augment: random scale-crop and flip (training split).
        noisy: the indices of the images whose labelled pixels get a uniformly drawn class.
        num_classes: the class count (for the noise).
        noise_seed: the noisy labels of image ``i`` are a function of ``(noise_seed, i)`` only.
    """

    def __init__(self, folder: Path, fields: dict[str, str], *, augment: bool = False,
                 noisy: frozenset[int] = frozenset(), num_classes: int = 0, noise_seed: int = 0) -> None:
        self.folder = Path(folder)
        self.fields = dict(fields)
        self.augment = augment
        self.noisy = noisy
        self.num_classes = num_classes
        self.noise_seed = noise_seed
        self.length = len(list((self.folder / "image").glob("*.npy")))

    def __len__(self) -> int:
        return self.length

    def _load(self, key: str, index: int) -> np.ndarray:
        return np.load(self.folder / self.fields[key] / f"{index}.npy")

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        sample = {}
        for key in self.fields:
            array = self._load(key, index)
            if key == "label":
                sample[key] = torch.from_numpy(np.asarray(array)).long()
            else:
                array = array[..., None] if array.ndim == 2 else array
                sample[key] = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0))).float()
        if index in self.noisy:
            sample["label"] = self._noisy_label(sample["label"], index)
        if self.augment:
            sample = random_scale_crop(sample)
            if float(torch.rand(())) < 0.5:
                sample = horizontal_flip(sample)
        return sample

    def _noisy_label(self, label: Tensor, index: int) -> Tensor:
        """ExcessMTL Sec. 4.2's symmetric noise at the pixel level: every labelled pixel of a selected image
        gets a class drawn uniformly from all classes (fixed per image; unlabelled pixels stay −1)."""
        generator = torch.Generator().manual_seed(int(self.noise_seed) * 1_000_003 + int(index))
        drawn = torch.randint(self.num_classes, label.shape, generator=generator)
        return torch.where(label >= 0, drawn, label)


def _check_layout(root: Path, fields: dict[str, str], layout: str) -> None:
    """Both splits exist, every field folder holds ``0.npy … (n−1).npy`` with the image folder's count."""
    for split in ("train", "val"):
        image_dir = root / split / "image"
        count = len(list(image_dir.glob("*.npy"))) if image_dir.is_dir() else 0
        if count == 0:
            raise BenchmarkDataError(f"No {image_dir}/<i>.npy files. Expected layout:\n{layout}")
        for folder in fields.values():
            path = root / split / folder
            names = {p.name for p in path.glob("*.npy")} if path.is_dir() else set()
            expected = {f"{i}.npy" for i in range(count)}
            if names != expected:
                missing = sorted(expected - names, key=lambda n: int(n.split(".")[0]))[:3]
                raise BenchmarkDataError(f"{path} should hold 0.npy … {count - 1}.npy like {image_dir}"
                                         f"{' (missing ' + ', '.join(missing) + ')' if missing else ''}. "
                                         f"Expected layout:\n{layout}")


def _check_shapes(dataset: DenseDataset, image_size: tuple[int, int] | None, layout: str) -> None:
    """The first sample's arrays have the shapes the layout promises (H, W divisible by 32)."""
    channels = {"image": 3, "depth": 1, "normal": 3}
    try:
        sample = {key: dataset._load(key, 0) for key in dataset.fields}
    except (OSError, ValueError) as error:
        raise BenchmarkDataError(f"{dataset.folder}: sample 0 is not a readable .npy file ({error}). "
                                 f"Expected layout:\n{layout}") from error
    height, width = sample["image"].shape[:2]
    for key, array in sample.items():
        ok = array.shape[:2] == (height, width) and (
            array.ndim == 2 if key == "label" else
            (array.ndim == 3 and array.shape[2] == channels[key]) or (key == "depth" and array.ndim == 2))
        if not ok:
            raise BenchmarkDataError(f"{dataset.folder / dataset.fields[key] / '0.npy'} has shape {array.shape}; "
                                     f"expected {'H×W' if key == 'label' else f'H×W×{channels[key]}'} with the "
                                     f"image's H×W = {height}×{width}. Expected layout:\n{layout}")
    if height % 32 or width % 32:
        raise BenchmarkDataError(f"{dataset.folder}: images are {height}×{width}; MTAN-SegNet needs sides divisible "
                                 f"by 32 (the release's are {image_size}).")


# --------------------------------------------------------------------------------------------- metrics
class DenseMetrics:
    """Whole-split accumulator of the dense columns (see the module docstring for the definitions).

    Args:
        num_classes: segmentation classes.
        normals: whether the benchmark has the surface-normal task.
        reduction: ``"batch"`` (mean of per-batch depth/normal statistics, the authors') or ``"pixel"``.
    """

    def __init__(self, num_classes: int, normals: bool, reduction: str = "batch") -> None:
        if reduction not in ("batch", "pixel"):
            raise ValueError(f"`metric_reduction` should be 'batch' or 'pixel'. Found {reduction!r}.")
        self.num_classes = num_classes
        self.normals = normals
        self.reduction = reduction
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.batches: list[dict[str, float]] = []      # reduction="batch"
        self.sums: dict[str, float] = {}               # reduction="pixel"
        self.histogram = torch.zeros(int(round(180 / _HISTOGRAM_BIN)) + 1, dtype=torch.int64)

    @torch.no_grad()
    def update(self, outputs: list[Tensor], batch: dict[str, Tensor]) -> None:
        """``outputs``: log-probabilities ``[B, C, H, W]``, depth ``[B, 1, H, W]``[, unit normals ``[B, 3, H, W]``]."""
        self.update_segmentation(outputs[0].argmax(1), batch["label"])
        values = {**self._depth_sums(outputs[1], batch["depth"])}
        angles = self._angles(outputs[2], batch["normal"]) if self.normals else None
        if self.reduction == "batch":
            entry = _depth_values(values)
            if angles is not None:
                entry.update(_angle_statistics(angles))
            self.batches.append(entry)
            return
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        if angles is not None:
            self.sums["angle_sum"] = self.sums.get("angle_sum", 0.0) + float(angles.double().sum())
            self.sums["angle_count"] = self.sums.get("angle_count", 0.0) + angles.numel()
            for t in ANGLE_THRESHOLDS:
                self.sums[f"below_{t:g}"] = self.sums.get(f"below_{t:g}", 0.0) + float((angles < t).sum())
            bins = torch.round(angles.double().clamp(0, 180) / _HISTOGRAM_BIN).long()
            self.histogram += torch.bincount(bins.cpu(), minlength=self.histogram.numel())

    def update_segmentation(self, prediction: Tensor, label: Tensor) -> None:
        n = self.num_classes
        valid = (label >= 0) & (label < n)
        index = n * label[valid].long() + prediction[valid].long()
        self.confusion += torch.bincount(index.cpu(), minlength=n * n).reshape(n, n)

    @staticmethod
    def _depth_sums(prediction: Tensor, target: Tensor) -> dict[str, float]:
        valid = target != 0
        error = (prediction - target).abs()[valid].double()
        return {"abs_sum": float(error.sum()), "rel_sum": float((error / target[valid].double().abs()).sum()),
                "depth_count": float(valid.sum())}

    @staticmethod
    def _angles(prediction: Tensor, target: Tensor) -> Tensor:
        valid = target.sum(1) != 0
        cosine = (prediction * target).sum(1)[valid].clamp(-1, 1)
        return torch.rad2deg(torch.acos(cosine))

    def compute(self) -> dict[str, float]:
        confusion = self.confusion.double()
        tp = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - tp
        present = union > 0
        iou = tp[present] / union[present]
        total = confusion.sum()
        result = {"mIoU": float(iou.mean()) * 100 if present.any() else math.nan,
                  "pix_acc": float(tp.sum() / total) * 100 if total > 0 else math.nan}
        if self.reduction == "batch":
            keys = ["abs_err", "rel_err"] + ([c.name for c in normal_columns()] if self.normals else [])
            for key in keys:
                values = [b[key] for b in self.batches if not math.isnan(b[key])]
                result[key] = float(np.mean(values)) if values else math.nan
            return result
        result.update(_depth_values(self.sums))
        if self.normals:
            count = self.sums.get("angle_count", 0.0)
            result["angle_mean"] = self.sums["angle_sum"] / count if count else math.nan
            result["angle_median"] = _histogram_median(self.histogram) if count else math.nan
            for t in ANGLE_THRESHOLDS:
                result[f"within_{t:g}"] = 100.0 * self.sums[f"below_{t:g}"] / count if count else math.nan
        return result


def _depth_values(sums: dict[str, float]) -> dict[str, float]:
    count = sums.get("depth_count", 0.0)
    if not count:
        return {"abs_err": math.nan, "rel_err": math.nan}
    return {"abs_err": sums["abs_sum"] / count, "rel_err": sums["rel_sum"] / count}


def _angle_statistics(angles: Tensor) -> dict[str, float]:
    if angles.numel() == 0:
        return {c.name: math.nan for c in normal_columns()}
    values = angles.double().cpu().numpy()
    stats = {"angle_mean": float(values.mean()), "angle_median": float(np.median(values))}
    stats.update({f"within_{t:g}": 100.0 * float((values < t).mean()) for t in ANGLE_THRESHOLDS})
    return stats


def _histogram_median(histogram: Tensor) -> float:
    """The median of the binned angles (NumPy's convention: the mean of the two middle values)."""
    cumulative = histogram.cumsum(0)
    n = int(cumulative[-1])
    lower = int(torch.searchsorted(cumulative, torch.tensor((n - 1) // 2 + 1)))
    upper = int(torch.searchsorted(cumulative, torch.tensor(n // 2 + 1)))
    return (lower + upper) / 2 * _HISTOGRAM_BIN


# ------------------------------------------------------------------------------------------- benchmark
class DenseBenchmark(Benchmark):
    """NYUv2 / Cityscapes: MTAN-SegNet on an MTAN ``.npy`` release (see the module docstring).

    Options (``configs/bench/<name>.yaml``): ``augment`` (training augmentation), ``metric_reduction``
    (``batch`` | ``pixel``); ``image_size`` (``[H, W]``) sizes :meth:`synthetic_batch` only.
    """

    performance_split: ClassVar[str] = "train"
    quick_options: ClassVar[dict[str, Any]] = {"image_size": (32, 64)}
    image_size: ClassVar[tuple[int, int]]
    label_folder: ClassVar[str]
    num_classes: ClassVar[int]
    with_normals: ClassVar[bool]

    @property
    def fields(self) -> dict[str, str]:
        fields = {"image": "image", "label": self.label_folder, "depth": "depth"}
        if self.with_normals:
            fields["normal"] = "normal"
        return fields

    def splits(self, data_dir: Path, *, seed: int, noise: float = 0.0) -> Splits:
        root = Path(data_dir).expanduser()
        _check_layout(root, self.fields, self.layout)
        train_folder = root / "train"
        count = len(list((train_folder / "image").glob("*.npy")))
        generator = torch.Generator().manual_seed(int(seed))
        chosen = torch.randperm(count, generator=generator)[:int(math.floor(float(noise) * count + 0.5))]
        train = DenseDataset(train_folder, self.fields, augment=bool(self.options.get("augment", True)),
                             noisy=frozenset(chosen.tolist()), num_classes=self.num_classes, noise_seed=int(seed))
        test = DenseDataset(root / "val", self.fields)
        for dataset in (train, test):
            _check_shapes(dataset, self.image_size, self.layout)
        return Splits(train=train, val=None, test=test)

    def build_model(self) -> MTANSegNet:
        return MTANSegNet(self.head_channels)

    @property
    def head_channels(self) -> tuple[int, ...]:
        return (self.num_classes, 1) + ((3,) if self.with_normals else ())

    def shared_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return model.shared_parameters()

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> list[Tensor]:
        raw = model(batch["image"])
        outputs = [F.log_softmax(raw[0], dim=1), raw[1]]
        if self.with_normals:
            outputs.append(raw[2] / raw[2].norm(p=2, dim=1, keepdim=True))
        return outputs

    def losses(self, outputs: list[Tensor], batch: dict[str, Tensor]) -> Tensor:
        losses = [F.nll_loss(outputs[0], batch["label"], ignore_index=-1), _masked_l1(outputs[1], batch["depth"])]
        if self.with_normals:
            losses.append(_normal_loss(outputs[2], batch["normal"]))
        return torch.stack(losses)

    def new_metrics(self) -> DenseMetrics:
        return DenseMetrics(self.num_classes, self.with_normals, str(self.options.get("metric_reduction", "batch")))

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        h, w = self.options.get("image_size") or self.image_size
        batch = {"image": torch.rand(batch_size, 3, h, w, generator=generator),
                 "label": torch.randint(-1, self.num_classes, (batch_size, h, w), generator=generator),
                 "depth": torch.rand(batch_size, 1, h, w, generator=generator) + 0.1}
        if self.with_normals:
            normal = torch.randn(batch_size, 3, h, w, generator=generator)
            batch["normal"] = normal / normal.norm(dim=1, keepdim=True)
        return batch


def _masked_l1(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean ``|prediction − target|`` over pixels whose target is not 0."""
    mask = (target.sum(1, keepdim=True) != 0).to(prediction.dtype)
    return ((prediction - target).abs() * mask).sum() / mask.sum().clamp(min=1)


def _normal_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``1 −`` the mean cosine between predicted and true normals over pixels with a normal."""
    mask = (target.sum(1, keepdim=True) != 0).to(prediction.dtype)
    return 1 - (prediction * target * mask).sum() / mask.sum().clamp(min=1)
