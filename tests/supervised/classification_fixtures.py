"""Tiny data directories in the published layouts of CelebA, Office-Home / Office-31 and SARCOS (nothing is
downloaded): a handful of small images or rows, written the way the releases store them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtrl.supervised.benchmarks.celeba import ATTRIBUTES

CELEBA_LAYOUTS = {
    "release": ("Anno/list_attr_celeba.txt", "Eval/list_eval_partition.txt", "Img/img_align_celeba"),
    "torchvision": ("celeba/list_attr_celeba.txt", "celeba/list_eval_partition.txt", "celeba/img_align_celeba"),
    "flat": ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"),
}
OFFICE_DOMAINS = {"officehome": ("Art", "Clipart", "Product", "Real_World"), "office31": ("amazon", "dslr", "webcam")}
OFFICE_CLASSES = {"officehome": 65, "office31": 31}


def _save_image(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")   # lossless content under the release's .jpg name


def write_celeba(root: Path, *, layout: str = "release", partition: tuple[int, int, int] = (6, 3, 3),
                 size: tuple[int, int] = (22, 18), seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """``sum(partition)`` images (train, val, test counts) with random ±1 attributes.
    Returns ``(root, attributes [N, 40] in {-1, 1}, partition codes [N])``."""
    rng = np.random.default_rng(seed)
    attributes_file, partition_file, image_dir = (root / part for part in CELEBA_LAYOUTS[layout])
    n = sum(partition)
    codes = np.repeat([0, 1, 2], partition)
    values = rng.choice([-1, 1], size=(n, len(ATTRIBUTES)))
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        _save_image(image_dir / name, rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    attributes_file.parent.mkdir(parents=True, exist_ok=True)
    partition_file.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values)]
    attributes_file.write_text(f"{n}\n" + " ".join(ATTRIBUTES) + " \n" + "\n".join(rows) + "\n")
    partition_file.write_text("".join(f"{name} {code}\n" for name, code in zip(names, codes)))
    return root, values, codes


def write_office(root: Path, name: str, *, per_class: int = 5, size: tuple[int, int] = (10, 12), seed: int = 0) -> Path:
    """``per_class`` images in every class folder of every domain (class folders ``class_00`` …)."""
    rng = np.random.default_rng(seed)
    for domain in OFFICE_DOMAINS[name]:
        folder = root / domain / "images" if name == "office31" else root / domain
        for label in range(OFFICE_CLASSES[name]):
            for index in range(per_class):
                _save_image(folder / f"class_{label:02d}" / f"{index:05d}.jpg",
                            rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return root


def sarcos_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, 28]``: 21 inputs and 7 torques from a fixed random smooth function of them (plus small noise)."""
    teacher = np.random.default_rng(1234)
    w1, w2 = teacher.normal(size=(21, 16)) / np.sqrt(21), teacher.normal(size=(16, 7))
    scale = np.array([30.0, 60.0, 10.0, 20.0, 1.0, 2.0, 0.5])        # torques of very different scales
    x = rng.normal(size=(n, 21)) * 2.0 + 1.0
    y = (np.tanh(x @ w1) @ w2 + 0.05 * rng.normal(size=(n, 7))) * scale
    return np.concatenate([x, y], axis=1)


def write_sarcos(root: Path, n_train: int = 80, n_test: int = 20, seed: int = 0) -> Path:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / "sarcos_inv.mat", {"sarcos_inv": sarcos_rows(n_train, rng)})
    savemat(root / "sarcos_inv_test.mat", {"sarcos_inv_test": sarcos_rows(n_test, rng)})
    return root
