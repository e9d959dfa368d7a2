"""ExcessMTL: Algorithm 1 against torchjd and the authors' loop, warm-up, robustness, label noise
(where the paper's claim that the noisy task loses weight holds and where it does not: README,
"ExcessMTL under label noise")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _references_b import excess_mtl_authors

import mtrl.aggregation as agg
from mtrl.aggregation import TaskStats, task_jacobian


def jacobian_sequence(k: int, n: int, length: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Shrinking, task-dependent gradients so that the relative excess risks differ between tasks.
    decay = torch.linspace(0.2, 1.0, k, dtype=torch.float64)[:, None]
    return [torch.randn(k, n, generator=generator, dtype=torch.float64) * (1 + t) ** -decay for t in range(length)]


def run(method: agg.Aggregator, jacobians: list[torch.Tensor]) -> list[torch.Tensor]:
    return [method(j, TaskStats(torch.ones(j.shape[0], dtype=j.dtype))) for j in jacobians]


def test_matches_the_authors_update_up_to_the_normalisation() -> None:
    """The authors' weights start at 1 and sum to k; ours are the same point of the simplex."""
    jacobians = jacobian_sequence(3, 25, length=12, seed=0)
    ours = run(agg.make("excessmtl", robust_step_size=0.5), jacobians)
    authors = excess_mtl_authors(jacobians, robust_step_size=0.5)
    for mine, theirs in zip(ours, authors):
        torch.testing.assert_close(3 * mine, theirs, rtol=1e-12, atol=0)
    assert not torch.allclose(ours[-1], torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-3)


@pytest.mark.parametrize("warmup", [1, 4])
def test_agrees_with_torchjd_excess_mtl_weighting(warmup: int) -> None:
    """torchjd with ``n_warmup_steps ≥ 1`` follows the same conventions (simplex, warm-up baseline);
    it adds 1e-7 to the baseline before dividing, hence the tolerance."""
    torchjd_aggregation = pytest.importorskip("torchjd.aggregation")
    jacobians = jacobian_sequence(4, 30, length=15, seed=1)
    reference = torchjd_aggregation.ExcessMTLWeighting(robust_step_size=0.3, n_warmup_steps=warmup)
    ours = run(agg.make("excessmtl", robust_step_size=0.3, warmup_steps=warmup), jacobians)
    for mine, jacobian in zip(ours, jacobians):
        torch.testing.assert_close(mine, reference(jacobian), rtol=1e-7, atol=0)


def test_excess_risk_is_the_fisher_normalised_squared_gradient() -> None:
    """Eq. 6-7 on two calls: Ê_i = Σ_j g_ij² / √(Σ_τ g_ij^(τ)² + eps), relative to the first call."""
    g1 = torch.tensor([[1.0, 2.0], [0.5, 0.0]], dtype=torch.float64)
    g2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    eps, eta = 1e-7, 0.7
    method = agg.make("excessmtl", robust_step_size=eta, eps=eps)
    run(method, [g1])
    weights = run(method, [g2])[0]
    first = (g1 ** 2 / torch.sqrt(g1 ** 2 + eps)).sum(1)
    second = (g2 ** 2 / torch.sqrt(g1 ** 2 + g2 ** 2 + eps)).sum(1)
    torch.testing.assert_close(weights, torch.softmax(eta * second / first, dim=0))


def test_warmup_keeps_uniform_weights_and_averages_the_baseline() -> None:
    jacobians = jacobian_sequence(3, 10, length=6, seed=2)
    method = agg.make("excessmtl", warmup_steps=4)
    weights = run(method, jacobians)
    for w in weights[:4]:
        torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert not torch.equal(weights[4], weights[3])
    squared_sum = torch.zeros(3, 10, dtype=torch.float64)
    risks = []
    for j in jacobians[:4]:
        squared_sum += j ** 2
        risks.append((j ** 2 / torch.sqrt(squared_sum + 1e-7)).sum(1))
    torch.testing.assert_close(method.baseline, torch.stack(risks).mean(0))


def test_zero_gradients_never_give_nan_and_a_missing_baseline_is_counted() -> None:
    method = agg.make("excessmtl", robust_step_size=1.0)
    g = torch.randn(2, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    zero_first = torch.stack([g[0], torch.zeros(6, dtype=torch.float64)])
    weights = run(method, [zero_first, zero_first, g, g * 1e8, g * 1e-8])
    assert all(torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0) for w in weights)
    # Calls 2 and 3 lack task 1's baseline; call 3 takes it from task 1's first non-zero gradient.
    assert method.fallbacks == 2
    assert float(method.baseline[1]) > 0


def test_huge_relative_excess_risk_saturates_instead_of_overflowing() -> None:
    method = agg.make("excessmtl", robust_step_size=10.0)
    g = torch.randn(2, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    weights = run(method, [g * torch.tensor([[1e-30], [1.0]], dtype=torch.float64),
                           g * torch.tensor([[1e30], [1.0]], dtype=torch.float64)])
    assert torch.isfinite(weights[-1]).all() and float(weights[-1][0]) == pytest.approx(1.0)
    assert float(weights[-1][1]) > 0


def test_a_different_jacobian_shape_needs_a_reset() -> None:
    method = agg.make("excessmtl")
    run(method, jacobian_sequence(2, 5, length=1, seed=5))
    with pytest.raises(ValueError, match=r"\[2, 5\].*\[2, 6\].*reset"):
        run(method, jacobian_sequence(2, 6, length=1, seed=5))
    method.reset()
    run(method, jacobian_sequence(2, 6, length=1, seed=5))


def test_state_dict_round_trip_continues_bit_for_bit() -> None:
    jacobians = jacobian_sequence(3, 8, length=10, seed=6)
    method = agg.make("excessmtl", robust_step_size=0.2, warmup_steps=2)
    run(method, jacobians[:5])
    saved = method.state_dict()
    first = run(method, jacobians[5:])
    resumed = agg.make("excessmtl", robust_step_size=0.2, warmup_steps=2)
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(first, run(resumed, jacobians[5:])))


@pytest.mark.parametrize("option, value", [("robust_step_size", 0.0), ("robust_step_size", float("inf")),
                                           ("warmup_steps", -1), ("warmup_steps", 2.5), ("eps", -1e-7)])
def test_bad_options_name_the_value(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"`{option}"):
        agg.make("excessmtl", **{option: value})


def train_with_label_noise(seed: int, steps: int = 400, noise_level: float = 0.8, classes: int = 10) -> torch.Tensor:
    """Two classification tasks on shared inputs; task 1's labels are replaced by uniformly random
    classes on a fraction ``noise_level`` of the training set (symmetric noise, the paper's scheme of
    Sec. 4.2). Shared linear feature layer, one linear head per task, Adam, mini-batches of 32; the
    shared layer follows ExcessMTL's weighted gradient, each head its own task's gradient
    (Algorithm 1). Returns the final weights."""
    generator = torch.Generator().manual_seed(seed)
    samples, inputs, hidden, batch = 512, 10, 4, 32
    x = torch.randn(samples, inputs, generator=generator, dtype=torch.float64)
    teachers = torch.randn(2, inputs, classes, generator=generator, dtype=torch.float64)
    labels = torch.stack([(x @ teachers[i]).argmax(dim=1) for i in range(2)], dim=1)  # [samples, 2]
    noisy = torch.rand(samples, generator=generator) < noise_level
    labels[:, 1] = torch.where(noisy, torch.randint(classes, (samples,), generator=generator), labels[:, 1])
    shared = (torch.randn(hidden, inputs, generator=generator, dtype=torch.float64) / inputs ** 0.5).requires_grad_()
    heads = (torch.randn(2, classes, hidden, generator=generator, dtype=torch.float64) / hidden ** 0.5).requires_grad_()
    method = agg.make("excessmtl")  # the authors' defaults: η_α = 1e-2, no warm-up
    optimizer = torch.optim.Adam([shared, heads], lr=1e-2)
    weights = torch.full((2,), 0.5, dtype=torch.float64)
    for _ in range(steps):
        rows = torch.randint(samples, (batch,), generator=generator)
        features = x[rows] @ shared.T  # [batch, hidden]
        losses = torch.stack([F.cross_entropy(features @ heads[i].T, labels[rows, i]) for i in range(2)])
        jacobian = torch.stack([torch.autograd.grad(losses[i], shared, retain_graph=True)[0].flatten()
                                for i in range(2)])  # [2, hidden * inputs]
        weights = method(jacobian, TaskStats(losses.detach()))
        optimizer.zero_grad()
        losses.sum().backward(inputs=[heads])
        shared.grad = (weights @ jacobian).view_as(shared)
        optimizer.step()
    return weights


@pytest.mark.parametrize("seed", range(3))
def test_the_clean_task_ends_with_the_larger_weight(seed: int) -> None:
    """The paper's claim (Sec. 4.3, Fig. 3, 6): with 80% label noise on one task, ExcessMTL gives the
    clean task the larger weight, where loss-based weighting would favour the noisy task's high loss.

    .. note:: This reproduces in classification with symmetric label noise (the paper's MultiMNIST
       scheme). In a linear-regression analogue with additive Gaussian label noise and mini-batch
       gradients we find the opposite: the estimate Σ g²/√S includes the gradient noise, which the
       label noise inflates, so the noisy task gets the larger weight (see ExcessMTL's docstring).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only add synchronisation
    try:
        weights = train_with_label_noise(seed)
    finally:
        torch.set_num_threads(threads)
    assert float(weights[0]) > float(weights[1]), weights


def multidigits_run(hidden: int, epochs: int, seed: int, authors_loop: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """ExcessMTL (the authors' defaults: η_α = 1e-2, no warm-up) training ``multidigits`` at noise 0.8
    on the bottom-right digit (task 1), with a two-layer MLP trunk of width ``hidden``.

    ``authors_loop=False``: Algorithm 1 as :class:`~mtrl.supervised.adapter.MultiTaskTrainer` runs it
    (simplex weights on the shared gradient, heads follow their own unweighted gradient).
    ``authors_loop=True``: the authors' LibMTL loop, ``(k·w · L).sum().backward()``: weights summing to k
    that also scale the heads' gradients. Returns the weights and the Jacobians, one per step."""
    from mtrl.supervised.data import multidigits
    from mtrl.supervised.models import make_model, task_losses

    dataset = multidigits(noise=0.8, seed=seed)
    torch.manual_seed(seed)
    model = make_model(dataset, hidden=hidden)
    shared, heads = list(model.shared.parameters()), list(model.heads.parameters())
    method = agg.make("excessmtl")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    weights, jacobians = [], []
    for _ in range(epochs):
        order = torch.randperm(dataset.x_train.shape[0], generator=generator)
        for rows in order[: len(order) // 128 * 128].view(-1, 128):
            losses = task_losses(model(dataset.x_train[rows]), dataset.y_train[rows], dataset)
            jacobian = task_jacobian(losses, shared)
            w = method(jacobian, TaskStats(losses.detach()))
            optimizer.zero_grad()
            if authors_loop:
                (2 * w * losses).sum().backward()
            else:
                head_grads = torch.autograd.grad(losses.sum(), heads, retain_graph=True)
                shared_grad = (w @ jacobian).split([p.numel() for p in shared])
                for p, g in zip(shared + heads, [g.view_as(p) for g, p in zip(shared_grad, shared)] + list(head_grads)):
                    p.grad = g
            optimizer.step()
            weights.append(w)
            jacobians.append(jacobian)
    return weights, jacobians


def single_threaded(function, *args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: intra-op threads only add synchronisation
    try:
        return function(*args)
    finally:
        torch.set_num_threads(threads)


def test_the_authors_rule_gives_our_weights_along_a_multidigits_run() -> None:
    """On the losses and gradients of a real run (multidigits, noise 0.8), the authors' rule (the test
    reference, starting at 1 and summing to k) and ours are the same points of the simplex at every
    step, so the weights that run produces are not an artefact of our implementation."""
    weights, jacobians = single_threaded(multidigits_run, 128, 1, 0, False)
    authors = excess_mtl_authors(jacobians, robust_step_size=1e-2)
    torch.testing.assert_close(2 * torch.stack(weights).double(), torch.stack(authors), rtol=1e-5, atol=0)
    assert not torch.equal(weights[-1], weights[0])


@pytest.mark.parametrize("hidden, epochs, authors_loop, clean_wins", [
    (128, 4, False, False), (128, 4, True, False), (8, 10, False, True)],
    ids=["wide-algorithm1", "wide-authors_loop", "narrow-algorithm1"])
def test_which_task_multidigits_up_weights_at_noise_08(hidden: int, epochs: int, authors_loop: bool,
                                                       clean_wins: bool) -> None:
    """Where the paper's claim (Fig. 3, 6: the noisy task is down-weighted) holds and where it does not.

    Width 128 (the benchmark's trunk): the clean digit is fitted within an epoch, its gradients and with
    them its excess-risk estimate fade, while the noisy digit's stay large (its labels are fitted slowly,
    and its first gradient, the baseline of scale processing, is small because 80 % of its labels carry
    no signal): the noisy task gains weight, in Algorithm 1 and in the authors' loop alike.
    Width 8: the clean digit stays far from its optimum and keeps the larger weight, as in the paper.
    """
    weights, _ = single_threaded(multidigits_run, hidden, epochs, 0, authors_loop)
    clean_share = float(torch.stack(weights[-39:])[:, 0].mean())  # the last epoch's 39 steps
    assert (clean_share > 0.5) == clean_wins, clean_share
    assert abs(clean_share - 0.5) > 0.05, clean_share


def test_the_authors_rule_gives_our_weights_on_the_sarcos_layout_with_noisy_torques(tmp_path: Path) -> None:
    """The same check on SARCOS's layout (fixture ``.mat`` files) with ExcessMTL's noise on torques 1-2,
    trained through the benchmark's loader, model and :class:`~mtrl.supervised.MultiTaskTrainer`."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "supervised"))
    from classification_fixtures import write_sarcos

    from mtrl.aggregation._excessmtl import ExcessMTL
    from mtrl.supervised import MultiTaskTrainer
    from mtrl.supervised.benchmarks import get

    class Recording(ExcessMTL):
        jacobians: list[torch.Tensor] = []

        def _weights(self, jacobian, stats):
            self.jacobians.append(jacobian.detach().clone())
            return super()._weights(jacobian, stats)

    sarcos = get("sarcos")()
    splits = sarcos.splits(write_sarcos(tmp_path, n_train=400, n_test=20), seed=0, noise=0.8)
    torch.manual_seed(0)
    model = sarcos.build_model()
    method = Recording(robust_step_size=0.1)
    trainer = MultiTaskTrainer(model, lambda batch: sarcos.losses(sarcos.forward(model, batch), batch), method,
                               torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2))
    weights = [trainer.step(batch).weights
               for batch in list(sarcos.loader(splits.train, 32, shuffle=True, generator=torch.Generator())) * 2]
    authors = excess_mtl_authors(method.jacobians, robust_step_size=0.1)
    torch.testing.assert_close(7 * torch.stack(weights).double(), torch.stack(authors), rtol=1e-5, atol=0)
    assert len(weights) == 24 and not torch.allclose(weights[-1], torch.full((7,), 1 / 7), atol=1e-3)
