"""Multi-head networks: row block i goes through head i only; the per-task functional form under
vmap equals the batched forward."""

import pytest
import torch
from torch.func import vmap

from agents import Actor, MultiHeadMLP, TwinCritic
from agents.networks import mlp_apply

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


def test_per_task_functional_form_under_vmap_equals_batched_forward() -> None:
    net = MultiHeadMLP(K, IN, OUT, hidden_dim=16, head_layers=2)
    x = torch.randn(K, B, IN)
    trunk = net.trunk_parameters()
    per_task = vmap(lambda x_i, *heads_i: mlp_apply(trunk, heads_i, x_i))(x, *net.head_parameters())
    torch.testing.assert_close(per_task, net(x))
    # task i alone, with its own slices, is the same too
    torch.testing.assert_close(mlp_apply(trunk, [p[1] for p in net.head_parameters()], x[1]), net(x)[1])


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
