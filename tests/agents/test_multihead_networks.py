"""Multi-head networks: row block i goes through head i only; the batched forward equals each task through
its own layers, with the trunk's parameters or their per-task replicas."""

import pytest
import torch

from agents import Actor, MultiHeadMLP, TwinCritic
from agents.networks import mlp_apply
from mtrl.aggregation import replicate_for_tasks

K, B, IN, OUT = 3, 5, 4, 2


@pytest.mark.parametrize("head_layers", [1, 2])
def test_task_i_output_depends_only_on_head_i(head_layers: int) -> None:
    net = MultiHeadMLP(K, IN, OUT, hidden_dim=16, trunk_layers=3, head_layers=head_layers)
    x = torch.randn(K, B, IN)
    before = net(x)
    assert before.shape == (K, B, OUT)
    with torch.no_grad():
        for p in net.head_parameters():
            p[1].add_(1.0)  # change task 1's head only
    after = net(x)
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[2], before[2])
    assert not torch.allclose(after[1], before[1])


def test_structure_trunk_3_layers_and_stacked_heads() -> None:
    net = MultiHeadMLP(K, IN, OUT, hidden_dim=16, trunk_layers=3, head_layers=2)
    assert [tuple(p.shape) for p in net.trunk_parameters()] == [(16, IN), (16,), (16, 16), (16,), (16, 16), (16,)]
    assert [tuple(p.shape) for p in net.head_parameters()] == [(K, 16, 16), (K, 16), (K, 16, OUT), (K, OUT)]


def test_batched_forward_equals_each_task_through_its_own_layers_and_the_replicated_trunk_too() -> None:
    net = MultiHeadMLP(K, IN, OUT, hidden_dim=16, head_layers=2)
    x = torch.randn(K, B, IN)
    (w0, b0, w1, b1, w2, b2), (h0, c0, h1, c1) = net.trunk_parameters(), net.head_parameters()
    for i in range(K):   # plain torch, one task at a time
        z = torch.relu(torch.relu(torch.relu(x[i] @ w0.T + b0) @ w1.T + b1) @ w2.T + b2)
        torch.testing.assert_close(torch.relu(z @ h0[i] + c0[i]) @ h1[i] + c1[i], net(x)[i])
    replicated = mlp_apply(replicate_for_tasks(net.trunk_parameters(), K), net.head_parameters(), x)
    torch.testing.assert_close(replicated, net(x))


def test_actor_outputs_are_squashed_and_log_prob_matches_torch_distributions() -> None:
    actor = Actor(K, IN, OUT, hidden_dim=16, log_std_bounds=(-5.0, 2.0))
    obs, noise = torch.randn(K, B, IN), torch.randn(K, B, OUT)
    action, log_prob, mean_action = actor(obs, noise)
    assert action.shape == (K, B, OUT) and log_prob.shape == (K, B) and mean_action.shape == (K, B, OUT)
    assert action.abs().max() < 1 and mean_action.abs().max() < 1
    mu, raw_log_std = actor.net(obs).chunk(2, dim=-1)
    log_std = -5.0 + 3.5 * (torch.tanh(raw_log_std) + 1)
    base = torch.distributions.Normal(mu, log_std.exp())
    squashed = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform()])
    pre_tanh = mu + noise * log_std.exp()
    expected = squashed.log_prob(torch.tanh(pre_tanh).clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    torch.testing.assert_close(log_prob, expected, atol=2e-3, rtol=1e-4)


def test_twin_critic_has_two_separate_trunks() -> None:
    critic = TwinCritic(K, IN, OUT, hidden_dim=16)
    names = list(critic.named_trunk_parameters())
    assert len(names) == 12 and names[0].startswith("q1.") and names[6].startswith("q2.")
    q1, q2 = critic(torch.randn(K, B, IN), torch.randn(K, B, OUT))
    assert q1.shape == q2.shape == (K, B)
    assert not torch.allclose(q1, q2)
