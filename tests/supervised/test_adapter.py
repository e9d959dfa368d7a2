"""MultiTaskTrainer: one step moves the parameters exactly as `mtl_backward` prescribes, for every aggregator."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mtrl.aggregation as agg
from mtrl.aggregation import TaskStats
from mtrl.supervised import MultiTaskTrainer, build_aggregator

K, BATCH, IN, HIDDEN = 3, 8, 4, 5
REFERENCE = [0.9, 0.5, 2.0]           # STL metrics: two accuracies (higher better), one MSE (lower better)
HIGHER = [True, True, False]
VAL_METRICS = [0.8, 0.6, 3.0]          # -> Δm = [11.1, -20, 50] %


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(HIDDEN, 1) for _ in range(K)])
        self.double()

    def representation(self, x):
        return self.shared(x)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, IN, generator=g, dtype=torch.float64), torch.randn(BATCH, K, generator=g, dtype=torch.float64)


def _losses_from(model, z, y):
    # Different scales per task so that aggregators have something to balance.
    return torch.stack([((model.heads[i](z).squeeze(-1) - y[:, i]) ** 2).mean() * (1.0 + 2.0 * i) for i in range(K)])


def _options(name: str) -> dict:
    # FAMO's default min_losses = 0 is below these (positive) losses; everything else uses its defaults.
    return {"seed": 3} if name in ("rlw", "pi_rlw", "rgw") and "seed" in agg.options(name) else {}


def _expected_step(model, aggregator, x, y, wrt, performance, lr=1.0):
    """Hand computation of the new parameters: per-task gradients by separate autograd calls, the weights
    from a copy of the aggregator, shared update ``-lr · wᵀJ``, heads ``-lr · (w_i or 1) ∇L_i``."""
    shared = list(model.shared.parameters())
    z = model.shared(x)
    losses = _losses_from(model, z, y)
    stats = TaskStats(losses.detach(), performance=performance, step=0)
    wrt_tensors = [z] if wrt == "representation" else shared
    rows = []
    for i in range(K):
        grads = torch.autograd.grad(losses[i], wrt_tensors, retain_graph=True)
        rows.append(torch.cat([g.flatten() for g in grads]))
    jacobian = torch.stack(rows)
    weights = aggregator(jacobian if aggregator.needs_jacobian else None, stats).detach()
    if wrt == "representation":
        shared_grads = torch.autograd.grad((weights * losses).sum(), shared, retain_graph=True)
    else:
        flat = weights @ jacobian
        shared_grads, offset = [], 0
        for p in shared:
            shared_grads.append(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    expected = {}
    for p, g in zip(shared, shared_grads):
        expected[id(p)] = p.detach() - lr * g
    for i, head in enumerate(model.heads):
        grads = torch.autograd.grad(losses[i], list(head.parameters()), retain_graph=True)
        scale = weights[i] if aggregator.loss_weighting else 1.0
        for p, g in zip(head.parameters(), grads):
            expected[id(p)] = p.detach() - lr * scale * g
    return expected, weights, losses.detach()


def _check_step(name: str, wrt: str) -> None:
    torch.manual_seed(0)
    model = TinyModel()
    x, y = _data()
    aggregator = agg.make(name, **_options(name))

    def loss_fn(batch):
        xb, yb = batch
        z = model.representation(xb)
        return z, _losses_from(model, z, yb)

    trainer = MultiTaskTrainer(model, loss_fn, aggregator, torch.optim.SGD(model.parameters(), lr=1.0),
                               wrt=wrt, reference=REFERENCE, higher_is_better=HIGHER)
    delta_m = trainer.set_performance(VAL_METRICS)
    reference_agg = copy.deepcopy(aggregator)
    rng = torch.get_rng_state()            # methods drawing from the global generator (PCGrad's order) see
    expected, weights, losses = _expected_step(model, reference_agg, x, y, wrt, delta_m)
    torch.set_rng_state(rng)               # the same draws in the hand computation and in the step
    out = trainer.step((x, y))
    torch.testing.assert_close(out.losses, losses)
    torch.testing.assert_close(out.weights, weights.to(out.weights.dtype))
    for p in model.parameters():
        torch.testing.assert_close(p.detach(), expected[id(p)], rtol=1e-9, atol=1e-9)
    assert trainer.steps == 1


@pytest.mark.parametrize("name", agg.available())
def test_one_step_follows_mtl_backward(name: str) -> None:
    _check_step(name, "parameters")


@pytest.mark.parametrize("name", agg.available())
def test_representation_path_mgda_ub(name: str) -> None:
    """Weights from the Jacobian w.r.t. z = trunk(x) ([k, B·d]); the trunk gets ∇_θ Σ w_i L_i."""
    _check_step(name, "representation")


def test_parameters_path_with_a_jacobian_method_really_uses_shared_parameter_gradients() -> None:
    """A recording aggregator sees a [k, n_shared] Jacobian (parameters) or [k, B·HIDDEN] (representation)."""
    seen = []

    class Recorder(agg.LS):
        needs_jacobian = True

        def _weights(self, jacobian, stats):
            seen.append(tuple(jacobian.shape))
            return super()._weights(jacobian, stats)

    for wrt in ("parameters", "representation"):
        model = TinyModel()
        x, y = _data()
        trainer = MultiTaskTrainer(model, lambda b: (model.shared(b[0]), _losses_from(model, model.shared(b[0]), b[1])),
                                   Recorder(), wrt=wrt)
        trainer.step((x, y))
    n_shared = IN * HIDDEN + HIDDEN
    assert seen == [(K, n_shared), (K, BATCH * HIDDEN)]


# ------------------------------------------------------------------------------------------------- Δm
def test_delta_m_higher_and_lower_is_better_reaches_the_aggregator() -> None:
    received = []

    class Recorder(agg.LS):
        def _weights(self, jacobian, stats):
            received.append(stats.performance.clone())
            return super()._weights(jacobian, stats)

    model = TinyModel()
    x, y = _data()
    trainer = MultiTaskTrainer(model, lambda b: _losses_from(model, model.shared(b[0]), b[1]), Recorder(),
                               reference=REFERENCE, higher_is_better=HIGHER)
    dm = trainer.set_performance(VAL_METRICS)
    # PIVRG Eq. 3: Δm_i = (-1)^δ_i (M_i - M_i^STL) / M_i^STL · 100, δ_i = 1 when higher is better.
    expected = torch.tensor([-(0.8 - 0.9) / 0.9 * 100, -(0.6 - 0.5) / 0.5 * 100, (3.0 - 2.0) / 2.0 * 100],
                            dtype=torch.float64)
    torch.testing.assert_close(dm, expected)
    assert dm[0] > 0 and dm[1] < 0 and dm[2] > 0       # worse accuracy, better accuracy, worse MSE
    trainer.step((x, y))
    torch.testing.assert_close(received[0], expected)
    # lower-is-better everywhere
    trainer2 = MultiTaskTrainer(model, lambda b: _losses_from(model, model.shared(b[0]), b[1]), "ls",
                                reference=[1.0, 1.0, 1.0], higher_is_better=False)
    torch.testing.assert_close(trainer2.set_performance([1.5, 0.5, 1.0]),
                               torch.tensor([50.0, -50.0, 0.0], dtype=torch.float64))


def test_pivrg_gives_the_task_behind_its_reference_more_weight() -> None:
    """Same batch, same parameters: raising a task's Δm raises its PIVRG weight."""
    model = TinyModel()
    x, y = _data()
    weights = []
    for metrics in ([0.9, 0.5, 2.0], [0.45, 0.5, 2.0]):          # task 0 falls from Δm 0 to Δm 50
        clone = copy.deepcopy(model)
        trainer = MultiTaskTrainer(clone, lambda b, m=clone: _losses_from(m, m.shared(b[0]), b[1]), "pivrg",
                                   torch.optim.SGD(clone.parameters(), lr=0.0), reference=REFERENCE,
                                   higher_is_better=HIGHER)
        trainer.set_performance(metrics)
        weights.append(trainer.step((x, y)).weights)
    share = [w[0] / w.sum() for w in weights]
    assert share[1] > share[0]


def test_set_performance_needs_a_reference() -> None:
    model = TinyModel()
    trainer = MultiTaskTrainer(model, lambda b: _losses_from(model, model.shared(b[0]), b[1]), "ls")
    with pytest.raises(ValueError, match="reference"):
        trainer.set_performance([0.5, 0.5, 0.5])
    dm = trainer.set_performance(delta_m=torch.tensor([1.0, 2.0, 3.0]))
    assert dm.dtype == torch.float64


# ---------------------------------------------------------------------------------------- after_step
def test_after_step_gets_the_same_batch_re_evaluated_and_only_when_overridden() -> None:
    calls = {"loss": 0}
    after = []

    class WithHook(agg.LS):
        def after_step(self, stats: TaskStats) -> None:
            after.append(stats.losses.clone())

    model = TinyModel()
    x, y = _data()

    def loss_fn(batch):
        calls["loss"] += 1
        return _losses_from(model, model.shared(batch[0]), batch[1])

    trainer = MultiTaskTrainer(model, loss_fn, WithHook(), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.step((x, y))
    assert calls["loss"] == 2 and len(after) == 1
    with torch.no_grad():
        torch.testing.assert_close(after[0], _losses_from(model, model.shared(x), y))
    plain = MultiTaskTrainer(model, loss_fn, "ls", torch.optim.SGD(model.parameters(), lr=0.1))
    plain.step((x, y))
    assert calls["loss"] == 3


def test_famo_learns_from_the_step() -> None:
    model = TinyModel()
    x, y = _data()
    trainer = MultiTaskTrainer(model, lambda b: _losses_from(model, model.shared(b[0]), b[1]), "famo",
                               torch.optim.SGD(model.parameters(), lr=0.05))
    for _ in range(3):
        trainer.step((x, y))
    logits = trainer.aggregator.logits        # learned only through after_step (initially zero)
    assert logits is not None and torch.as_tensor(logits).abs().sum() > 0


# ------------------------------------------------------------------------------------------- API edges
def test_build_aggregator_accepts_names_mappings_and_instances() -> None:
    assert build_aggregator("ls").name == "ls"
    rlw = build_aggregator({"name": "rlw", "options": {"distribution": "uniform"}})
    assert rlw.distribution == "uniform"
    instance = agg.make("ls")
    assert build_aggregator(instance) is instance
    with pytest.raises(ValueError, match="Valid names"):
        build_aggregator("nope")


def test_bad_arguments_are_refused_clearly() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="shared"):
        MultiTaskTrainer(model, lambda b: b, "ls")
    with pytest.raises(ValueError, match="wrt"):
        MultiTaskTrainer(TinyModel(), lambda b: b, "ls", wrt="z")
    tiny = TinyModel()
    trainer = MultiTaskTrainer(tiny, lambda b: _losses_from(tiny, tiny.shared(b[0]), b[1]), "ls", wrt="representation")
    with pytest.raises(ValueError, match="representation"):
        trainer.step(_data())


def test_optimizer_factory_clipping_and_state_round_trip() -> None:
    model = TinyModel()
    x, y = _data()
    trainer = MultiTaskTrainer(model, lambda b: _losses_from(model, model.shared(b[0]), b[1]), "rlw",
                               lambda params: torch.optim.Adam(params, lr=1e-2), max_grad_norm=1e-3,
                               aggregator_options={"seed": 0})
    trainer.step((x, y))
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    assert total <= 1e-3 * (1 + 1e-6)
    state = copy.deepcopy(trainer.state_dict())
    first = trainer.step((x, y)).weights
    trainer.load_state_dict(state)
    torch.testing.assert_close(trainer.step((x, y)).weights, first)


def test_loss_function_may_return_a_sequence_of_scalars_or_a_pair_with_the_representation() -> None:
    model = TinyModel()
    x, y = _data()
    for output in ("list", "tuple2", "pair"):
        def loss_fn(batch, output=output):
            z = model.shared(batch[0])
            losses = _losses_from(model, z, batch[1])
            if output == "list":
                return [losses[i] for i in range(K)]
            if output == "tuple2":       # k = 2 scalars in a tuple: not mistaken for (z, losses)
                return losses[0], losses[1]
            return z, losses
        out = MultiTaskTrainer(model, loss_fn, "ls", torch.optim.SGD(model.parameters(), lr=0.0)).step((x, y))
        assert out.losses.shape == ((2,) if output == "tuple2" else (K,))
