"""Multi-head networks for multi-task SAC: a shared MLP trunk and one head per task.

The heads of all tasks live in stacked tensors (``weight [k, in, out]``, ``bias [k, out]``), so that the
whole multi-task batch ``[k, b, ...]`` goes through every head at once (one batched matmul) and the
gradient of ``Σ_i L_i`` on a stacked head holds, in slice ``i``, task ``i``'s own gradient.

Every forward pass is written as a pure function of explicit parameter lists (:func:`mlp_apply`,
:func:`policy_apply`, :func:`twin_q_apply`); the modules only own the parameters. The trunk's parameters
are either the parameters themselves (acting, targets) or their per-task replicas from
:func:`mtrl.aggregation.replicate_for_tasks` (the update: the trunk's layers then run through
:func:`mtrl.aggregation.task_linear`, and one backward gives every task's gradient on the trunk — the
Jacobian the aggregator needs).

Initialisation follows the mtrl codebase (Yarats' pytorch_sac): Xavier-uniform weights, zero biases,
each task's head initialised on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.aggregation import task_linear

__all__ = ["MultiHeadLinear", "MultiHeadMLP", "Actor", "TwinCritic", "mlp_apply", "policy_apply", "twin_q_apply"]


class MultiHeadLinear(nn.Module):
    """``k`` independent linear layers, stored stacked: ``y[i] = x[i] @ weight[i] + bias[i]``.

    Input ``[k, ..., in_features]`` (row block ``i`` belongs to task ``i``), output ``[k, ..., out_features]``.
    """

    def __init__(self, num_tasks: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.num_tasks, self.in_features, self.out_features = num_tasks, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_tasks, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(num_tasks, out_features))
        with torch.no_grad():
            for task in range(num_tasks):  # Xavier per task (mtrl's moe_layer init)
                nn.init.xavier_uniform_(self.weight[task])

    def forward(self, x: Tensor) -> Tensor:
        return multi_head_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, in_features={self.in_features}, out_features={self.out_features}"


def multi_head_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x[i] @ weight[i] + bias[i]`` for every task ``i`` (``x [k, b, in]``, ``weight [k, in, out]``, ``bias [k, out]``)."""
    return torch.baddbmm(bias.unsqueeze(-2), x, weight)


def mlp_apply(trunk: Sequence[Tensor], heads: Sequence[Tensor], x: Tensor) -> Tensor:
    """The multi-head MLP as a pure function.

    Args:
        trunk: ``[W_0, b_0, W_1, b_1, ...]`` of the shared ``nn.Linear`` layers (``W`` is ``[out, in]``), or
            their per-task replicas (``[k, out, in]``, ``[k, out]``; :func:`mtrl.aggregation.replicate_for_tasks`);
            every trunk layer is followed by a ReLU.
        heads: ``[W_0, b_0, ...]`` of the head layers, stacked over tasks (``W`` is ``[k, in, out]``);
            ReLU between head layers, none after the last.
        x: ``[k, b, in]``, row block ``i`` task ``i``'s.
    """
    for weight, bias in zip(trunk[0::2], trunk[1::2]):
        x = F.relu(task_linear(x, weight, bias) if weight.ndim == 3 else F.linear(x, weight, bias))
    last = len(heads) // 2 - 1
    for layer, (weight, bias) in enumerate(zip(heads[0::2], heads[1::2])):
        x = multi_head_linear(x, weight, bias)
        if layer < last:
            x = F.relu(x)
    return x


class MultiHeadMLP(nn.Module):
    """Shared trunk (``trunk_layers`` × ``Linear + ReLU`` of width ``hidden_dim``) and per-task heads.

    Head depth 1 is one ``Linear(hidden, out)`` per task (Meta-World+); depth 2 adds a hidden
    ``Linear(hidden, hidden) + ReLU`` per task before it (the mtrl codebase's multi-head SAC).
    """

    def __init__(self, num_tasks: int, in_features: int, out_features: int, hidden_dim: int = 400,
                 trunk_layers: int = 3, head_layers: int = 1) -> None:
        super().__init__()
        if trunk_layers < 1 or head_layers < 1:
            raise ValueError(f"trunk_layers and head_layers must be >= 1, got {trunk_layers} and {head_layers}.")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(trunk_layers):
            linear = nn.Linear(width, hidden_dim)
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()]
            width = hidden_dim
        self.trunk = nn.Sequential(*layers)
        widths = [hidden_dim] * head_layers + [out_features]
        self.heads = nn.ModuleList(
            MultiHeadLinear(num_tasks, widths[i], widths[i + 1]) for i in range(head_layers)
        )

    def trunk_parameters(self) -> list[Tensor]:
        return list(self.trunk.parameters())

    def head_parameters(self) -> list[Tensor]:
        return list(self.heads.parameters())

    def forward(self, x: Tensor) -> Tensor:
        """``x [k, b, in] -> [k, b, out]``, rows of block ``i`` through head ``i``."""
        return mlp_apply(self.trunk_parameters(), self.head_parameters(), x)


# ----------------------------------------------------------------------------------------- policy
def policy_apply(trunk: Sequence[Tensor], heads: Sequence[Tensor], obs: Tensor, noise: Tensor,
                 log_std_bounds: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """Tanh-squashed Gaussian policy as a pure function (reparameterised with the given ``noise``).

    Returns ``(action, log_prob, mean_action)``: ``action = tanh(mu + std * noise)`` ``[..., b, A]``,
    its log-probability ``[..., b]`` (with the tanh change of variables), and ``tanh(mu)``.
    """
    mu, log_std = mlp_apply(trunk, heads, obs).chunk(2, dim=-1)
    # mtrl codebase: squash log σ smoothly into [log_std_min, log_std_max] instead of clamping.
    low, high = log_std_bounds
    log_std = low + 0.5 * (high - low) * (torch.tanh(log_std) + 1.0)
    pre_tanh = mu + noise * log_std.exp()
    gaussian_log_prob = (-0.5 * noise.pow(2) - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * noise.shape[-1]
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)): exact and stable, where the mtrl codebase
    # and SB3 use log(1 - tanh(u)^2 + 1e-6).
    squash_correction = (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
    return torch.tanh(pre_tanh), gaussian_log_prob - squash_correction, torch.tanh(mu)


class Actor(nn.Module):
    """Multi-head tanh-Gaussian policy: one shared trunk, per-task heads that output ``(mu, log σ)``."""

    def __init__(self, num_tasks: int, obs_dim: int, action_dim: int, hidden_dim: int = 400,
                 trunk_layers: int = 3, head_layers: int = 1,
                 log_std_bounds: tuple[float, float] = (-20.0, 2.0)) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.log_std_bounds = (float(log_std_bounds[0]), float(log_std_bounds[1]))
        self.net = MultiHeadMLP(num_tasks, obs_dim, 2 * action_dim, hidden_dim, trunk_layers, head_layers)

    def named_trunk_parameters(self) -> dict[str, Tensor]:
        return {f"net.trunk.{name}": p for name, p in self.net.trunk.named_parameters()}

    def trunk_parameters(self) -> list[Tensor]:
        return self.net.trunk_parameters()

    def head_parameters(self) -> list[Tensor]:
        return self.net.head_parameters()

    def forward(self, obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``obs [k, b, obs_dim]``, ``noise [k, b, A]`` -> ``(action, log_prob, mean_action)``."""
        return policy_apply(self.trunk_parameters(), self.head_parameters(), obs, noise, self.log_std_bounds)


# ----------------------------------------------------------------------------------------- critic
def twin_q_apply(trunk: Sequence[Tensor], heads: Sequence[Tensor], obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
    """Both Q-values as a pure function: ``trunk`` and ``heads`` hold Q1's parameters, then Q2's.

    Returns ``(q1, q2)``, each ``[..., b]``.
    """
    x = torch.cat([obs, action], dim=-1)
    half_trunk, half_heads = len(trunk) // 2, len(heads) // 2
    q1 = mlp_apply(trunk[:half_trunk], heads[:half_heads], x).squeeze(-1)
    q2 = mlp_apply(trunk[half_trunk:], heads[half_heads:], x).squeeze(-1)
    return q1, q2


class TwinCritic(nn.Module):
    """Clipped double-Q critic: two multi-head Q-networks, each with its **own** trunk and heads.

    As in the mtrl codebase (``Critic.Q1``, ``Critic.Q2``) the two Q-functions share nothing, so the
    "shared parameters" of the multi-task critic are the two trunks together, and task ``i``'s critic
    loss ``MSE(Q1_i) + MSE(Q2_i)`` has one gradient row over both.
    """

    def __init__(self, num_tasks: int, obs_dim: int, action_dim: int, hidden_dim: int = 400,
                 trunk_layers: int = 3, head_layers: int = 1) -> None:
        super().__init__()
        self.q1 = MultiHeadMLP(num_tasks, obs_dim + action_dim, 1, hidden_dim, trunk_layers, head_layers)
        self.q2 = MultiHeadMLP(num_tasks, obs_dim + action_dim, 1, hidden_dim, trunk_layers, head_layers)

    def named_trunk_parameters(self) -> dict[str, Tensor]:
        return {f"{q}.trunk.{name}": p for q, net in (("q1", self.q1), ("q2", self.q2))
                for name, p in net.trunk.named_parameters()}

    def trunk_parameters(self) -> list[Tensor]:
        return self.q1.trunk_parameters() + self.q2.trunk_parameters()

    def head_parameters(self) -> list[Tensor]:
        return self.q1.head_parameters() + self.q2.head_parameters()

    def forward(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """``obs [k, b, obs_dim]``, ``action [k, b, A]`` -> ``(q1, q2)``, each ``[k, b]``."""
        return twin_q_apply(self.trunk_parameters(), self.head_parameters(), obs, action)
