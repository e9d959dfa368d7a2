"""Image files on disk -> tensors, for the image-classification benchmarks (CelebA, Office-31, Office-Home).

The authors' loaders (FAMO / PIVRG ``celeba/data.py``, LibMTL ``examples/office/create_dataset.py``) open each
file with PIL, convert it to RGB and apply torchvision's ``Resize((h, w))``, ``ToTensor`` and (Office)
``Normalize`` with the ImageNet statistics. :func:`read_image` does the same without torchvision: on a PIL
image ``Resize`` is ``Image.resize((w, h), BILINEAR)`` and ``ToTensor`` is ``HWC uint8 / 255 -> CHW float``.

.. note:: torchvision is not a dependency: the PyPI wheel of torchvision 0.28.0 installs beside the CPU
   build of torch 2.13.0 but does not import ("operator torchvision::nms does not exist": its ``_C.so``
   links ``libtorch_cuda.so``), and ``torchvision.datasets.CelebA`` checks the MD5 sums of five annotation
   files, which no test fixture can match.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "read_image", "ImageFiles"]

#: torchvision's ImageNet normalisation, as LibMTL's Office loader applies it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_image(path: str | Path, size: tuple[int, int], mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> Tensor:
    """``[3, h, w]`` float32 in [0, 1] (then ``(x − mean) / std`` per channel when given) from an image file."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
        array = np.asarray(rgb, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    if mean is not None and std is not None:
        tensor = (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return tensor


class ImageFiles(Dataset):
    """``(image [3, h, w], label)`` pairs from a list of files and a label tensor (first dimension = files).

    Args:
        paths: the image files.
        labels: ``[N]`` class indices or ``[N, m]`` targets.
        size: ``(h, w)`` every image is resized to.
        normalise: apply the ImageNet normalisation (Office) or not (CelebA).
    """

    def __init__(self, paths: Sequence[Path], labels: Tensor, size: tuple[int, int], normalise: bool = False) -> None:
        if len(paths) != labels.shape[0]:
            raise ValueError(f"{len(paths)} image files but {labels.shape[0]} labels.")
        self.paths = list(paths)
        self.labels = labels
        self.size = (int(size[0]), int(size[1]))
        self.normalise = normalise

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, index: int) -> Tensor:
        return self.labels[index]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.normalise else (None, None)
        return read_image(self.paths[index], self.size, mean, std), self.label(index)
