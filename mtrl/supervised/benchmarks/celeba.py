"""CelebA, 40 binary attributes (PIVRG Table 2; RLW App. C.2 with another model and metric).

    python -m mtrl.supervised bench=celeba data_dir=~/data/celeba agg=pivrg

* **Data**: the aligned-and-cropped release (202,599 face images of 178×218; ``list_eval_partition.txt``
  splits them 162,770 / 19,867 / 19,962 into train / val / test), read in one of the layouts of
  :data:`_LAYOUT`. Each image is resized to 64×64 and scaled to [0, 1], nothing else (the FAMO / PIVRG
  ``celeba/data.py``); labels −1 → 0.
* **Model**: the 9-layer CNN of FAMO and PIVRG (``celeba/models.py``; PIVRG Sec. 4.1 "9-layer CNN"), shared,
  and one ``Linear(512, 1)`` per attribute: 5,197,160 parameters.
* **Losses**: binary cross-entropy per attribute. The authors apply ``sigmoid`` then ``BCELoss``; the heads
  here output logits and the loss is ``binary_cross_entropy_with_logits``, the same function computed
  stably.
* **Metric**: F1 per attribute over a whole split at threshold 0.5 (``sigmoid > 0.5``, i.e. logit > 0), with
  ``precision = TP/(TP+FP+1e-8)``, ``recall = TP/(TP+FN+1e-8)``, ``F1 = 2PR/(P+R+1e-8)`` as the authors'
  ``CelebaMetrics``; columns are fractions in [0, 1], like the STL row of their ``delta_m.py``.
* **Recipe** (``configs/bench/celeba.yaml``): Adam 3e-4, batch 256, 15 epochs (PIVRG Sec. 4.1) and the PIVRG
  code's cosine schedule; test metrics of the epoch with the best validation Δm (the authors' code tracks
  the best validation mean F1).
* **PIVRG's Δm** comes from the validation split (PIVRG Sec. 4.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.supervised.benchmarks import Benchmark, BenchmarkDataError, MetricColumn, Splits, register
from mtrl.supervised.benchmarks.images import ImageFiles

__all__ = ["CelebA", "CelebaCNN", "F1Metrics", "ATTRIBUTES", "read_celeba_lists"]

#: The 40 attributes in the order of ``list_attr_celeba.txt`` (its second line).
ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling",
    "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
_SPLITS = {"train": 0, "val": 1, "test": 2}
#: (attribute list, partition list, image folder) relative to ``data_dir``, in the order they are tried.
_CANDIDATES = (
    ("Anno/list_attr_celeba.txt", "Eval/list_eval_partition.txt", "Img/img_align_celeba"),   # the release's folders
    ("celeba/list_attr_celeba.txt", "celeba/list_eval_partition.txt", "celeba/img_align_celeba"),   # torchvision's
    ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"),   # that folder itself
)
_LAYOUT = (
    "  <data_dir>/Anno/list_attr_celeba.txt       line 1: 202599, line 2: the 40 attribute names, then\n"
    "                                             '<image> ±1 … ±1' per image\n"
    "  <data_dir>/Eval/list_eval_partition.txt    '<image> 0|1|2' per image (train / val / test)\n"
    "  <data_dir>/Img/img_align_celeba/<image>    the aligned and cropped JPEGs (000001.jpg …)\n"
    "(the folders of the official release, as the FAMO / PIVRG code reads them), or the same three entries\n"
    "directly in <data_dir> or in <data_dir>/celeba/ (torchvision's layout). Published by CUHK MMLab:\n"
    "mmlab.ie.cuhk.edu.hk/projects/CelebA.html ('Align&Cropped Images', 'Anno', 'Eval').")


def _find_files(root: Path) -> tuple[Path, Path, Path]:
    if not root.is_dir():
        raise BenchmarkDataError(f"{root} is not a directory. Expected layout:\n{_LAYOUT}")
    for attributes, partition, images in _CANDIDATES:
        if (root / attributes).is_file() and (root / partition).is_file() and (root / images).is_dir():
            return root / attributes, root / partition, root / images
    raise BenchmarkDataError(f"{root} lacks list_attr_celeba.txt, list_eval_partition.txt or img_align_celeba/. "
                             f"Expected layout:\n{_LAYOUT}")


def _rows(path: Path, skip: int) -> list[list[str]]:
    lines = path.read_text().splitlines()[skip:]
    return [line.split() for line in lines if line.strip()]


def read_celeba_lists(root: Path) -> tuple[list[Path], Tensor, Tensor]:
    """``(image paths, attributes [N, 40] in {0, 1} float32, partition [N] in {0, 1, 2})`` from ``root``.

    Raises :class:`BenchmarkDataError` on a missing file, a header other than :data:`ATTRIBUTES`, a malformed
    row, an image without a partition or a listed image that is not on disk."""
    attributes_file, partition_file, image_dir = _find_files(Path(root))
    lines = attributes_file.read_text().splitlines()
    if len(lines) < 2 or tuple(lines[1].split()) != ATTRIBUTES:
        raise BenchmarkDataError(f"{attributes_file}: line 2 should name the 40 attributes ({ATTRIBUTES[0]} … "
                                 f"{ATTRIBUTES[-1]}). Expected layout:\n{_LAYOUT}")
    partition = {}
    for row in _rows(partition_file, 0):
        if len(row) != 2 or row[1] not in ("0", "1", "2"):
            raise BenchmarkDataError(f"{partition_file}: malformed row {' '.join(row)!r}. Expected layout:\n{_LAYOUT}")
        partition[row[0]] = int(row[1])
    names, labels, parts = [], [], []
    for row in _rows(attributes_file, 2):
        if len(row) != 41 or any(value not in ("1", "-1") for value in row[1:]):
            raise BenchmarkDataError(f"{attributes_file}: malformed row {' '.join(row[:3])!r} …. Expected layout:\n{_LAYOUT}")
        if row[0] not in partition:
            raise BenchmarkDataError(f"{partition_file} has no split for {row[0]}. Expected layout:\n{_LAYOUT}")
        names.append(row[0])
        labels.append([value == "1" for value in row[1:]])
        parts.append(partition[row[0]])
    on_disk = {entry.name for entry in image_dir.iterdir()}
    missing = [name for name in names if name not in on_disk]
    if missing:
        raise BenchmarkDataError(f"{image_dir} lacks {len(missing)} listed image(s), e.g. {missing[0]}. "
                                 f"Expected layout:\n{_LAYOUT}")
    return ([image_dir / name for name in names], torch.tensor(labels, dtype=torch.float32),
            torch.tensor(parts, dtype=torch.int64))


def _conv(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]


def _linear(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Linear(inputs, outputs, bias=False), nn.BatchNorm1d(outputs), nn.ReLU(inplace=True)]


class CelebaCNN(nn.Module):
    """FAMO / PIVRG's CelebA network: seven bias-free 3×3 convolutions (64, 128, 128, 256, 256, 512, 512
    channels, each with BatchNorm and ReLU; 2×2 max-pooling after the 1st, 3rd and 5th), global average
    pooling, two bias-free ``Linear(512, 512)`` with BatchNorm and ReLU (``shared``); ``num_tasks`` heads
    ``Linear(512, 1)``. ``forward`` returns the ``[B, num_tasks]`` logits."""

    def __init__(self, num_tasks: int = len(ATTRIBUTES)) -> None:
        super().__init__()
        pool = nn.MaxPool2d(2, stride=2)
        self.shared = nn.Sequential(
            *_conv(3, 64), pool, *_conv(64, 128), *_conv(128, 128), pool, *_conv(128, 256), *_conv(256, 256), pool,
            *_conv(256, 512), *_conv(512, 512), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            *_linear(512, 512), *_linear(512, 512))
        self.heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(num_tasks))

    def forward(self, x: Tensor) -> Tensor:
        features = self.shared(x)
        return torch.cat([head(features) for head in self.heads], dim=1)


class F1Metrics:
    """Per-attribute F1 over a split (the authors' ``CelebaMetrics``): counts of TP, FP, FN at logit > 0."""

    def __init__(self, names: tuple[str, ...] = ATTRIBUTES) -> None:
        self.names = names
        self.tp = torch.zeros(len(names), dtype=torch.float64)
        self.fp = torch.zeros_like(self.tp)
        self.fn = torch.zeros_like(self.tp)

    def update(self, outputs: Tensor, batch: tuple[Tensor, Tensor]) -> None:
        predicted = (outputs.detach() > 0).double().cpu()
        target = batch[1].double().cpu()
        self.tp += (predicted * target).sum(0)
        self.fp += (predicted * (1 - target)).sum(0)
        self.fn += ((1 - predicted) * target).sum(0)

    def compute(self) -> dict[str, float]:
        precision = self.tp / (self.tp + self.fp + 1e-8)
        recall = self.tp / (self.tp + self.fn + 1e-8)
        f1 = 2 * precision * recall / (precision + recall + 1e-8)
        return dict(zip(self.names, f1.tolist()))


@register
class CelebA(Benchmark):
    """Options: ``image_size`` (side of the square the images are resized to; 64 in the papers)."""

    name = "celeba"
    tasks = ATTRIBUTES
    columns = tuple(MetricColumn(attribute, attribute, True) for attribute in ATTRIBUTES)
    performance_split = "val"
    layout = _LAYOUT
    train_size = 162_770
    quick_options = {"image_size": 16}

    @property
    def image_size(self) -> int:
        return int(self.options.get("image_size", 64))

    def splits(self, data_dir: Path, *, seed: int, noise: float = 0.0) -> Splits:
        paths, labels, parts = read_celeba_lists(Path(data_dir).expanduser())
        size = (self.image_size, self.image_size)
        datasets = {}
        for split, code in _SPLITS.items():
            rows = (parts == code).nonzero().flatten().tolist()
            if not rows:
                raise BenchmarkDataError(f"{data_dir}: list_eval_partition.txt puts no image in the {split} split "
                                         f"({code}). Expected layout:\n{_LAYOUT}")
            datasets[split] = ImageFiles([paths[i] for i in rows], labels[rows], size)
        return Splits(train=datasets["train"], val=datasets["val"], test=datasets["test"])

    def build_model(self) -> CelebaCNN:
        return CelebaCNN()

    def forward(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return model(batch[0])

    def losses(self, outputs: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        return F.binary_cross_entropy_with_logits(outputs, batch[1], reduction="none").mean(0)

    def new_metrics(self) -> F1Metrics:
        return F1Metrics()

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> Any:
        images = torch.rand(batch_size, 3, self.image_size, self.image_size, generator=generator)
        return images, torch.randint(0, 2, (batch_size, len(ATTRIBUTES)), generator=generator).float()
