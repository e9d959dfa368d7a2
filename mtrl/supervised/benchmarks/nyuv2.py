"""NYUv2, 3 tasks: 13-class semantic segmentation, depth, surface normals (PIVRG Tables 1 and 5; ExcessMTL Fig. 8).

    python -m mtrl.supervised bench=nyuv2 data_dir=~/data/nyuv2 agg=pivrg
    python -m mtrl.supervised bench=nyuv2 data_dir=~/data/nyuv2 agg=excessmtl noise=0.6   # noisy segmentation labels

* **Data**: MTAN's preprocessed release (795 training and 654 validation images of 288×384; the validation
  split is the test split), layout and augmentation in :mod:`.dense`.
* **Model**: MTAN-SegNet (:mod:`.segnet`) with heads of 13, 1 and 3 channels.
* **Losses and metrics**: :mod:`.dense`; the nine columns of PIVRG Table 1.
* **Recipe** (``configs/bench/nyuv2.yaml``): Adam lr 1e-4, halved after 100 epochs, 200 epochs, batch 2,
  augmentation on (PIVRG Sec. 4.2; the Nash-MTL / PIVRG trainers' defaults); test metrics averaged over the
  last 10 epochs (Nash-MTL's README).
* **PIVRG's Δm** comes from the training split's metrics accumulated over each epoch (PIVRG Sec. 4.1).
* **Noise** (``noise=<level>``): that share of the training images get every labelled pixel's class drawn
  uniformly from the 13 classes (ExcessMTL Sec. 4.2's symmetric noise applied per image, drawn once).

.. note:: ExcessMTL's released code draws every pixel from {−1, …, 12} (so some become "unlabelled") and
   never passes its noise level to the NYUv2 loader; the paper's definition is followed here.
"""

from __future__ import annotations

from mtrl.supervised.benchmarks import register
from mtrl.supervised.benchmarks.dense import DenseBenchmark, depth_columns, normal_columns, segmentation_columns

__all__ = ["NYUv2"]


@register
class NYUv2(DenseBenchmark):
    name = "nyuv2"
    tasks = ("segmentation", "depth", "normal")
    columns = (*segmentation_columns(), *depth_columns(), *normal_columns())
    noisy_tasks = ("segmentation",)
    image_size = (288, 384)
    label_folder = "label"
    num_classes = 13
    with_normals = True
    train_size = 795
    layout = (
        "  <data_dir>/{train,val}/image/<i>.npy   288×384×3 float\n"
        "  <data_dir>/{train,val}/label/<i>.npy   288×384, classes 0-12, -1 = unlabelled\n"
        "  <data_dir>/{train,val}/depth/<i>.npy   288×384×1 (0 = no measurement)\n"
        "  <data_dir>/{train,val}/normal/<i>.npy  288×384×3 unit normals\n"
        "with i = 0 … n-1 (795 train, 654 val). This is MTAN's preprocessed NYUv2, published with MTAN "
        "(github.com/lorenmt/mtan, README: 'NYUv2 (3-task)') and linked from LibMTL and Nash-MTL.")
