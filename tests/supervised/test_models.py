"""Shared-trunk models, per-task losses and metrics of the supervised benchmarks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtrl.supervised.data import MNIST_FILES, multidigits, multimnist, noisy_regression, write_idx
from mtrl.supervised.models import MultiTaskModel, make_model, task_losses, task_metrics


@pytest.fixture(scope="module")
def digits():
    return multidigits(noise=0.0, n_train=600, n_val=100, n_test=200)


@pytest.fixture(scope="module")
def regression():
    return noisy_regression(noise=0.0, n_train=500, n_val=100, n_test=200)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    write_idx(folder / MNIST_FILES["train_images"], rng.integers(0, 256, (40, 28, 28), dtype=np.uint8))
    write_idx(folder / MNIST_FILES["train_labels"], rng.integers(0, 10, 40, dtype=np.uint8))
    write_idx(folder / MNIST_FILES["test_images"], rng.integers(0, 256, (12, 28, 28), dtype=np.uint8))
    write_idx(folder / MNIST_FILES["test_labels"], rng.integers(0, 10, 12, dtype=np.uint8))
    return multimnist(folder)


def _fake_dataset(name, x, kinds, classes):
    return SimpleNamespace(name=name, x_train=x, task_kinds=kinds, num_classes=classes)


def test_multidigits_model_shapes(digits):
    model = make_model(digits)
    x = digits.x_train[:8]
    z = model.representation(x)
    assert z.shape == (8, 128)
    outputs = model(x)
    assert [o.shape for o in outputs] == [(8, 10), (8, 10)]
    assert isinstance(model.shared[0], nn.Flatten) and model.shared[1].in_features == 144
    assert sum(isinstance(m, nn.Linear) for m in model.shared) == 2


def test_regression_model_shapes(regression):
    model = make_model(regression)
    outputs = model(regression.x_train[:5])
    assert len(outputs) == 7 and all(o.shape == (5, 1) for o in outputs)
    assert model.representation(regression.x_train[:5]).shape == (5, 128)
    assert sum(isinstance(m, nn.Linear) for m in model.shared) == 3       # ExcessMTL App. C.1: 3 × 128


def test_multimnist_model_is_a_cnn(mnist):
    model = make_model(mnist)
    assert any(isinstance(m, nn.Conv2d) for m in model.shared.modules())
    assert model.representation(mnist.x_test).shape == (12, 80)         # ExcessMTL App. C.1: 80 hidden units
    assert [o.shape for o in model(mnist.x_test)] == [(12, 10), (12, 10)]


def test_make_model_overrides_and_errors(digits):
    model = make_model(digits, hidden=32, layers=3)
    assert model.representation(digits.x_train[:2]).shape == (2, 32)
    assert sum(isinstance(m, nn.Linear) for m in model.shared) == 3
    with pytest.raises(ValueError, match="16×16"):
        make_model(digits, trunk="cnn")                                  # 12×12 is too small for the LeNet
    images = _fake_dataset("custom", torch.zeros(3, 1, 20, 24), ["classification"] * 3, [2, 3, 4])
    cnn = make_model(images, trunk="cnn", hidden=16)
    assert cnn.representation(images.x_train).shape == (3, 16)
    assert [o.shape for o in cnn(images.x_train)] == [(3, 2), (3, 3), (3, 4)]
    with pytest.raises(ValueError, match="trunk"):
        make_model(digits, trunk="transformer")
    with pytest.raises(ValueError, match="image"):
        make_model(_fake_dataset("x", torch.zeros(4, 21), ["regression"], [None]), trunk="cnn")
    mixed = make_model(_fake_dataset("custom", torch.zeros(4, 6), ["classification", "regression"], [3, None]))
    assert [o.shape for o in mixed(torch.zeros(4, 6))] == [(4, 3), (4, 1)]


def test_heads_are_task_specific(digits):
    model = make_model(digits)
    x = digits.x_train[:16]
    assert model.heads[0] is not model.heads[1]
    assert model.heads[0].weight.data_ptr() != model.heads[1].weight.data_ptr()
    # the heads start from different weights, so the tasks' outputs differ
    first, second = model(x)
    assert not torch.allclose(first, second)
    # task 0's loss has no gradient on task 1's head; both reach the shared trunk
    losses = task_losses(model(x), digits.y_train[:16], digits)
    grads = torch.autograd.grad(losses[0], [model.heads[0].weight, model.heads[1].weight, model.shared[1].weight],
                                allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert grads[1] is None or not grads[1].any()
    assert grads[2] is not None and grads[2].abs().sum() > 0
    # changing head 1 leaves task 0's output unchanged
    with torch.no_grad():
        model.heads[1].weight.add_(1.0)
    assert torch.equal(model(x)[0], first) and not torch.equal(model(x)[1], second)


def test_forward_is_heads_of_representation(regression):
    model = make_model(regression)
    x = regression.x_train[:4]
    z = model.representation(x)
    for a, b in zip(model.heads_forward(z), model(x)):
        assert torch.equal(a, b)


def test_task_losses_match_hand_computation(digits, regression):
    torch.manual_seed(0)
    logits = [torch.randn(6, 10), torch.randn(6, 10)]
    y = digits.y_train[:6]
    losses = task_losses(logits, y, digits)
    assert losses.shape == (2,)
    assert torch.allclose(losses, torch.stack([F.cross_entropy(logits[t], y[:, t]) for t in range(2)]))

    outputs = [torch.randn(6, 1) for _ in range(7)]
    y = regression.y_train[:6]
    losses = task_losses(outputs, y, regression)
    expected = torch.stack([((outputs[t][:, 0] - y[:, t]) ** 2).mean() for t in range(7)])
    assert losses.shape == (7,) and torch.allclose(losses, expected)
    flat = task_losses([o[:, 0] for o in outputs], y, regression)       # [B] outputs work too
    assert torch.allclose(flat, expected)
    with pytest.raises(ValueError):
        task_losses(outputs[:6], y, regression)


def test_task_metrics_directions_and_values(digits, regression):
    class Constant(nn.Module):
        """Predicts class 3 for task 0 and the true label for task 1."""

        def __init__(self, y):
            super().__init__()
            self.y = y
            self.dummy = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            n = x.shape[0]
            return [F.one_hot(torch.full((n,), 3), 10).float(), F.one_hot(self.y[:n, 1], 10).float()]

    y = digits.y_test
    metrics, higher = task_metrics(Constant(y), digits.x_test, y, digits, batch_size=200)
    assert higher == [True, True]
    assert metrics[0].item() == pytest.approx((y[:, 0] == 3).double().mean().item())
    assert metrics[1].item() == 1.0

    model = make_model(regression)
    model.train()
    metrics, higher = task_metrics(model, regression.x_test, regression.y_test, regression, batch_size=64)
    assert higher == [False] * 7 and metrics.shape == (7,)
    with torch.no_grad():
        expected = torch.stack([(o[:, 0] - regression.y_test[:, t]).square().mean()
                                for t, o in enumerate(model(regression.x_test))])
    assert torch.allclose(metrics, expected.double(), rtol=1e-5)
    assert model.training                                                  # mode restored


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_few_steps_of_mean_loss_training_learn_multidigits(digits, one_thread):
    torch.manual_seed(0)
    model = make_model(digits)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before, _ = task_metrics(model, digits.x_val, digits.y_val, digits)
    for _ in range(3):
        for start in range(0, len(digits.x_train), 64):
            x, y = digits.x_train[start:start + 64], digits.y_train[start:start + 64]
            loss = task_losses(model(x), y, digits).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after, _ = task_metrics(model, digits.x_val, digits.y_val, digits)
    assert (after > before + 0.3).all() and (after > 0.5).all(), (before, after)


def test_multitask_model_needs_a_head():
    with pytest.raises(ValueError):
        MultiTaskModel(nn.Identity(), [])
