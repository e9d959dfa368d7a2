"""Cityscapes, 2 tasks: 7-class semantic segmentation and depth (PIVRG Table 2).

    python -m mtrl.supervised bench=cityscapes data_dir=~/data/cityscapes agg=pivrg

* **Data**: MTAN's preprocessed release (2975 training and 500 validation images of 128×256; the validation
  split is the test split); the 7-class labels of the ``label_7`` folder; depth is inverse depth. Layout and
  augmentation (the NYUv2 one, on by default, as in the FAMO / PIVRG code) in :mod:`.dense`.
* **Model**: MTAN-SegNet (:mod:`.segnet`) with heads of 7 and 1 channels.
* **Metrics**: mIoU, pixel accuracy, absolute and relative depth error (the relative error is the plain
  mean ratio, not a percentage: its STL value is 27.77).
* **Recipe** (``configs/bench/cityscapes.yaml``): Adam lr 1e-4 halved after 100 epochs, 200 epochs,
  batch 8 (the FAMO / PIVRG trainers).
* **PIVRG's Δm** comes from the training split (PIVRG Sec. 4.1).
"""

from __future__ import annotations

from mtrl.supervised.benchmarks import register
from mtrl.supervised.benchmarks.dense import DenseBenchmark, depth_columns, segmentation_columns

__all__ = ["Cityscapes"]


@register
class Cityscapes(DenseBenchmark):
    name = "cityscapes"
    tasks = ("segmentation", "depth")
    columns = (*segmentation_columns(), *depth_columns())
    image_size = (128, 256)
    label_folder = "label_7"
    num_classes = 7
    with_normals = False
    train_size = 2975
    layout = (
        "  <data_dir>/{train,val}/image/<i>.npy    128×256×3 float\n"
        "  <data_dir>/{train,val}/label_7/<i>.npy  128×256, classes 0-6, -1 = unlabelled\n"
        "  <data_dir>/{train,val}/depth/<i>.npy    128×256×1 inverse depth (0 = no measurement)\n"
        "with i = 0 … n-1 (2975 train, 500 val). This is MTAN's preprocessed Cityscapes, published with MTAN "
        "(github.com/lorenmt/mtan, README: 'Cityscapes'), the release LibMTL and FAMO link to.")
