"""The paper benchmarks' loaders on fixtures in the exact on-disk layouts: items, augmentation, noise, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtrl.supervised.benchmarks import BenchmarkDataError, get
from mtrl.supervised.benchmarks.dense import horizontal_flip, random_scale_crop
from paper_fixtures import write_dense, write_qm9


@pytest.fixture(scope="module")
def nyuv2_dir(tmp_path_factory) -> Path:
    return write_dense(tmp_path_factory.mktemp("nyuv2"), n_train=6, n_val=2)


def test_nyuv2_items_are_the_npy_arrays_channels_first(nyuv2_dir: Path) -> None:
    splits = get("nyuv2")({"augment": False}).splits(nyuv2_dir, seed=0)
    assert splits.val is None and len(splits.train) == 6 and len(splits.test) == 2
    item = splits.test[1]
    image = np.load(nyuv2_dir / "val" / "image" / "1.npy")
    normal = np.load(nyuv2_dir / "val" / "normal" / "1.npy")
    assert torch.equal(item["image"], torch.from_numpy(image).permute(2, 0, 1))
    assert torch.equal(item["normal"], torch.from_numpy(normal).permute(2, 0, 1))
    assert item["label"].dtype == torch.long and item["label"].shape == (32, 64)
    assert torch.equal(item["label"], torch.from_numpy(np.load(nyuv2_dir / "val" / "label" / "1.npy")).long())
    assert item["depth"].shape == (1, 32, 64)


def test_scale_crop_keeps_sizes_divides_depth_by_the_scale_and_flip_negates_normal_x() -> None:
    sample = {"image": torch.rand(3, 32, 64), "label": torch.randint(-1, 13, (32, 64)),
              "depth": torch.rand(1, 32, 64) + 1, "normal": torch.rand(3, 32, 64)}
    for seed in range(8):
        out = random_scale_crop(sample, torch.Generator().manual_seed(seed))
        assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in sample.items()}
        assert out["label"].dtype == torch.long and set(out["label"].unique().tolist()) <= set(range(-1, 13))
        scale = sample["depth"].max() / out["depth"].max()          # nearest resizing keeps the values, ÷ s
        assert any(torch.isclose(scale, torch.tensor(s), atol=0.35) for s in (1.0, 1.2, 1.5))
        assert out["depth"].max() <= sample["depth"].max() + 1e-6
    flipped = horizontal_flip(sample)
    assert torch.equal(flipped["normal"][0], -sample["normal"][0].flip(-1))
    assert torch.equal(flipped["normal"][1:], sample["normal"][1:].flip(-1))
    assert torch.equal(flipped["label"], sample["label"].flip(-1))


def test_a_crop_at_scale_one_is_the_identity() -> None:
    sample = {"image": torch.rand(3, 32, 64), "label": torch.randint(-1, 13, (32, 64)), "depth": torch.rand(1, 32, 64)}
    for seed in range(30):
        generator = torch.Generator().manual_seed(seed)
        if int(torch.randint(3, (1,), generator=torch.Generator().manual_seed(seed))) == 0:   # s = 1 drawn
            out = random_scale_crop(sample, generator)
            assert all(torch.allclose(out[k].float(), sample[k].float()) for k in sample)
            return
    pytest.fail("no seed drew s = 1")


def test_segmentation_noise_corrupts_the_chosen_share_of_images_once_and_keeps_unlabelled_pixels(nyuv2_dir: Path) -> None:
    benchmark = get("nyuv2")({"augment": False})
    noisy = benchmark.splits(nyuv2_dir, seed=3, noise=0.5).train
    clean = benchmark.splits(nyuv2_dir, seed=3, noise=0.0).train
    assert len(noisy.noisy) == 3 and not clean.noisy
    for i in range(len(clean)):
        a, b = clean[i]["label"], noisy[i]["label"]
        assert torch.equal(a == -1, b == -1)                    # unlabelled stays unlabelled
        if i in noisy.noisy:
            assert not torch.equal(a, b) and torch.equal(b, noisy[i]["label"])   # drawn once per image
            assert (a[a >= 0] == b[a >= 0]).float().mean() < 0.3               # ~1/13 agree by chance
        else:
            assert torch.equal(a, b)
        assert torch.equal(clean[i]["depth"], noisy[i]["depth"])


@pytest.mark.parametrize("break_it, message", [
    (lambda root: __import__("shutil").rmtree(root / "train" / "normal"), "normal should hold 0.npy"),
    (lambda root: (root / "val" / "depth" / "1.npy").unlink(), "missing 1.npy"),
    (lambda root: np.save(root / "train" / "depth" / "0.npy", np.zeros((32, 64, 2))), r"expected H×W×1"),
    (lambda root: __import__("shutil").rmtree(root / "val"), "No .*val/image"),
])
def test_a_malformed_dense_directory_names_the_expected_layout(tmp_path: Path, break_it, message: str) -> None:
    root = write_dense(tmp_path / "nyuv2", n_train=2, n_val=2)
    break_it(root)
    with pytest.raises(BenchmarkDataError, match=message) as error:
        get("nyuv2")().splits(root, seed=0)
    assert "label/<i>.npy" in str(error.value) or "divisible" in str(error.value)


def test_cityscapes_reads_label_7_and_has_no_normals(tmp_path: Path) -> None:
    root = write_dense(tmp_path / "cityscapes", label_folder="label_7", num_classes=7, normals=False)
    item = get("cityscapes")({"augment": True}).splits(root, seed=0).train[0]
    assert set(item) == {"image", "label", "depth"} and item["label"].max() < 7
    with pytest.raises(BenchmarkDataError, match="label_7"):
        get("cityscapes")().splits(write_dense(tmp_path / "nyu_layout", n_train=2, n_val=2), seed=0)


# ---------------------------------------------------------------------------------------------------- QM9
@pytest.fixture(scope="module")
def qm9_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch_geometric")
    try:
        import rdkit  # noqa: F401
        pytest.skip("with RDKit installed PyG reads the raw .sdf release, not the fixture's qm9_v3.pt")
    except ImportError:
        pass
    return write_qm9(tmp_path_factory.mktemp("qm9"), n=40)


def test_qm9_never_downloads_a_missing_raw_directory_is_an_error_and_nothing_is_created(tmp_path: Path) -> None:
    pytest.importorskip("torch_geometric")
    with pytest.raises(BenchmarkDataError, match="qm9_v3.pt|gdb9.sdf"):
        get("qm9")().splits(tmp_path, seed=0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BenchmarkDataError, match="not a directory"):
        get("qm9")().splits(tmp_path / "absent", seed=0)


def test_qm9_split_targets_normalisation_and_complete_graphs(qm9_dir: Path) -> None:
    from torch_geometric.utils import to_dense_adj

    benchmark = get("qm9")({"test_size": 8, "val_size": 6})
    splits = benchmark.splits(qm9_dir, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (26, 6, 8)
    again = benchmark.splits(qm9_dir, seed=1)
    assert [d.idx for d in splits.test] == [d.idx for d in again.test]        # the split is a function of the seed
    assert {int(d.idx) for s in splits for d in s} == set(range(40))

    raw = torch.load(qm9_dir / "raw" / "qm9_v3.pt", weights_only=False)
    all_y = torch.cat([m["y"] for m in raw])[:, [0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]]
    mean, std = all_y.mean(0), all_y.std(0)
    molecule = splits.val[0]
    source = raw[int(molecule.idx)]
    assert torch.allclose(molecule.y[0], (source["y"][0, [0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]] - mean) / std, atol=1e-5)
    n = source["x"].shape[0]
    assert molecule.x.shape == (n, 11) and molecule.edge_attr.shape == (n * (n - 1), 5)
    # Every ordered pair of distinct atoms is an edge; bond features where the release has a bond, 0 elsewhere.
    dense = to_dense_adj(molecule.edge_index, edge_attr=molecule.edge_attr[:, :4], max_num_nodes=n)[0]
    bonds = to_dense_adj(source["edge_index"], edge_attr=source["edge_attr"], max_num_nodes=n)[0]
    assert torch.equal(dense, bonds)
    distance = (source["pos"][molecule.edge_index[0]] - source["pos"][molecule.edge_index[1]]).norm(dim=1)
    assert torch.allclose(molecule.edge_attr[:, 4], distance, atol=1e-5)

    with pytest.raises(BenchmarkDataError, match="130,831"):
        get("qm9")().splits(qm9_dir, seed=0)          # 40 molecules cannot hold the default 10,000 + 10,000
