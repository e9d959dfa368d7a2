"""CelebA, Office-Home / Office-31 and SARCOS from fixture directories in their published layouts: loaders,
noise, batching, models (parameter counts of the reference implementations), metrics against independent
computations, one training step, and `python -m mtrl.supervised bench=<name> data_dir=<fixture>`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from sklearn.metrics import f1_score, mean_squared_error

from classification_fixtures import OFFICE_CLASSES, OFFICE_DOMAINS, write_celeba, write_office, write_sarcos
from mtrl.supervised import bench
from mtrl.supervised.benchmarks import BenchmarkDataError, get
from mtrl.supervised.benchmarks.celeba import ATTRIBUTES, CelebaCNN, F1Metrics
from mtrl.supervised.benchmarks.images import read_image
from mtrl.supervised.benchmarks.office import DomainBatches, DomainChunks, OfficeNet, ResNet18
from mtrl.supervised.benchmarks.sarcos import INPUTS

ROOT = Path(__file__).resolve().parents[2]
CI = ("bench.epochs=2", "bench.max_steps_per_epoch=2", "device=cpu", "tensorboard=false")
ONE_STEP = ("bench.epochs=1", "bench.max_steps_per_epoch=1", "device=cpu", "tensorboard=false")


@pytest.fixture(scope="module")
def office_home(tmp_path_factory) -> Path:
    return write_office(tmp_path_factory.mktemp("officehome"), "officehome")


@pytest.fixture(scope="module")
def office31(tmp_path_factory) -> Path:
    return write_office(tmp_path_factory.mktemp("office31"), "office31")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="supervised", overrides=list(overrides))


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _stl_file(path: Path, columns: list[str], value: float) -> Path:
    path.write_text(json.dumps({"source": "planted", "values": dict.fromkeys(columns, value)}))
    return path


# ------------------------------------------------------------------------------------------------------ CelebA
@pytest.mark.parametrize("layout", ["release", "torchvision", "flat"])
def test_celeba_reads_each_published_layout_with_its_partition_and_attributes(tmp_path: Path, layout: str) -> None:
    root, values, codes = write_celeba(tmp_path, layout=layout, partition=(4, 2, 3))
    splits = get("celeba")({"image_size": 8}).splits(root, seed=0)
    for split, code in zip(splits, (0, 1, 2)):
        rows = np.flatnonzero(codes == code)
        assert len(split) == len(rows)
        np.testing.assert_array_equal(split.labels.numpy(), (values[rows] + 1) // 2)   # −1 → 0, 1 → 1
        image, label = split[0]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and 0 <= float(image.min()) <= 1
        assert label.shape == (40,)


def test_images_are_resized_bilinearly_and_scaled_to_unit_range(tmp_path: Path) -> None:
    from PIL import Image

    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:, :, 0], pixels[:, :, 2] = 255, 51
    Image.fromarray(pixels).save(tmp_path / "a.jpg", format="PNG")
    image = read_image(tmp_path / "a.jpg", (6, 4))
    assert image.shape == (3, 6, 4)
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    normalised = read_image(tmp_path / "a.jpg", (6, 4), (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    torch.testing.assert_close(normalised[:, 3, 2], torch.tensor([2.0, -1.0, -0.3]))


@pytest.mark.parametrize("damage, message", [
    ("nothing", "is not a directory"), ("header", "40 attributes"), ("image", "lacks 1 listed image"),
    ("partition", "malformed row"), ("row", "malformed row")])
def test_celeba_malformed_directories_name_the_layout(tmp_path: Path, damage: str, message: str) -> None:
    root, _, _ = write_celeba(tmp_path / "data")
    attributes, partition = root / "Anno" / "list_attr_celeba.txt", root / "Eval" / "list_eval_partition.txt"
    if damage == "nothing":
        root = tmp_path / "absent"
    elif damage == "header":
        lines = attributes.read_text().splitlines()
        attributes.write_text("\n".join([lines[0], "Smiling Young", *lines[2:]]))
    elif damage == "image":
        (root / "Img" / "img_align_celeba" / "000002.jpg").unlink()
    elif damage == "partition":
        partition.write_text(partition.read_text().replace("000003.jpg 0", "000003.jpg 7"))
    else:
        attributes.write_text(attributes.read_text().replace("000004.jpg", "000004.jpg 0", 1))
    with pytest.raises(BenchmarkDataError, match=message) as error:
        get("celeba")().splits(root, seed=0)
    assert "Anno/list_attr_celeba.txt" in str(error.value) and "mmlab.ie.cuhk.edu.hk" in str(error.value)


def test_celeba_cnn_has_the_reference_parameter_count() -> None:
    """FAMO / PIVRG ``experiments/celeba/models.py`` ``Network``: 5,197,160 parameters (seven bias-free
    convolutions 4,646,592 + their BatchNorms 3,712 + two bias-free 512×512 layers 524,288 + BatchNorms 2,048 +
    40 heads 20,520), of which 5,176,640 shared."""
    model = CelebaCNN()
    assert _parameters(model) == 5_197_160 and _parameters(model.shared) == 5_176_640
    model.eval()
    assert model(torch.rand(3, 3, 64, 64)).shape == (3, 40)


def test_f1_matches_sklearn_over_batches_on_planted_predictions() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 40, generator=generator)
    labels = (torch.rand(50, 40, generator=generator) < 0.3).float()
    logits[:, 5], labels[:, 5] = -1.0, 0.0     # no positive and none predicted: F1 = 0
    logits[:, 6] = 0.0                          # sigmoid(0) = 0.5 is not above the threshold
    metrics = F1Metrics()
    for rows in torch.arange(50).split(16):
        metrics.update(logits[rows], (None, labels[rows]))
    got = metrics.compute()
    expected = f1_score(labels.numpy(), (logits > 0).numpy(), average=None, zero_division=0)
    np.testing.assert_allclose([got[name] for name in ATTRIBUTES], expected, atol=1e-6)
    assert got[ATTRIBUTES[5]] == 0.0 and got[ATTRIBUTES[6]] == 0.0


def test_celeba_losses_are_per_attribute_binary_cross_entropies() -> None:
    celeba = get("celeba")()
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 2, (6, 40), generator=torch.Generator().manual_seed(2)).float()
    probabilities = torch.sigmoid(logits)
    expected = -(labels * probabilities.log() + (1 - labels) * (1 - probabilities).log()).mean(0)   # BCELoss on sigmoid
    torch.testing.assert_close(celeba.losses(logits, (None, labels)), expected)


# ------------------------------------------------------------------------------------------------------ Office
@pytest.mark.parametrize("name", ["officehome", "office31"])
def test_office_split_per_class_and_labels(request, name: str) -> None:
    root = request.getfixturevalue(name.replace("officehome", "office_home"))
    splits = get(name)({"image_size": 8}).splits(root, seed=0)
    classes = OFFICE_CLASSES[name]
    for domain in OFFICE_DOMAINS[name]:
        counts = [np.bincount(part[domain].labels.numpy(), minlength=classes) for part in splits]
        # 5 images per class: ⌊0.6·5⌋ = 3 train, ⌊0.2·5⌋ = 1 val, 1 test
        assert [c.tolist() for c in counts] == [[3] * classes, [1] * classes, [1] * classes]
        paths = [set(map(str, part[domain].paths)) for part in splits]
        assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
        for path, label in zip(splits.train[domain].paths, splits.train[domain].labels):
            assert path.parent.name == f"class_{int(label):02d}"      # sorted class folders
    again = get(name)({"image_size": 8}).splits(root, seed=5)          # the split does not follow the run's seed
    assert again.test[OFFICE_DOMAINS[name][0]].paths == splits.test[OFFICE_DOMAINS[name][0]].paths


def test_office_reads_libmtl_split_files(office31: Path, tmp_path: Path) -> None:
    for domain in OFFICE_DOMAINS["office31"]:
        for split in ("train", "val", "test"):
            files = sorted((office31 / domain / "images").rglob("*.jpg"))[: {"train": 4, "val": 2, "test": 3}[split]]
            lines = [f"{p.relative_to(office31)} {30 - int(p.parent.name[-2:])}" for p in files]
            (tmp_path / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    splits = get("office31")({"image_size": 8, "split_dir": str(tmp_path)}).splits(office31, seed=0)
    assert [len(part["dslr"]) for part in splits] == [4, 2, 3]
    assert splits.train["dslr"].labels.tolist() == [30] * 4
    (tmp_path / "webcam_val.txt").write_text("webcam/images/none.jpg 3\n")
    with pytest.raises(BenchmarkDataError, match="none.jpg"):
        get("office31")({"split_dir": str(tmp_path)}).splits(office31, seed=0)


@pytest.mark.parametrize("redraw", [True, False])
def test_office_home_noise_on_product_training_labels_only(office_home: Path, redraw: bool) -> None:
    clean = get("officehome")({"image_size": 8}).splits(office_home, seed=3)
    noisy = get("officehome")({"image_size": 8, "noise_redraw": redraw}).splits(office_home, seed=3, noise=0.6)
    for domain in OFFICE_DOMAINS["officehome"]:
        for split in ("val", "test"):
            assert getattr(noisy, split)[domain].labels.tolist() == getattr(clean, split)[domain].labels.tolist()
        if domain != "Product":
            assert noisy.train[domain].labels.tolist() == clean.train[domain].labels.tolist()
    product, original = noisy.train["Product"], clean.train["Product"].labels
    reads = torch.stack([torch.stack([product.label(i) for i in range(len(product))]) for _ in range(3)])
    changed = (reads != original).any(0)
    if redraw:
        assert int(product.noisy.sum()) == round(0.6 * len(product))    # rows chosen once
        assert not changed[~product.noisy].any()                         # the others keep their label
        assert (reads[0] != reads[1]).any()                              # redrawn on every read
    else:
        assert torch.equal(reads[0], reads[1])
        assert 0.4 * len(product) < int(changed.sum()) <= round(0.6 * len(product))
    with pytest.raises(Exception, match="no label-noise option"):
        bench.run(_compose("bench=office31", f"data_dir={office_home}", "noise=0.5", *CI), office_home / "run")


def test_resnet18_matches_torchvision_layer_names_and_parameter_count(tmp_path: Path) -> None:
    """torchvision ``resnet18()``: 11,689,512 parameters including its 1000-class ``fc`` (512·1000 + 1000), so
    11,176,512 without it; a torchvision state dict (``conv1``, ``layer1.0.bn2``, ``layer2.0.downsample.0``,
    ``fc`` …) loads. LibMTL's Office encoder adds Linear(512, 512) + BatchNorm1d (263,680) and the heads
    Linear(512, C) per domain."""
    trunk = ResNet18()
    assert _parameters(trunk) + 512 * 1000 + 1000 == 11_689_512
    names = set(trunk.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias"} <= names
    trunk.eval()
    assert trunk(torch.rand(2, 3, 224, 224)).shape == (2, 512, 7, 7)
    home, thirty_one = OfficeNet(4, 65), OfficeNet(3, 31)
    assert _parameters(home) == 11_573_572 and _parameters(thirty_one) == 11_487_901
    assert _parameters(home.shared) == 11_176_512 + 263_680
    state = {**ResNet18().state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "resnet18.pth")
    model = get("officehome")({"trunk_weights": str(tmp_path / "resnet18.pth")}).build_model()
    torch.testing.assert_close(model.shared.resnet.layer3[1].conv1.weight, state["layer3.1.conv1.weight"])
    with pytest.raises(BenchmarkDataError, match="trunk_weights"):
        get("officehome")({"trunk_weights": str(tmp_path / "none.pth")}).build_model()


def test_domain_batches_cycle_the_smaller_domains_and_chunks_cover_each_image_once() -> None:
    data = {"a": torch.utils.data.TensorDataset(torch.arange(10)), "b": torch.utils.data.TensorDataset(torch.arange(3))}
    batches = DomainBatches(data, 4, torch.Generator().manual_seed(0))
    assert len(batches) == 2                                    # a: ⌊10/4⌋ full batches; b: ⌊3/3⌋ restarts
    seen = [batch for _ in range(3) for batch in batches]
    assert all(len(b["a"][0]) == 4 and len(b["b"][0]) == 3 for b in seen)
    assert all(sorted(b["b"][0].tolist()) == [0, 1, 2] for b in seen)
    chunks = list(DomainChunks(data, 4))
    assert len(chunks) == 3 and sorted(torch.cat([c["a"][0] for c in chunks]).tolist()) == list(range(10))
    assert sorted(torch.cat([c["b"][0] for c in chunks if "b" in c]).tolist()) == [0, 1, 2]


def test_office_task_losses_read_only_their_own_domain_and_accuracy_matches_sklearn() -> None:
    office = get("office31")({"image_size": 32})
    model = office.build_model()
    batch = office.synthetic_batch(3, torch.Generator().manual_seed(0))
    for images, _ in batch.values():
        images.requires_grad_(True)
    losses = office.losses(office.forward(model, batch), batch)
    gradients = torch.autograd.grad(losses[1], [images for images, _ in batch.values()])
    assert float(gradients[0].abs().sum()) == float(gradients[2].abs().sum()) == 0
    assert float(gradients[1].abs().sum()) > 0
    accuracy = office.new_metrics()
    generator = torch.Generator().manual_seed(1)
    logits = {d: torch.randn(9, 31, generator=generator) for d in office.tasks}
    labels = {d: torch.randint(31, (9,), generator=generator) for d in office.tasks}
    logits["amazon"][:5] = torch.nn.functional.one_hot(labels["amazon"][:5], 31) * 10.0
    for rows in (slice(0, 4), slice(4, 9)):
        accuracy.update({d: logits[d][rows] for d in office.tasks}, {d: (None, labels[d][rows]) for d in office.tasks})
    from sklearn.metrics import accuracy_score

    for domain, value in accuracy.compute().items():
        assert value == pytest.approx(100 * accuracy_score(labels[domain], logits[domain].argmax(1)))


# ------------------------------------------------------------------------------------------------------ SARCOS
def test_sarcos_split_standardisation_and_gaussian_noise_on_torques_1_and_2(tmp_path: Path) -> None:
    root = write_sarcos(tmp_path, n_train=400, n_test=50)
    sarcos = get("sarcos")({"val_fraction": 0.25})
    clean = sarcos.splits(root, seed=1)
    noisy = sarcos.splits(root, seed=1, noise=0.5)
    x, y = clean.train.tensors
    assert x.shape == (300, INPUTS) and len(clean.val) == 100 and len(clean.test) == 50
    torch.testing.assert_close(y.mean(0), torch.zeros(7), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0), torch.ones(7), atol=1e-5, rtol=0)
    noisy_y = noisy.train.tensors[1]
    changed = (noisy_y != y).any(1)
    assert int(changed.sum()) == 150                                       # round(0.5 · 300) rows
    assert torch.equal(noisy_y[:, 2:], y[:, 2:]) and (noisy_y[changed, :2] != y[changed, :2]).all()
    assert 0.6 < float((noisy_y - y)[changed, :2].var()) < 1.5              # the standardised targets' variance 1
    for split in ("val", "test"):
        assert torch.equal(getattr(noisy, split).tensors[1], getattr(clean, split).tensors[1])
    raw = torch.from_numpy(__import__("scipy.io").io.loadmat(str(root / "sarcos_inv_test.mat"))["sarcos_inv_test"])
    assert torch.corrcoef(torch.stack([raw[:, 21].float(), clean.test.tensors[1][:, 0]]))[0, 1] > 0.9999


@pytest.mark.parametrize("damage, message", [("missing", "sarcos_inv_test.mat is missing"),
                                             ("key", "variable sarcos_inv should be"),
                                             ("columns", "found shape \\(10, 27\\)")])
def test_sarcos_malformed_directories_name_the_layout(tmp_path: Path, damage: str, message: str) -> None:
    from scipy.io import savemat

    root = write_sarcos(tmp_path)
    if damage == "missing":
        (root / "sarcos_inv_test.mat").unlink()
    else:
        savemat(root / "sarcos_inv.mat", {"other" if damage == "key" else "sarcos_inv": np.zeros((10, 27))})
    with pytest.raises(BenchmarkDataError, match=message) as error:
        get("sarcos")().splits(root, seed=0)
    assert "gaussianprocess.org/gpml/data" in str(error.value)


def test_sarcos_model_and_metric() -> None:
    """ExcessMTL App. C.1: three hidden layers of 128 ReLU units and a linear head per torque:
    (21·128 + 128) + 2·(128·128 + 128) + 7·129 = 36,743 parameters."""
    sarcos = get("sarcos")()
    model = sarcos.build_model()
    assert _parameters(model) == 36_743 and _parameters(model.shared) == 35_840
    generator = torch.Generator().manual_seed(0)
    outputs, targets = torch.randn(30, 7, generator=generator), torch.randn(30, 7, generator=generator)
    metrics = sarcos.new_metrics()
    for rows in torch.arange(30).split(7):
        metrics.update(outputs[rows], (None, targets[rows]))
    expected = mean_squared_error(targets.numpy(), outputs.numpy(), multioutput="raw_values")
    np.testing.assert_allclose(list(metrics.compute().values()), expected, rtol=1e-6)


# ----------------------------------------------------------------------------------------- one command each
def test_sarcos_one_command_against_single_task_runs_by_default(tmp_path: Path) -> None:
    """No STL row in the paper: unset ``baseline`` trains the single-task references (one per torque)."""
    root = write_sarcos(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "mtrl.supervised", "bench=sarcos", f"data_dir={root}", "agg=excessmtl",
                             "noise=0.5", *CI, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [c["name"] for c in r["columns"]] == [f"torque{j}" for j in range(1, 8)] and r["noise"] == 0.5
    assert r["stl"]["source"].startswith(str(tmp_path / "cache")) and r["steps"] == 2   # 72 rows: 1 batch an epoch
    deltas = [100 * (r["test"][c] - r["stl"]["values"][c]) / r["stl"]["values"][c] for c in r["delta_m"]]
    assert r["delta_m_mean"] == pytest.approx(np.mean(deltas)) and r["delta_m_var"] == pytest.approx(np.var(deltas))
    assert r["aggregator_options"]["warmup_steps"] == 3                   # the config's 3 epochs of 1 step


def test_celeba_one_command_against_the_paper_row_with_pi_ls_reading_the_validation_split(tmp_path: Path) -> None:
    root, _, _ = write_celeba(tmp_path / "data")
    r = bench.run(_compose("bench=celeba", f"data_dir={root}", "agg=pi_ls", "bench.image_size=16", "bench.batch_size=4",
                           *ONE_STEP), tmp_path / "run")
    assert [c["name"] for c in r["columns"]] == list(ATTRIBUTES) and r["performance_split"] == "val"
    assert r["stl"]["source"].startswith("PIVRG authors' code") and r["stl"]["values"]["Male"] == 0.97034
    assert r["delta_m_mean"] == pytest.approx(np.mean(list(r["delta_m"].values())))
    assert all(len(entry["performance"]) == 40 for entry in r["history"])
    assert r["aggregator_options"] == {"omega_lower": 0.5, "omega_upper": 2.0, "tau_min": 10.0}
    assert (tmp_path / "run" / "results.json").is_file() and r["steps"] == 1


@pytest.mark.parametrize("name, agg", [("officehome", "ls"), ("office31", "nashmtl")])
def test_office_one_command_with_noise_and_a_given_stl_row(request, tmp_path: Path, name: str, agg: str) -> None:
    """One step each: LS with Product's noisy labels on Office-Home, a Jacobian method (Nash-MTL) through the
    per-domain forward passes on Office-31."""
    root = request.getfixturevalue(name.replace("officehome", "office_home"))
    stl = _stl_file(tmp_path / "stl.json", list(OFFICE_DOMAINS[name]), 50.0)
    noise = ("noise=0.6",) if name == "officehome" else ()
    r = bench.run(_compose(f"bench={name}", f"data_dir={root}", f"agg={agg}", f"stl_file={stl}", "bench.image_size=32",
                           "bench.batch_size=4", *noise, *ONE_STEP), tmp_path / "run")
    assert [c["name"] for c in r["columns"]] == list(OFFICE_DOMAINS[name]) and r["steps"] == 1
    assert r["delta_m"] == pytest.approx({d: -2 * (r["test"][d] - 50.0) for d in OFFICE_DOMAINS[name]})
    assert r["delta_m_var"] == pytest.approx(np.var(list(r["delta_m"].values())))


def test_missing_data_is_exit_code_2_naming_the_layout(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "mtrl.supervised", "bench=officehome", f"data_dir={tmp_path / 'none'}",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "Real_World" in result.stderr and "hemanthdv.org/officeHomeDataset.html" in result.stderr
