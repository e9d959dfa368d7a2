"""Office-Home (4 domains × 65 classes) and Office-31 (3 domains × 31 classes): one classification task per
domain, each with its own images (RLW App. C.3, Table 8; ExcessMTL Sec. 4.1, Fig. 7 on Office-Home).

    python -m mtrl.supervised bench=officehome data_dir=~/data/OfficeHomeDataset agg=excessmtl noise=0.6
    python -m mtrl.supervised bench=office31 data_dir=~/data/office31 agg=rlw

* **Data**: the published image folders (:data:`LAYOUTS`). Splits: LibMTL's split files when ``split_dir`` names
  them (``<domain>_{train,val,test}.txt``, ``<path relative to data_dir> <label>`` per line: LibMTL's
  ``examples/office/data_txt/<dataset>/``), otherwise drawn per class with ``split_seed``: ⌊0.6 n⌋ training,
  ⌊0.2 n⌋ validation and the rest test images of a class of n images, the rule every class of LibMTL's split
  files follows. Labels are the class folders' indices in sorted order. Images are resized to 224×224,
  scaled to [0, 1] and normalised with the ImageNet statistics; no augmentation (LibMTL's loader).
* **Batches** (LibMTL's ``multi_input`` mode): a training step draws one batch from every domain; an epoch is
  as many steps as the largest domain has full batches, and a smaller domain's shuffled loader restarts
  whenever it runs out. Each domain's batch goes through the trunk on its own (its own BatchNorm
  statistics) and task ``i``'s loss reads only its domain's rows. Evaluation splits every domain into the
  same number of consecutive chunks, one chunk of each per batch.
* **Model**: ResNet-18 (torchvision's architecture and parameter names, trained from scratch as ExcessMTL
  App. C.1 does; ``trunk_weights`` loads a local torchvision ``resnet18`` state dict instead, as the RLW and
  LibMTL runs start from ImageNet weights), global average pooling, and LibMTL's hidden layer
  ``Linear(512, 512)`` (weights N(0, 0.005²), bias 0.1) + BatchNorm + ReLU + Dropout(0.5), shared; one
  ``Linear(512, classes)`` head per domain. 11,573,572 parameters on Office-Home, 11,487,901 on Office-31.
* **Loss and metric**: cross-entropy; accuracy per domain in percent (RLW Table 8).
* **Recipe** (``configs/bench/office{home,31}.yaml``): Adam lr 1e-4, weight decay 1e-5, batch 64 per domain,
  100 epochs, constant rate (LibMTL; ExcessMTL App. C.1 for lr and weight decay); test metrics of the epoch
  with the best validation Δm (LibMTL reports the best validation epoch).
* **Noise** (Office-Home, ``noise=<level>``): ExcessMTL's code: that share of the Product domain's training
  images are chosen once; each time one is loaded its label is drawn uniformly from all 65 classes
  (``noise_redraw: false`` draws it once instead).

The papers print no single-task row for these data sets (RLW Table 8 starts at EW), so Δm is taken against
single-task runs of this toolkit unless ``stl_file`` gives one.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mtrl.supervised.benchmarks import Benchmark, BenchmarkDataError, MetricColumn, Splits, register
from mtrl.supervised.benchmarks.images import ImageFiles
from mtrl.supervised.data import symmetric_label_noise

__all__ = ["OfficeHome", "Office31", "OfficeNet", "ResNet18", "LAYOUTS", "read_office"]

LAYOUTS = {
    "officehome": (
        "  <data_dir>/{Art,Clipart,Product,Real_World}/<class>/<image>.jpg   65 class folders in each domain\n"
        "(the 'OfficeHomeDataset_10072016' folder; the real-world domain's folder must be named Real_World, as\n"
        "LibMTL expects). Published by Venkateswara et al.: hemanthdv.org/officeHomeDataset.html (15,588 images)."),
    "office31": (
        "  <data_dir>/{amazon,dslr,webcam}/images/<class>/<image>.jpg   31 class folders in each domain\n"
        "Published by Saenko et al. (domain_adaptation_images.tar.gz, 4,110 images), linked from LibMTL's\n"
        "examples/office/README.md."),
}
_SPLIT_FILES = ("  with split_dir: <split_dir>/<domain>_{train,val,test}.txt, lines '<path under data_dir> <label>'\n"
                "  (LibMTL's examples/office/data_txt/<dataset>/).")
_SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------------------------------- data
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _domain_folder(root: Path, name: str, domain: str) -> Path:
    return root / domain / "images" if name == "office31" else root / domain


def _folders(root: Path, name: str, domains: tuple[str, ...], num_classes: int) -> tuple[list[str], dict[str, Path]]:
    """The sorted class names (the same in every domain) and each domain's folder."""
    layout = LAYOUTS[name]
    if not root.is_dir():
        raise BenchmarkDataError(f"{root} is not a directory. Expected layout:\n{layout}")
    folders, classes = {}, None
    for domain in domains:
        folder = _domain_folder(root, name, domain)
        if not folder.is_dir():
            raise BenchmarkDataError(f"{folder} is missing. Expected layout:\n{layout}")
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if len(found) != num_classes or (classes is not None and found != classes):
            raise BenchmarkDataError(f"{folder} holds {len(found)} class folders; expected the same {num_classes} in "
                                     f"every domain. Expected layout:\n{layout}")
        classes, folders[domain] = found, folder
    return list(classes or []), folders


def _split_by_class(files: Mapping[str, list[Path]], seed: int) -> dict[str, list[tuple[Path, int]]]:
    """Per class (index = position in sorted order): ⌊0.6 n⌋ train, ⌊0.2 n⌋ val, the rest test, shuffled with ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    parts: dict[str, list[tuple[Path, int]]] = {split: [] for split in _SPLITS}
    for label, name in enumerate(sorted(files)):
        paths = files[name]
        order = torch.randperm(len(paths), generator=generator).tolist()
        n_train, n_val = int(0.6 * len(paths)), int(0.2 * len(paths))
        bounds = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        for split, indices in bounds.items():
            parts[split].extend((paths[i], label) for i in sorted(indices))
    return parts


def _read_split_file(path: Path, root: Path, num_classes: int) -> list[tuple[Path, int]]:
    if not path.is_file():
        raise BenchmarkDataError(f"{path} is missing. Expected split files:\n{_SPLIT_FILES}")
    entries = []
    for line in path.read_text().splitlines():
        fields = line.rsplit(maxsplit=1)
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) >= num_classes:
            raise BenchmarkDataError(f"{path}: malformed line {line!r}. Expected split files:\n{_SPLIT_FILES}")
        image = root / fields[0]
        if not image.is_file():
            raise BenchmarkDataError(f"{path} lists {fields[0]}, which is not under {root}.")
        entries.append((image, int(fields[1])))
    return entries


def read_office(root: Path, name: str, domains: tuple[str, ...], num_classes: int, *, split_dir: Path | None = None,
                split_seed: int = 0) -> dict[str, dict[str, list[tuple[Path, int]]]]:
    """``{domain: {split: [(image, label), ...]}}``; :class:`BenchmarkDataError` on a missing or malformed layout."""
    root = Path(root)
    _, folders = _folders(root, name, domains, num_classes)
    result = {}
    for domain, folder in folders.items():
        if split_dir is not None:
            result[domain] = {split: _read_split_file(Path(split_dir) / f"{domain}_{split}.txt", root, num_classes)
                              for split in _SPLITS}
        else:
            files = {c.name: _image_files(c) for c in folder.iterdir() if c.is_dir()}
            result[domain] = _split_by_class(files, split_seed)
        for split, entries in result[domain].items():
            if len(entries) < (2 if split == "train" else 1):
                raise BenchmarkDataError(f"{folder}: the {split} split has {len(entries)} image(s); a domain needs at "
                                         f"least 5 images per class. Expected layout:\n{LAYOUTS[name]}")
    return result


class NoisyImageFiles(ImageFiles):
    """:class:`ImageFiles` whose rows in ``noisy`` get a label drawn uniformly from ``num_classes`` classes
    each time they are read (ExcessMTL's Office loader, ``random.choice(range(65))`` per access)."""

    def __init__(self, *args: Any, noisy: Tensor, num_classes: int, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.noisy = noisy
        self.num_classes = num_classes
        self.random = random.Random(seed)

    def label(self, index: int) -> Tensor:
        if bool(self.noisy[index]):
            return torch.tensor(self.random.randrange(self.num_classes))
        return self.labels[index]


# ---------------------------------------------------------------------------------------------------- model
class BasicBlock(nn.Module):
    """ResNet's two-convolution residual block (torchvision's ``BasicBlock``, same parameter names)."""

    def __init__(self, inputs: int, outputs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.downsample = None
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(outputs))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet-18 without its classifier (He et al. 2016): ``[B, 3, H, W] -> [B, 512, H/32, W/32]``.

    torchvision's ``resnet18`` layer for layer, with its parameter names (a torchvision state dict without
    ``fc.*`` loads) and its initialisation (Kaiming-normal, fan-out, for the convolutions; BatchNorm 1 and 0).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        for index, width in enumerate(widths):
            inputs = widths[max(index - 1, 0)]
            stride = 1 if index == 0 else 2
            setattr(self, f"layer{index + 1}", nn.Sequential(BasicBlock(inputs, width, stride), BasicBlock(width, width)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class OfficeNet(nn.Module):
    """LibMTL's Office encoder (ResNet-18, average pooling, hidden layer) as ``shared``; a linear head per domain."""

    def __init__(self, num_domains: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        layer = nn.Linear(512, hidden)
        nn.init.normal_(layer.weight, 0.0, 0.005)
        nn.init.constant_(layer.bias, 0.1)
        self.shared = nn.Sequential(OrderedDict([
            ("resnet", ResNet18()), ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
            ("hidden", layer), ("norm", nn.BatchNorm1d(hidden)), ("relu", nn.ReLU()), ("dropout", nn.Dropout(0.5)),
        ]))
        self.heads = nn.ModuleList(nn.Linear(hidden, num_classes) for _ in range(num_domains))

    def load_trunk(self, path: str | Path) -> None:
        """Load a torchvision ``resnet18`` state dict (its ``fc.*`` entries are ignored) into the ResNet-18."""
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
        self.shared.resnet.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})


# ---------------------------------------------------------------------------------------------------- batches
class DomainBatches:
    """Training batches ``{domain: (images, labels)}`` of LibMTL's multi-input mode (see the module docstring).

    A domain smaller than the batch size gives batches of all its images."""

    def __init__(self, datasets: Mapping[str, Dataset], batch_size: int, generator: torch.Generator | None,
                 num_workers: int = 0) -> None:
        generator = generator or torch.Generator().manual_seed(0)
        self.loaders = {
            domain: DataLoader(data, batch_size=min(batch_size, len(data)), shuffle=True, drop_last=True,
                               num_workers=num_workers,
                               generator=torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator))))
            for domain, data in datasets.items()}
        self.iterators: dict[str, Iterator] = {domain: iter(loader) for domain, loader in self.loaders.items()}

    def __len__(self) -> int:
        return max(len(loader) for loader in self.loaders.values())

    def _next(self, domain: str) -> Any:
        try:
            return next(self.iterators[domain])
        except StopIteration:
            self.iterators[domain] = iter(self.loaders[domain])
            return next(self.iterators[domain])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _ in range(len(self)):
            yield {domain: self._next(domain) for domain in self.loaders}


class DomainChunks:
    """Evaluation batches: every domain cut into ``⌈max_d n_d / batch_size⌉`` consecutive chunks, chunk ``c`` of
    every domain in batch ``c`` (a domain with fewer images than chunks is absent from the last batches)."""

    def __init__(self, datasets: Mapping[str, Dataset], batch_size: int, num_workers: int = 0) -> None:
        self.count = max(math.ceil(len(data) / batch_size) for data in datasets.values())
        self.loaders = {}
        for domain, data in datasets.items():
            chunks = [chunk.tolist() for chunk in torch.arange(len(data)).tensor_split(self.count) if len(chunk)]
            self.loaders[domain] = DataLoader(data, batch_sampler=chunks, num_workers=num_workers)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        iterators = {domain: iter(loader) for domain, loader in self.loaders.items()}
        for index in range(self.count):
            yield {domain: next(iterators[domain]) for domain, loader in self.loaders.items() if index < len(loader)}


class _Accuracy:
    """Per-domain accuracy in percent over a split."""

    def __init__(self, domains: tuple[str, ...]) -> None:
        self.correct = dict.fromkeys(domains, 0)
        self.total = dict.fromkeys(domains, 0)

    def update(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> None:
        for domain, logits in outputs.items():
            labels = batch[domain][1]
            self.correct[domain] += int((logits.detach().argmax(1) == labels).sum())
            self.total[domain] += int(labels.shape[0])

    def compute(self) -> dict[str, float]:
        return {d: 100.0 * self.correct[d] / self.total[d] if self.total[d] else float("nan") for d in self.correct}


# ---------------------------------------------------------------------------------------------- benchmarks
class _Office(Benchmark):
    """Options: ``image_size``, ``split_dir``, ``split_seed``, ``trunk_weights``, ``noise_redraw``, ``num_workers``."""

    num_classes: int
    performance_split = "val"
    quick_options = {"image_size": 32}

    @property
    def image_size(self) -> int:
        return int(self.options.get("image_size", 224))

    def splits(self, data_dir: Path, *, seed: int, noise: float = 0.0) -> Splits:
        split_dir = self.options.get("split_dir")
        entries = read_office(Path(data_dir).expanduser(), self.name, self.tasks, self.num_classes,
                              split_dir=None if not split_dir else Path(str(split_dir)).expanduser(),
                              split_seed=int(self.options.get("split_seed", 0)))
        size = (self.image_size, self.image_size)
        parts: dict[str, dict[str, Dataset]] = {split: {} for split in _SPLITS}
        for domain, splits in entries.items():
            for split, rows in splits.items():
                paths, labels = [p for p, _ in rows], torch.tensor([label for _, label in rows], dtype=torch.int64)
                if split == "train" and noise > 0 and domain in self.noisy_tasks:
                    parts[split][domain] = self._noisy(paths, labels, size, noise, seed)
                else:
                    parts[split][domain] = ImageFiles(paths, labels, size, normalise=True)
        return Splits(train=parts["train"], val=parts["val"], test=parts["test"])

    def _noisy(self, paths: list[Path], labels: Tensor, size: tuple[int, int], noise: float, seed: int) -> Dataset:
        """ExcessMTL Sec. 4.2 on the noisy domain: the rows :func:`symmetric_label_noise` selects get uniformly
        drawn labels, redrawn on every read (the authors' code) or once (``noise_redraw: false``)."""
        noisy_labels, mask = symmetric_label_noise(labels, noise, self.num_classes, torch.Generator().manual_seed(int(seed)))
        if not bool(self.options.get("noise_redraw", True)):
            return ImageFiles(paths, noisy_labels, size, normalise=True)
        return NoisyImageFiles(paths, labels, size, normalise=True, noisy=mask, num_classes=self.num_classes, seed=int(seed))

    def loader(self, dataset: Any, batch_size: int, *, shuffle: bool,
               generator: torch.Generator | None = None) -> Iterable[Any]:
        workers = int(self.options.get("num_workers") or 0)
        if shuffle:
            return DomainBatches(dataset, batch_size, generator, workers)
        return DomainChunks(dataset, batch_size, workers)

    def build_model(self) -> OfficeNet:
        model = OfficeNet(len(self.tasks), self.num_classes)
        weights = self.options.get("trunk_weights")
        if weights:
            if not Path(str(weights)).expanduser().is_file():
                raise BenchmarkDataError(f"trunk_weights={weights} is not a file (a torchvision resnet18 state dict).")
            model.load_trunk(str(weights))
        return model

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return {domain: model.heads[self.tasks.index(domain)](model.shared(images))
                for domain, (images, _) in batch.items()}

    def losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Tensor:
        """``[k]`` cross-entropies; a domain absent from an evaluation batch contributes 0."""
        reference = next(iter(outputs.values()))
        return torch.stack([F.cross_entropy(outputs[d], batch[d][1]) if d in outputs else reference.new_zeros(())
                            for d in self.tasks])

    def new_metrics(self) -> _Accuracy:
        return _Accuracy(self.tasks)

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> Any:
        side = self.image_size
        return {domain: (torch.randn(batch_size, 3, side, side, generator=generator),
                         torch.randint(self.num_classes, (batch_size,), generator=generator)) for domain in self.tasks}


@register
class OfficeHome(_Office):
    name = "officehome"
    tasks = ("Art", "Clipart", "Product", "Real_World")
    columns = tuple(MetricColumn(domain, domain, True) for domain in tasks)
    noisy_tasks = ("Product",)
    num_classes = 65
    layout = LAYOUTS["officehome"] + "\n" + _SPLIT_FILES
    train_size = 2635   # the largest domain's training images (Product): an epoch is its batches


@register
class Office31(_Office):
    name = "office31"
    tasks = ("amazon", "dslr", "webcam")
    columns = tuple(MetricColumn(domain, domain, True) for domain in tasks)
    num_classes = 31
    layout = LAYOUTS["office31"] + "\n" + _SPLIT_FILES
    train_size = 1680   # amazon's training images
