"""Multi-task SAC: the aggregated step (trunk direction, head routing, clipping), the Jacobian through the
replicated trunk, the soft Bellman target, updates with LS / PIVRG / no aggregation, exact resume, and the
error messages."""

import copy
import io

import numpy as np
import pytest
import torch

from agents import Batch, MultiTaskSAC, ReplayBuffer, SACConfig, soft_q_target
from agent_helpers import ACT, B, HIDDEN, K, OBS, filled_buffer
from mtrl.aggregation import (Aggregator, TaskStats, available, make, replicate_for_tasks, task_jacobian,
                              task_partitioned_gradients)



class PerformanceSoftmax(Aggregator):
    """Test-only gradient aggregator: needs the Jacobian, weights = softmax(Δm / 10) (uniform without Δm)."""

    name = "test_performance_softmax"
    needs_jacobian = True
    uses_performance = True

    def _weights(self, jacobian, stats: TaskStats) -> torch.Tensor:
        performance = torch.zeros(stats.num_tasks) if stats.performance is None else stats.performance
        return torch.softmax(performance.to(jacobian) / 10.0, dim=0)

    def __repr__(self) -> str:
        return "PerformanceSoftmax()"


def make_agent(critic="ls", actor="ls", seed=0, **config) -> MultiTaskSAC:
    config = SACConfig(**{"hidden_dim": HIDDEN, "batch_size": K * B, **config})
    build = lambda a: a if not isinstance(a, str) else make(a)  # noqa: E731
    return MultiTaskSAC(OBS, ACT, K, config, build(critic), build(actor), device="cpu", seed=seed)



def losses_of(agent: MultiTaskSAC, network: str, batch: Batch):
    """The network's ``losses_of(trunk)`` as the update builds it (fixed noise for the actor)."""
    if network == "critic":
        target = agent.compute_target_q(batch)
        return lambda trunk: (agent.critic_losses(batch.obs, batch.action, target, trunk), None)
    noise = torch.randn(K, B, ACT, generator=torch.Generator().manual_seed(3))
    return lambda trunk: agent.actor_losses(batch.obs, noise, agent.alpha, trunk)


def all_tensors(agent: MultiTaskSAC) -> list[torch.Tensor]:
    return [*agent.actor.parameters(), *agent.critic.parameters(), *agent.critic_target.parameters(), agent.log_alpha]


class FixedLossWeights(Aggregator):
    """Test-only loss-weighting method (no Jacobian) with unequal weights."""

    name = "test_fixed_loss_weights"
    needs_jacobian = False
    loss_weighting = True

    def _weights(self, jacobian, stats: TaskStats) -> torch.Tensor:
        return torch.linspace(0.5, 2.0, stats.num_tasks)

    def __repr__(self) -> str:
        return "FixedLossWeights()"


# --------------------------------------------------------------------------- the aggregated step
@pytest.mark.parametrize("network", ["critic", "actor"])
@pytest.mark.parametrize("aggregator", ["unequal", "jacobian"])
@pytest.mark.parametrize("head_layers", [1, 2])
def test_the_step_gives_the_trunk_the_weighted_sum_and_each_head_its_own_gradient(network, aggregator, head_layers,
                                                                                 monkeypatch) -> None:
    """Against autograd task by task: the trunk gets Σ_i w_i ∇L_i, head i gets the unweighted ∇L_i (and no
    other task's gradient), and no other parameter gets a gradient."""
    method = FixedLossWeights() if aggregator == "unequal" else PerformanceSoftmax()
    agent = make_agent(critic=method, actor=copy.deepcopy(method), head_layers=head_layers)
    net = agent.critic if network == "critic" else agent.actor
    trunk, heads = net.trunk_parameters(), net.head_parameters()
    compute = losses_of(agent, network, filled_buffer().sample(B))
    losses, aux = compute(trunk)
    jacobian = task_jacobian(losses, trunk)
    expected_heads = [torch.zeros_like(p) for p in heads]
    for i in range(K):
        for grad, expected in zip(torch.autograd.grad(losses[i], heads, retain_graph=True), expected_heads):
            assert grad[[j for j in range(K) if j != i]].abs().max() == 0, "task i's loss reached another task's head"
            expected[i] = grad[i]
    performance = torch.tensor([0.0, 50.0, 100.0])

    optimizer = agent.critic_optimizer if network == "critic" else agent.actor_optimizer
    monkeypatch.setattr(optimizer, "step", lambda: None)  # keep .grad to inspect it
    step_losses, weights, step_aux = agent._optimize(network, compute, performance, 1)

    torch.testing.assert_close(step_losses, losses.detach())
    if aux is not None:
        torch.testing.assert_close(step_aux, aux)
    assert not torch.allclose(weights, weights.mean())
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in trunk]), weights @ jacobian, rtol=1e-4, atol=1e-6)
    for p, expected in zip(heads, expected_heads):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-7)
    others = agent.critic.parameters() if network == "actor" else agent.actor.parameters()
    assert all(p.grad is None for p in [*others, agent.log_alpha])


@pytest.mark.parametrize("network", ["critic", "actor"])
def test_the_replicated_trunk_gives_the_task_jacobian(network) -> None:
    """One backward through per-task replicas of the trunk equals the generic Jacobian and the heads' gradient
    of Σ_i L_i."""
    agent = make_agent(head_layers=2)
    net = agent.critic if network == "critic" else agent.actor
    trunk, heads = net.trunk_parameters(), net.head_parameters()
    compute = losses_of(agent, network, filled_buffer().sample(B))
    replicas = replicate_for_tasks(trunk, K)
    losses = compute(replicas)[0]
    jacobian, head_grads = task_partitioned_gradients(losses, replicas, heads)
    plain = compute(trunk)[0]
    torch.testing.assert_close(losses, plain)
    assert jacobian.shape == (K, sum(p.numel() for p in trunk))
    torch.testing.assert_close(jacobian, task_jacobian(plain, trunk), rtol=1e-4, atol=1e-6)
    for grad, expected in zip(head_grads, torch.autograd.grad(plain.sum(), heads)):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------------- the target
def test_soft_q_target_by_hand_stops_bootstrapping_only_on_termination() -> None:
    reward = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    done = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # a truncated transition is stored with done = 0
    next_q1 = torch.tensor([[3.0, 5.0], [2.0, -2.0]])
    next_q2 = torch.tensor([[4.0, 1.0], [1.0, 0.0]])
    next_log_prob = torch.tensor([[0.5, -1.0], [-2.0, 1.0]])
    alpha = torch.tensor([2.0, 0.1])
    expected = torch.tensor([[1 + 0.9 * (3 - 2 * 0.5), 2.0],
                             [0.5 + 0.9 * (1 + 0.1 * 2), -1 + 0.9 * (-2 - 0.1 * 1)]])
    torch.testing.assert_close(soft_q_target(reward, done, next_q1, next_q2, next_log_prob, alpha, 0.9), expected)


def test_agent_target_uses_target_critics_next_policy_and_each_tasks_alpha() -> None:
    agent = make_agent(gamma=0.5)
    with torch.no_grad():
        agent.log_alpha.copy_(torch.log(torch.tensor([0.5, 1.0, 2.0])))
        for p in agent.critic.parameters():  # online critic differs from the target: the target must be used
            p.add_(1.0)
    batch = filled_buffer().sample(B)
    noise = torch.randn(K, B, ACT)
    target = agent.compute_target_q(batch, noise=noise)
    with torch.no_grad():
        next_action, next_log_prob, _ = agent.actor(batch.next_obs, noise)
        q1, q2 = agent.critic_target(batch.next_obs, next_action)
        alpha = torch.tensor([0.5, 1.0, 2.0]).unsqueeze(1)
        expected = batch.reward + 0.5 * (1 - batch.done) * (torch.min(q1, q2) - alpha * next_log_prob)
    torch.testing.assert_close(target, expected)


# -------------------------------------------------------------------------------------- updates
def test_update_with_ls_changes_every_network_and_returns_finite_device_tensors() -> None:
    agent, buffer = make_agent(), filled_buffer()
    before = [t.detach().clone() for t in all_tensors(agent)]
    for _ in range(3):
        out = agent.update(buffer.sample(agent.batch_per_task))
    assert set(out) == {"loss/critic", "loss/actor", "loss/alpha", "weights/critic", "weights/actor", "alpha", "entropy"}
    for name, value in out.items():
        assert isinstance(value, torch.Tensor) and value.shape == (K,) and not value.requires_grad, name
        assert torch.isfinite(value).all(), name
    torch.testing.assert_close(out["weights/critic"], torch.full((K,), 1 / K))
    for old, new in zip(before, all_tensors(agent)):
        assert not torch.equal(old, new)
    assert agent.updates == 3


def test_update_with_pivrg_reads_performance() -> None:
    if "pivrg" not in available():
        pytest.skip("pivrg is not registered in mtrl.aggregation yet")
    agent, buffer = make_agent("pivrg", "pivrg"), filled_buffer()
    for _ in range(3):
        out = agent.update(buffer.sample(B), performance=torch.tensor([0.0, 40.0, 80.0]))
    for value in out.values():
        assert torch.isfinite(value).all()
    assert not torch.allclose(out["weights/critic"], torch.full((K,), 1 / K))


def test_update_with_a_jacobian_aggregator_passes_performance_and_step() -> None:
    seen = []

    class Recorder(PerformanceSoftmax):
        def _weights(self, jacobian, stats):
            seen.append((jacobian.shape, stats.performance, stats.step))
            return super()._weights(jacobian, stats)

    agent, buffer = make_agent(Recorder(), Recorder()), filled_buffer()
    performance = torch.tensor([10.0, 0.0, -10.0])
    out = agent.update(buffer.sample(B), performance=performance)
    out = agent.update(buffer.sample(B), performance=performance)
    torch.testing.assert_close(out["weights/actor"], torch.softmax(performance / 10, 0))
    n_critic = sum(p.numel() for p in agent.critic.trunk_parameters())
    n_actor = sum(p.numel() for p in agent.actor.trunk_parameters())
    assert [s[0] for s in seen] == [(K, n_critic), (K, n_actor)] * 2
    assert [s[2] for s in seen] == [1, 1, 2, 2]
    torch.testing.assert_close(seen[0][1], performance)


def test_no_aggregation_minimises_the_plain_mean(monkeypatch) -> None:
    agent = make_agent(critic=None, actor=None, aggregate=())
    out = agent.update(filled_buffer().sample(B))
    torch.testing.assert_close(out["weights/actor"], torch.full((K,), 1 / K))
    compute = losses_of(agent, "critic", filled_buffer(seed=1).sample(B))
    params = list(agent.critic.parameters())
    expected = torch.autograd.grad(compute(agent.critic.trunk_parameters())[0].mean(), params)
    monkeypatch.setattr(agent.critic_optimizer, "step", lambda: None)
    agent._optimize("critic", compute, None, 2)
    for p, grad in zip(params, expected):
        torch.testing.assert_close(p.grad, grad)


def test_only_the_listed_loss_is_aggregated() -> None:
    class Forbidden(PerformanceSoftmax):
        def _weights(self, jacobian, stats):
            raise AssertionError("the actor's aggregator must not be called")

    agent = make_agent("ls", Forbidden(), aggregate=("critic",))
    out = agent.update(filled_buffer().sample(B))
    assert torch.isfinite(out["loss/actor"]).all()


def test_actor_and_target_update_frequencies() -> None:
    agent, buffer = make_agent(actor_update_every=2, target_update_every=3), filled_buffer()
    actor_before = [p.detach().clone() for p in agent.actor.parameters()]
    target_before = [p.detach().clone() for p in agent.critic_target.parameters()]
    agent.update(buffer.sample(B))  # step 1: the first call updates the actor too; no target update
    actor_after_1 = [p.detach().clone() for p in agent.actor.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(actor_before, actor_after_1))
    assert all(torch.equal(a, b) for a, b in zip(target_before, agent.critic_target.parameters()))
    agent.update(buffer.sample(B))  # step 2: actor
    actor_after_2 = [p.detach().clone() for p in agent.actor.parameters()]
    agent.update(buffer.sample(B))  # step 3: no actor, target
    assert all(not torch.equal(a, b) for a, b in zip(target_before, agent.critic_target.parameters()))
    actor_after_3 = [p.detach().clone() for p in agent.actor.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(actor_after_2, actor_after_3))
    agent.update(buffer.sample(B))  # step 4: actor
    agent.update(buffer.sample(B))  # step 5: no actor
    assert all(not torch.equal(a, b) for a, b in zip(actor_after_3, agent.actor.parameters()))


def test_after_step_hook_gets_the_same_batch_losses_after_the_step() -> None:
    class AfterStepRecorder(PerformanceSoftmax):
        def __init__(self):
            super().__init__()
            self.seen = []

        def _weights(self, jacobian, stats):
            self.seen.append(("before", stats.losses.clone()))
            return super()._weights(jacobian, stats)

        def after_step(self, stats):
            self.seen.append(("after", stats.losses.clone()))

    critic = AfterStepRecorder()
    agent = make_agent(critic, "ls", lr=1e-2)
    agent.update(filled_buffer().sample(B))
    (first, before), (second, after) = critic.seen
    assert (first, second) == ("before", "after")
    assert after.shape == (K,) and not after.requires_grad
    assert after.sum() < before.sum(), "re-evaluated after the step: a descent step lowers the batch's loss"


# --------------------------------------------------------------------------------------- resume
def test_resume_from_state_dict_gives_bit_identical_parameters() -> None:
    config = dict(actor_update_every=2, target_update_every=2, head_layers=2)
    agent, buffer = make_agent("rlw", "rlw", **config), filled_buffer()
    for _ in range(3):
        agent.update(buffer.sample(B))
    agent.act(np.zeros((K, OBS)))
    saved = io.BytesIO()
    torch.save({"agent": agent.state_dict(), "buffer": buffer.state_dict()}, saved)
    for _ in range(4):
        agent.update(buffer.sample(B))
    continued_action = agent.act(np.ones((K, OBS)))

    torch.manual_seed(123)  # a different initialisation and different generators, all overwritten
    resumed = make_agent("rlw", "rlw", seed=7, **config)
    resumed_buffer = ReplayBuffer(K, OBS, ACT, K * 1000, seed=5)
    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    resumed.load_state_dict(state["agent"])
    resumed_buffer.load_state_dict(state["buffer"])
    for _ in range(4):
        resumed.update(resumed_buffer.sample(B))
    for a, b in zip(all_tensors(agent), all_tensors(resumed)):
        assert torch.equal(a, b)
    assert resumed.updates == agent.updates == 7
    np.testing.assert_array_equal(resumed.act(np.ones((K, OBS))), continued_action)


def test_loading_a_checkpoint_of_another_shape_is_refused() -> None:
    state = make_agent().state_dict()
    other = MultiTaskSAC(OBS + 1, ACT, K, SACConfig(hidden_dim=HIDDEN, batch_size=K * B), make("ls"), make("ls"))
    with pytest.raises(ValueError, match="checkpoint is for"):
        other.load_state_dict(state)


# ------------------------------------------------------------------------------ acting, errors
def test_act_routes_rows_to_heads_and_is_deterministic_on_request() -> None:
    agent = make_agent()
    obs = np.random.default_rng(0).normal(size=(K, OBS)).astype(np.float32)
    action = agent.act(obs)
    assert action.shape == (K, ACT) and np.abs(action).max() <= 1
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    assert agent.act(np.zeros((K, 5, OBS)), deterministic=True).shape == (K, 5, ACT)
    # row i uses head i: the same observation in every row gives different actions
    same = np.repeat(obs[:1], K, axis=0)
    mean = agent.act(same, deterministic=True)
    assert not np.allclose(mean[0], mean[1])
    with pytest.raises(ValueError, match="row i is task i"):
        agent.act(np.zeros((K + 1, OBS)))


def test_bad_configuration_is_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="not divisible by the number of tasks k = 3"):
        MultiTaskSAC(OBS, ACT, K, SACConfig(batch_size=1000), make("ls"), make("ls"))
    with pytest.raises(ValueError, match="same object"):
        shared = make("ls")
        MultiTaskSAC(OBS, ACT, K, SACConfig(batch_size=K * B), shared, shared)
    with pytest.raises(ValueError, match="aggregate includes 'actor'"):
        MultiTaskSAC(OBS, ACT, K, SACConfig(batch_size=K * B), make("ls"), None)
    with pytest.raises(ValueError, match="`head_layers` should be 1 or 2"):
        SACConfig(head_layers=3)
    with pytest.raises(ValueError, match="`aggregate` should hold"):
        SACConfig(aggregate=("critic", "alpha"))
    with pytest.raises(ValueError, match="`tau` should be in"):
        SACConfig(tau=0.0)


def test_bad_batches_and_performance_are_refused_with_a_message() -> None:
    agent = make_agent()
    batch = filled_buffer().sample(B)
    with pytest.raises(ValueError, match="performance should be a \\[3\\] tensor"):
        agent.update(batch, performance=torch.zeros(K + 1))
    wrong = copy.copy(batch)
    wrong.obs = batch.obs[:, :, :-1]
    with pytest.raises(ValueError, match="batch.obs should be"):
        agent.update(wrong)


def test_max_grad_norm_clips_the_trunk_step_only() -> None:
    """With a tiny max_grad_norm the trunk's aggregated gradient is rescaled to that norm before the step."""
    agent, buffer = make_agent(critic="nashmtl", max_grad_norm=1e-3), filled_buffer()
    seen = {}
    original_step = agent.critic_optimizer.step

    def record_then_step(*args, **kwargs):
        trunk = agent.critic.trunk_parameters()
        seen["trunk"] = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in trunk]))
        return original_step(*args, **kwargs)

    agent.critic_optimizer.step = record_then_step
    agent.update(buffer.sample(agent.batch_per_task))
    torch.testing.assert_close(seen["trunk"], torch.tensor(1e-3), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="`max_grad_norm` should be a positive number"):
        SACConfig(max_grad_norm=0.0)


@pytest.mark.parametrize("form", ["alpha", "log_alpha"])
def test_temperature_loss_forms_give_their_gradient_on_log_alpha(form: str) -> None:
    """``alpha``: ∂L/∂log α_i = α_i · mean(−log π − H̄) (mtrl); ``log_alpha``: the gap itself (SB3). Checked
    against the entropy the update returns (−mean log π of the same samples) and the recorded gradient."""
    agent, buffer = make_agent(temperature_loss=form), filled_buffer()
    with torch.no_grad():
        agent.log_alpha.copy_(torch.log(torch.tensor([0.5, 1.0, 2.0])))
    alpha_before = agent.alpha.clone()
    seen = {}
    original_step = agent.alpha_optimizer.step

    def record_then_step(*args, **kwargs):
        seen["grad"] = agent.log_alpha.grad.clone()
        return original_step(*args, **kwargs)

    agent.alpha_optimizer.step = record_then_step
    batch, before = buffer.sample(agent.batch_per_task), copy.deepcopy(agent)
    draws = torch.Generator().manual_seed(0)
    draws.set_state(agent.update_generator.get_state())
    out = agent.update(batch)
    # The entropy is −mean log π of the actor before its step, on the batch's states with the update's noise
    # (drawn after the target's): the actor loss's own forward, not a second one.
    target_noise, noise = (torch.randn((K, B, ACT), generator=draws) for _ in range(2))
    with torch.no_grad():
        _, log_prob, _ = before.actor(batch.obs, noise)
    torch.testing.assert_close(out["entropy"], -log_prob.mean(-1), rtol=1e-5, atol=1e-6)
    gap = out["entropy"] - agent.target_entropy                     # mean(−log π) − H̄, per task
    expected = gap * (alpha_before if form == "alpha" else 1.0)
    torch.testing.assert_close(seen["grad"], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`temperature_loss` should be"):
        SACConfig(temperature_loss="exp")
