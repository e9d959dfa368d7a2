"""Data sets and noise injection of the supervised benchmarks (ExcessMTL paper Sec. 4.2)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy import stats

from mtrl.supervised.data import (
    DATASETS, MNIST_FILES, gaussian_target_noise, multidigits, multimnist, noisy_regression, read_idx,
    symmetric_label_noise, write_idx,
)


def _same_rows(a, b, levels):
    """[len(a), len(b)] bool: row i of ``a`` equals row j of ``b`` once both are rounded to multiples of
    ``1 / levels`` (the pixel grid of the sources; undoes the float error of standardising)."""
    index = {}
    for j, row in enumerate(torch.round(b * levels).to(torch.int64).tolist()):
        index.setdefault(tuple(row), []).append(j)
    match = torch.zeros(len(a), len(b), dtype=torch.bool)
    for i, row in enumerate(torch.round(a * levels).to(torch.int64).tolist()):
        match[i, index.get(tuple(row), [])] = True
    return match


# ------------------------------------------------------------------------------------------------ noise injection


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.45, 0.8, 1.0])
def test_symmetric_noise_selects_the_requested_fraction(fraction):
    labels = torch.arange(1001) % 10
    noisy, mask = symmetric_label_noise(labels, fraction, 10, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == labels.shape
    assert int(mask.sum()) == int(np.floor(fraction * 1001 + 0.5))
    assert torch.equal(noisy[~mask], labels[~mask])                # unselected labels never change
    assert noisy.dtype == labels.dtype and 0 <= noisy.min() and noisy.max() < 10


def test_symmetric_noise_draws_new_labels_uniformly_over_all_classes():
    # Paper: the label is flipped "to any possible labels uniformly at random": also to the true one.
    n, classes, fraction = 20000, 10, 0.6
    labels = torch.zeros(n, dtype=torch.int64)                      # every true label is class 0
    noisy, mask = symmetric_label_noise(labels, fraction, classes, torch.Generator().manual_seed(1))
    counts = torch.bincount(noisy[mask], minlength=classes).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3                    # class 0 (the true one) included
    changed = (noisy != labels).float().mean().item()
    assert changed == pytest.approx(fraction * (1 - 1 / classes), abs=0.01)


def test_symmetric_noise_is_spread_uniformly_over_samples():
    n, fraction = 20000, 0.3
    labels = torch.randint(0, 10, (n,))
    _, mask = symmetric_label_noise(labels, fraction, 10, torch.Generator().manual_seed(2))
    per_block = mask.reshape(20, n // 20).sum(dim=1).numpy()        # 20 contiguous blocks of positions
    assert stats.chisquare(per_block).pvalue > 1e-3
    per_class = torch.bincount(labels[mask], minlength=10).numpy()  # selection does not depend on the class
    expected = torch.bincount(labels, minlength=10).numpy() * fraction
    assert stats.chisquare(per_class, expected * per_class.sum() / expected.sum()).pvalue > 1e-3


def test_symmetric_noise_is_a_function_of_the_generator():
    labels = torch.randint(0, 5, (500,))
    a = symmetric_label_noise(labels, 0.5, 5, torch.Generator().manual_seed(7))
    b = symmetric_label_noise(labels, 0.5, 5, torch.Generator().manual_seed(7))
    c = symmetric_label_noise(labels, 0.5, 5, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 1.5}, "fraction"), ({"fraction": -0.1}, "fraction"), ({"num_classes": 1}, "num_classes"),
    ({"labels": torch.tensor([0, 3])}, r"\[0, 3\)"), ({"labels": torch.zeros(2, 2, dtype=torch.long)}, r"\[N\]"),
])
def test_symmetric_noise_rejects_bad_arguments(kwargs, match):
    args = {"labels": torch.tensor([0, 1, 2]), "fraction": 0.5, "num_classes": 3,
            "generator": torch.Generator().manual_seed(0)} | kwargs
    with pytest.raises(ValueError, match=match):
        symmetric_label_noise(**args)


def test_gaussian_noise_has_the_targets_variance_on_the_requested_rows():
    n, fraction = 40000, 0.4
    generator = torch.Generator().manual_seed(3)
    scale = torch.tensor([0.5, 2.0, 5.0], dtype=torch.float64)
    targets = torch.randn(n, 3, generator=generator, dtype=torch.float64) * scale + 1.0
    noisy, mask = gaussian_target_noise(targets, fraction, generator)
    assert mask.shape == targets.shape
    rows = mask.all(dim=1)
    assert torch.equal(rows, mask.any(dim=1))                      # whole rows are selected
    assert int(rows.sum()) == int(fraction * n)
    assert torch.equal(noisy[~rows], targets[~rows])
    eps = (noisy - targets)[rows]
    relative = eps.var(dim=0) / targets.var(dim=0)                  # ≈ 1 ± 0.014 (std of a 16k-sample variance)
    assert torch.allclose(relative, torch.ones(3, dtype=torch.float64), atol=0.06), relative
    assert torch.allclose(eps.mean(dim=0) / scale, torch.zeros(3, dtype=torch.float64), atol=0.04)
    corr = torch.corrcoef(torch.cat([eps, targets[rows]], dim=1).T)[:3, 3:]
    assert corr.abs().max() < 0.05                                  # additive, independent of the target


def test_gaussian_noise_on_a_vector():
    targets = torch.linspace(-1, 1, 101)
    noisy, mask = gaussian_target_noise(targets, 0.0, torch.Generator().manual_seed(0))
    assert mask.shape == (101,) and not mask.any() and torch.equal(noisy, targets)
    noisy, mask = gaussian_target_noise(targets, 1.0, torch.Generator().manual_seed(0))
    assert mask.all() and not torch.equal(noisy, targets)


# ------------------------------------------------------------------------------------------------ multidigits


@pytest.fixture(scope="module")
def digits_clean():
    return multidigits(noise=0.0, seed=0, n_train=3000, n_val=500, n_test=800)


def test_multidigits_shapes_and_label_ranges(digits_clean):
    d = digits_clean
    assert d.name == "multidigits" and d.task_kinds == ["classification"] * 2 and d.num_classes == [10, 10]
    for x, y, n in ((d.x_train, d.y_train, 3000), (d.x_val, d.y_val, 500), (d.x_test, d.y_test, 800)):
        assert x.shape == (n, 1, 12, 12) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert y.shape == (n, 2) and y.dtype == torch.int64
        assert y.min() >= 0 and y.max() <= 9
        for task in range(2):                                       # every digit shows up in every position
            assert torch.bincount(y[:, task], minlength=10).min() > 0
    assert abs(d.x_train.mean().item()) < 1e-4 and d.x_train.std().item() == pytest.approx(1.0, abs=1e-4)
    assert d.clean_tasks == [0] and d.noisy_tasks == [1] and not d.train_noise_mask.any()


def test_multidigits_images_show_the_two_digits_top_left_and_bottom_right(digits_clean):
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits_clean.x_test[:50, 0] * digits_clean.meta["pixel_std"] + digits_clean.meta["pixel_mean"]
    sources = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0
    targets = torch.as_tensor(digits.target)
    for image, (left, right) in zip(pixels, digits_clean.y_test[:50]):
        # the non-overlapping corners are exact copies of some source digit of the right class
        top_left = image[:4, :8]
        bottom_right = image[8:, 4:]
        assert ((sources[targets == left][:, :4, :] - top_left).abs().amax(dim=(1, 2)) < 1e-5).any()
        assert ((sources[targets == right][:, 4:, :] - bottom_right).abs().amax(dim=(1, 2)) < 1e-5).any()


def test_multidigits_splits_use_disjoint_source_digits():
    from sklearn.datasets import load_digits

    d = multidigits(n_train=2000, n_val=400, n_test=400)
    sources = torch.as_tensor(load_digits().images, dtype=torch.float32).reshape(-1, 64) / 16.0
    _, first = np.unique(sources.numpy(), axis=0, return_index=True)  # a few bundled digits are duplicates

    def used(x):
        pixels = (x[:, 0] * d.meta["pixel_std"] + d.meta["pixel_mean"])[:, :4, :8].reshape(len(x), -1)
        # identify each left digit by its top half, which the right digit never covers
        tops = sources.reshape(-1, 8, 8)[first][:, :4, :].reshape(len(first), -1)
        match = _same_rows(pixels, tops, 16)
        return set(first[match.any(0).numpy()].tolist())

    train, val, test = used(d.x_train), used(d.x_val), used(d.x_test)
    assert train and val and test
    assert not (train & val) and not (train & test) and not (val & test)
    assert d.meta["source_digits"] == {"val": 359, "test": 359, "train": 1079}


@pytest.mark.parametrize("noise", [0.2, 0.8, 1.0])
def test_multidigits_noise_touches_only_the_noisy_tasks_training_labels(digits_clean, noise):
    d = multidigits(noise=noise, seed=0, n_train=3000, n_val=500, n_test=800)
    for name in ("x_train", "x_val", "x_test", "y_val", "y_test"):
        assert torch.equal(getattr(d, name), getattr(digits_clean, name)), name
    assert torch.equal(d.y_train[:, 0], digits_clean.y_train[:, 0])  # the clean task
    mask = d.train_noise_mask
    assert mask.shape == (3000, 2) and not mask[:, 0].any()
    assert int(mask[:, 1].sum()) == round(noise * 3000)
    assert torch.equal(d.y_train[~mask[:, 1], 1], digits_clean.y_train[~mask[:, 1], 1])
    changed = (d.y_train[:, 1] != digits_clean.y_train[:, 1]).float().mean().item()
    assert changed == pytest.approx(noise * 0.9, abs=0.03)
    assert d.noise == noise and d.noisy_tasks == [1]


def test_multidigits_noisy_task_can_be_the_left_one():
    d = multidigits(noise=0.5, noisy_task=0, n_train=1000, n_val=100, n_test=100)
    assert d.noisy_tasks == [0] and d.clean_tasks == [1]
    assert d.train_noise_mask[:, 0].sum() == 500 and not d.train_noise_mask[:, 1].any()


def test_multidigits_is_deterministic_under_seed():
    a = multidigits(noise=0.4, seed=5, n_train=1000, n_val=100, n_test=100)
    b = multidigits(noise=0.4, seed=5, n_train=1000, n_val=100, n_test=100)
    c = multidigits(noise=0.4, seed=6, n_train=1000, n_val=100, n_test=100)
    for name in ("x_train", "y_train", "x_test", "y_test", "train_noise_mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.x_train, c.x_train) and torch.equal(a.y_test, c.y_test)  # data fixed by data_seed
    assert not torch.equal(a.train_noise_mask, c.train_noise_mask)                # noise drawn with seed
    other = multidigits(noise=0.4, seed=5, n_train=1000, n_val=100, n_test=100, data_seed=1)
    assert not torch.equal(a.x_train, other.x_train)


@pytest.mark.parametrize("kwargs", [{"noise": 1.2}, {"noisy_task": 2}, {"n_train": 0}, {"shift": 9},
                                    {"source_fractions": (0.5, 0.5)}])
def test_multidigits_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        multidigits(**kwargs)


# ------------------------------------------------------------------------------------------------ noisy regression


def test_noisy_regression_shapes_and_standardisation():
    d = noisy_regression(noise=0.0, n_train=3000, n_val=500, n_test=1000)
    assert d.name == "noisyregression" and d.task_kinds == ["regression"] * 7 and d.num_classes == [None] * 7
    for x, y, n in ((d.x_train, d.y_train, 3000), (d.x_val, d.y_val, 500), (d.x_test, d.y_test, 1000)):
        assert x.shape == (n, 21) and y.shape == (n, 7)
        assert x.dtype == y.dtype == torch.float32
    for t in (d.x_train, d.y_train):                                # train statistics: exactly standard
        assert torch.allclose(t.mean(0), torch.zeros(t.shape[1]), atol=1e-5)
        assert torch.allclose(t.std(0), torch.ones(t.shape[1]), atol=1e-5)
    assert torch.allclose(d.y_test.std(0), torch.ones(7), atol=0.1)  # test uses the train statistics
    assert d.noisy_tasks == [0, 1] and d.clean_tasks == [2, 3, 4, 5, 6]


def test_noisy_regression_teacher_is_nonlinear():
    d = noisy_regression(n_train=3000, n_val=100, n_test=1000)
    design = torch.cat([d.x_train, torch.ones(3000, 1)], dim=1)
    weights = torch.linalg.lstsq(design, d.y_train).solution
    test = torch.cat([d.x_test, torch.ones(1000, 1)], dim=1) @ weights
    linear_mse = (test - d.y_test).square().mean().item()
    assert 0.08 < linear_mse < 0.5                                  # a linear model misses a good part


@pytest.mark.parametrize("noise", [0.3, 1.0])
def test_noisy_regression_noise_on_the_first_two_outputs_of_training_rows(noise):
    clean = noisy_regression(noise=0.0, seed=1)
    d = noisy_regression(noise=noise, seed=1)
    for name in ("x_train", "x_val", "x_test", "y_val", "y_test"):
        assert torch.equal(getattr(d, name), getattr(clean, name)), name
    assert torch.equal(d.y_train[:, 2:], clean.y_train[:, 2:])
    mask = d.train_noise_mask
    assert not mask[:, 2:].any() and torch.equal(mask[:, 0], mask[:, 1])
    assert int(mask[:, 0].sum()) == round(noise * 4000)
    eps = (d.y_train - clean.y_train)[mask[:, 0], :2]
    assert torch.equal((d.y_train - clean.y_train)[~mask[:, 0]], torch.zeros(4000 - len(eps), 7))
    # variance of the standardised clean targets is 1: the noise variance must be 1 too
    assert torch.allclose(eps.var(dim=0), torch.ones(2), atol=0.12), eps.var(dim=0)


def test_noisy_regression_is_deterministic_under_seed():
    a, b, c = noisy_regression(0.5, seed=2), noisy_regression(0.5, seed=2), noisy_regression(0.5, seed=3)
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.y_train, c.y_train) and torch.equal(a.y_test, c.y_test)


# ------------------------------------------------------------------------------------------------ IDX and MultiMNIST


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_layout_is_the_mnist_one(tmp_path):
    write_idx(tmp_path / "labels", np.array([3, 1, 4], dtype=np.uint8))
    raw = (tmp_path / "labels").read_bytes()
    assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])          # magic 2049, count 3, data
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1]))
    with pytest.raises(ValueError, match="header"):
        read_idx(tmp_path / "short")


def _write_mnist_fixture(folder, n_train=40, n_test=20, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        write_idx(folder / (MNIST_FILES[key] + suffix), array)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_multimnist_on_a_generated_fixture(tmp_path, gz):
    arrays = _write_mnist_fixture(tmp_path, gz=gz)
    d = multimnist(tmp_path, noise=0.0, seed=0)
    assert d.name == "multimnist" and d.num_classes == [10, 10]
    n_val = round(40 / 6)
    for x, y, n in ((d.x_train, d.y_train, 40 - n_val), (d.x_val, d.y_val, n_val), (d.x_test, d.y_test, 20)):
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (n, 2) and y.dtype == torch.int64 and y.min() >= 0 and y.max() <= 9
    # test pairs come from the t10k images only, with their labels
    assert set(d.y_test.flatten().tolist()) <= set(arrays["test_labels"].tolist())
    # each test image: top-left 6x6 corner is the left digit's, bottom-right corner the right digit's
    pixels = d.x_test[:, 0] * d.meta["pixel_std"] + d.meta["pixel_mean"]
    src = np.floor((np.arange(28) + 0.5) * 36 / 28).astype(int)     # nearest-neighbour 36 -> 28
    test_images = torch.from_numpy(arrays["test_images"].astype(np.float32) / 255)
    for image, (left, right) in zip(pixels, d.y_test):
        corner = src[src < 6]
        candidates = test_images[torch.from_numpy(arrays["test_labels"] == left.item())]
        assert ((candidates[:, corner][:, :, corner] - image[: len(corner), : len(corner)]).abs()
                .amax(dim=(1, 2)) < 1e-5).any()
        only_right = np.nonzero((src >= 28) & (src < 34))[0]        # rows/columns only the right digit covers
        far = src[only_right] - 6
        candidates = test_images[torch.from_numpy(arrays["test_labels"] == right.item())]
        assert ((candidates[:, far][:, :, far] - image[only_right][:, only_right]).abs()
                .amax(dim=(1, 2)) < 1e-5).any()


def test_multimnist_train_and_val_use_disjoint_source_digits(tmp_path):
    arrays = _write_mnist_fixture(tmp_path, n_train=60)
    d = multimnist(tmp_path)
    pixels = {"train": d.x_train, "val": d.x_val}
    sources = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255)
    src = np.floor((np.arange(28) + 0.5) * 36 / 28).astype(int)
    corner = src[src < 6]
    keys = sources[:, corner][:, :, corner].reshape(60, -1)          # random images: corners identify them
    used = {}
    for split, x in pixels.items():
        corners = (x[:, 0] * d.meta["pixel_std"] + d.meta["pixel_mean"])[:, : len(corner), : len(corner)]
        match = _same_rows(corners.reshape(len(x), -1), keys, 255)
        assert (match.sum(1) == 1).all()
        used[split] = set(match.nonzero()[:, 1].tolist())
    assert len(used["train"]) == len(d.x_train)                     # every pool image is a left digit once
    assert not used["train"] & used["val"]


def test_multimnist_noise_subsample_and_determinism(tmp_path):
    _write_mnist_fixture(tmp_path, n_train=40, n_test=20)
    clean = multimnist(tmp_path, noise=0.0, seed=0, n_train=20, n_val=5, n_test=10)
    assert (len(clean.x_train), len(clean.x_val), len(clean.x_test)) == (20, 5, 10)
    noisy = multimnist(tmp_path, noise=0.5, seed=0, n_train=20, n_val=5, n_test=10)
    again = multimnist(tmp_path, noise=0.5, seed=0, n_train=20, n_val=5, n_test=10)
    assert torch.equal(noisy.y_train, again.y_train) and torch.equal(noisy.x_train, again.x_train)
    assert torch.equal(noisy.x_train, clean.x_train) and torch.equal(noisy.y_test, clean.y_test)
    assert torch.equal(noisy.y_train[:, 0], clean.y_train[:, 0])
    assert int(noisy.train_noise_mask[:, 1].sum()) == 10 and not noisy.train_noise_mask[:, 0].any()


def test_multimnist_finds_torchvision_layout(tmp_path):
    _write_mnist_fixture(tmp_path / "MNIST" / "raw", gz=True)
    assert len(multimnist(tmp_path).x_test) == 20


def test_multimnist_missing_files_error_names_files_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        multimnist(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "data_dir" in message
    for name in MNIST_FILES.values():
        assert name in message
    _write_mnist_fixture(tmp_path)
    (tmp_path / MNIST_FILES["test_labels"]).unlink()
    with pytest.raises(FileNotFoundError, match="missing: t10k-labels-idx1-ubyte"):
        multimnist(tmp_path)


def test_multimnist_rejects_mismatched_files(tmp_path):
    _write_mnist_fixture(tmp_path)
    write_idx(tmp_path / MNIST_FILES["train_labels"], np.zeros(39, dtype=np.uint8))
    with pytest.raises(ValueError, match="disagree"):
        multimnist(tmp_path)


def test_registry_names_the_benchmarks():
    assert DATASETS["multidigits"] is multidigits and DATASETS["multimnist"] is multimnist
    assert DATASETS["noisyregression"] is noisy_regression


def test_dataset_to_moves_every_tensor(digits_clean):
    moved = digits_clean.to("cpu")
    assert moved is not digits_clean and torch.equal(moved.x_train, digits_clean.x_train)
    assert moved.higher_is_better == [True, True] and moved.input_shape == (1, 12, 12)


def test_multimnist_images_match_sener_and_koltun():
    """Their loader: 36×36 canvas, left at (0, 0), right at (6, 6), max in the overlap, PIL nearest resize."""
    image_module = pytest.importorskip("PIL.Image")
    from mtrl.supervised.data import _multimnist_images

    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    right = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    ours = _multimnist_images(torch.from_numpy(left), torch.from_numpy(right)).numpy()
    for lim, rim, image in zip(left, right, ours):
        canvas = np.zeros((36, 36), dtype=np.uint8)
        canvas[0:28, 0:28] = lim
        canvas[6:34, 6:34] = rim
        canvas[6:28, 6:28] = np.maximum(lim[6:28, 6:28], rim[0:22, 0:22])
        reference = np.asarray(image_module.fromarray(canvas).resize((28, 28), image_module.NEAREST))
        np.testing.assert_array_equal(image, reference)
