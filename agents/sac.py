"""Multi-head soft actor-critic whose per-task losses go through a gradient aggregator.

One :meth:`MultiTaskSAC.update` reads like SAC's pseudo-code, once per network:

1. **Critic.** Soft Bellman target per task with the target critics and the task's own temperature,
   ``y = r + γ (1 − terminated) (min(Q1', Q2')(s', a') − α_i log π(a'|s'))``, ``a' ~ π(·|s')``.
   Task ``i``'s loss is ``L_i = MSE(Q1_i, y) + MSE(Q2_i, y)`` over its own rows.
2. **Actor.** ``L_i = mean(α_i log π(a|s) − min(Q1, Q2)(s, a))``, ``a ~ π(·|s)``, with the critic just updated.
3. **Temperatures.** One ``log α_i`` per task, ``J_i = mean(α_i (−log π − H̄))`` with ``H̄ = −|A|``;
   each task's temperature follows its own loss (no aggregation).
4. **Targets.** Polyak averaging of the critic, ``θ' ← (1 − τ) θ' + τ θ``.

The ``k`` critic losses and the ``k`` actor losses each go through their own aggregator instance, in
one aggregated step per network (:meth:`MultiTaskSAC._optimize`): the losses are computed with the
trunk applied through per-task replicas of its parameters, so one backward of ``Σ_i L_i``
(:func:`mtrl.aggregation.task_partitioned_gradients`) gives the ``[k, n]`` Jacobian on the trunk and
each head its own task's gradient; :func:`mtrl.aggregation.mtl_backward` then writes ``weights @ J``
into the trunk's ``.grad`` and each task's **unweighted** gradient into its own head
(``scale_task_gradients=False``). The actor loss also returns its samples' entropy estimate, which the
temperature loss uses (no second actor forward). A loss left out of ``SACConfig.aggregate`` is minimised
as the plain mean over tasks, ``(1/k) Σ_i L_i``.

The update never moves data to the host: it returns detached ``[k]`` device tensors. It runs in
phases (sample, critic, actor and temperatures, targets), each a plain function of tensors that
:class:`agents.execution.PhaseRunner` runs eagerly or as a CUDA-graph replay (``SACConfig.compile``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.execution import HostTransfer, PhaseRunner, capture_blocker, resolve_compile_mode
from agents.networks import Actor, TwinCritic, policy_apply, twin_q_apply
from agents.replay import Batch, ReplayBuffer
from mtrl.aggregation import (Aggregator, TaskStats, mtl_backward, replicate_for_tasks,
                              task_partitioned_gradients)

__all__ = ["SACConfig", "MultiTaskSAC", "soft_q_target", "critic_losses", "actor_losses", "temperature_losses",
           "COMPILE_MODES"]

_AGGREGATABLE = ("critic", "actor")
#: Values of ``SACConfig.compile``.
COMPILE_MODES = ("auto", "none", "cudagraphs")


@dataclass
class SACConfig:
    """SAC hyperparameters; defaults from the PIVRG paper (Sec. 5 / App.) and the mtrl codebase
    (facebookresearch/mtrl, ``config/agent/state_sac.yaml`` and ``config/agent/components/metaworld_*.yaml``)."""

    hidden_dim: int = 400          # paper and mtrl metaworld_actor.yaml: width 400
    trunk_layers: int = 3          # paper: 3 × 400 shared layers
    head_layers: int = 1           # 1 = one linear layer per task (Meta-World+); 2 = mtrl's 2-layer heads
    gamma: float = 0.99            # paper; mtrl discount 0.99
    tau: float = 0.005             # paper; mtrl critic_tau 0.005
    lr: float = 3e-4               # actor, critic and temperature Adam lr: paper; mtrl optimizers/metaworld_*.yaml
    init_temperature: float = 1.0  # mtrl state_sac.yaml init_temperature 1.0 (α_i = 1 at the start)
    batch_size: int = 1280         # paper: 1280 in all = 128 per task on MT10; must be divisible by k
    target_entropy: float | None = None  # None -> −|A| (mtrl, SB3 "auto")
    aggregate: tuple[str, ...] = ("critic", "actor")  # losses that go through their aggregator
    actor_update_every: int = 1    # mtrl state_sac.yaml actor_update_freq 1 (temperatures update with the actor)
    target_update_every: int = 1   # mtrl state_sac.yaml critic_target_update_freq 1 (2 only in pixel-based configs)
    log_std_bounds: tuple[float, float] = (-20.0, 2.0)  # mtrl metaworld_actor.yaml log_std_bounds [-20, 2]
    # The temperature loss: "alpha" = α_i · (−log π − H̄) (mtrl codebase, CleanRL); "log_alpha" = log α_i · (...)
    # (SB3, Meta-World+). Same fixed point; log α moves by the gap itself instead of α times the gap.
    temperature_loss: str = "alpha"
    # Clip the norm of the trunk's aggregated gradient before each step. None: no clipping (mtrl codebase);
    # 1.0 reproduces the MT10 code of Nash-MTL / FAMO / FairGrad (`max_norm` of their aggregators).
    max_grad_norm: float | None = None
    # How the update runs (LeanRL's pattern: the same update function, wrapped from outside).
    # auto: CUDA graphs on CUDA, eager on the CPU; none: eager;
    # cudagraphs: each update phase captured once in a CUDA graph and replayed (CUDA only).
    compile: str = "auto"

    def __post_init__(self) -> None:
        self.aggregate = tuple(self.aggregate)
        self.log_std_bounds = tuple(float(bound) for bound in self.log_std_bounds)  # type: ignore[assignment]
        for name in ("hidden_dim", "trunk_layers", "batch_size", "actor_update_every", "target_update_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SACConfig: `{name}` should be a positive integer. Found `{name} = {value!r}`.")
        if self.head_layers not in (1, 2):
            raise ValueError(f"SACConfig: `head_layers` should be 1 or 2. Found `head_layers = {self.head_layers!r}`.")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"SACConfig: `gamma` should be in [0, 1). Found `gamma = {self.gamma!r}`.")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"SACConfig: `tau` should be in (0, 1]. Found `tau = {self.tau!r}`.")
        for name in ("lr", "init_temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"SACConfig: `{name}` should be a positive number. Found `{name} = {value!r}`.")
        if self.temperature_loss not in ("alpha", "log_alpha"):
            raise ValueError(f"SACConfig: `temperature_loss` should be 'alpha' or 'log_alpha'. "
                             f"Found `temperature_loss = {self.temperature_loss!r}`.")
        unknown = [name for name in self.aggregate if name not in _AGGREGATABLE]
        if unknown or len(set(self.aggregate)) != len(self.aggregate):
            raise ValueError(f"SACConfig: `aggregate` should hold distinct names from {_AGGREGATABLE}. "
                             f"Found `aggregate = {self.aggregate!r}`.")
        if self.max_grad_norm is not None and not (
                isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"SACConfig: `max_grad_norm` should be a positive number or null. "
                             f"Found `max_grad_norm = {self.max_grad_norm!r}`.")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"SACConfig: `compile` should be one of {COMPILE_MODES}. Found `compile = {self.compile!r}`.")
        low, high = self.log_std_bounds
        if not low < high:
            raise ValueError(f"SACConfig: `log_std_bounds` should be (low, high) with low < high. Found {self.log_std_bounds!r}.")


def soft_q_target(reward: Tensor, done: Tensor, next_q1: Tensor, next_q2: Tensor, next_log_prob: Tensor,
                  alpha: Tensor, gamma: float) -> Tensor:
    """``r + γ (1 − done) (min(Q1', Q2') − α_i log π(a'|s'))`` for ``[k, b]`` inputs and ``alpha [k]``.

    ``done`` must mark termination only: a time-limit truncation still bootstraps.
    """
    next_value = torch.min(next_q1, next_q2) - alpha.unsqueeze(-1) * next_log_prob
    return reward + gamma * (1.0 - done) * next_value


def critic_losses(q1: Tensor, q2: Tensor, target_q: Tensor) -> Tensor:
    """Per-task critic losses ``L_i = MSE(Q1_i, y_i) + MSE(Q2_i, y_i)`` (``[k, b]`` inputs, ``[k]`` out)."""
    return (q1 - target_q).pow(2).mean(-1) + (q2 - target_q).pow(2).mean(-1)


def actor_losses(log_prob: Tensor, q1: Tensor, q2: Tensor, alpha: Tensor) -> Tensor:
    """Per-task actor losses ``L_i = mean(α_i log π(a|s) − min(Q1, Q2)(s, a))`` (``alpha [k]``)."""
    return (alpha.unsqueeze(-1) * log_prob - torch.min(q1, q2)).mean(-1)


def temperature_losses(log_alpha: Tensor, entropy: Tensor, target_entropy: float, form: str) -> Tensor:
    """Per-task temperature losses ``α_i (H_i − H̄)`` (``form="alpha"``: the mtrl codebase, CleanRL) or
    ``log α_i (H_i − H̄)`` (``"log_alpha"``: SB3, Meta-World+), ``H_i`` the detached entropy estimate
    −mean log π of task ``i``'s samples. Both have their fixed point where ``H_i = H̄``; with ``log α`` the
    gradient on ``log α_i`` is the gap itself rather than ``α_i`` times it."""
    temperature = log_alpha.exp() if form == "alpha" else log_alpha
    return temperature * (entropy - target_entropy)


class MultiTaskSAC:
    """Multi-head SAC for ``k`` tasks with per-task temperatures and aggregated trunk updates.

    Args:
        obs_dim: observation size (with the task one-hot, if the environment appends it).
        action_dim: ``|A|``; actions are tanh-squashed into ``[-1, 1]`` (Meta-World's action space).
        num_tasks: ``k``; row block ``i`` of every batch, and row ``i`` of :meth:`act`'s input, is task ``i``.
        config: hyperparameters.
        critic_aggregator, actor_aggregator: two *separate* instances from
            :func:`mtrl.aggregation.make` (each keeps its own state). May be ``None`` for a loss that is
            not in ``config.aggregate``.
        device: the training device (CPU or CUDA); the networks are float32.
        seed: seeds the agent's own random generators (policy noise in updates and in :meth:`act`);
            the networks' initialisation uses torch's global generator, so seed that too.
    """

    def __init__(self, obs_dim: int, action_dim: int, num_tasks: int, config: SACConfig | None = None,
                 critic_aggregator: Aggregator | None = None, actor_aggregator: Aggregator | None = None,
                 device: torch.device | str = "cpu", seed: int | None = None) -> None:
        config = SACConfig() if config is None else config
        _check_agent_arguments(obs_dim, action_dim, num_tasks, config, critic_aggregator, actor_aggregator)
        self.obs_dim, self.action_dim, self.num_tasks, self.config = obs_dim, action_dim, num_tasks, config
        self.device = torch.device(device)
        self.compile_mode = resolve_compile_mode(config.compile, self.device)
        self.runner = PhaseRunner(self.compile_mode)
        self.transfer = HostTransfer(self.device)
        self.critic_aggregator, self.actor_aggregator = critic_aggregator, actor_aggregator
        for aggregator in (critic_aggregator, actor_aggregator):
            if self.compile_mode != "none" and hasattr(aggregator, "deferred_checks"):
                # Validation without host syncs; errors surface at the next Aggregator.check() (log time).
                aggregator.deferred_checks = True
        self.target_entropy = float(-action_dim if config.target_entropy is None else config.target_entropy)

        sizes = dict(hidden_dim=config.hidden_dim, trunk_layers=config.trunk_layers, head_layers=config.head_layers)
        self.actor = Actor(num_tasks, obs_dim, action_dim, log_std_bounds=config.log_std_bounds, **sizes)
        self.critic = TwinCritic(num_tasks, obs_dim, action_dim, **sizes)
        self.actor.to(device=self.device, dtype=torch.float32)
        self.critic.to(device=self.device, dtype=torch.float32)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(
            torch.full((num_tasks,), math.log(config.init_temperature), dtype=torch.float32, device=self.device))

        # capturable (CUDA graphs): Adam's step counter lives on the device, so that a step neither syncs nor
        # freezes in a graph. fused: one kernel per parameter group, on the CPU and on CUDA.
        adam = dict(lr=config.lr, capturable=self.compile_mode == "cudagraphs", fused=True)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), **adam)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), **adam)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], **adam)

        # Two streams, so that acting (and evaluating) does not shift the noise the updates draw.
        self.update_generator = torch.Generator(device=self.device)
        self.act_generator = torch.Generator(device=self.device)
        if seed is None:
            self.update_generator.seed()
            self.act_generator.seed()
        else:
            self.update_generator.manual_seed(int(seed))
            self.act_generator.manual_seed(int(seed) + 1)

        self.updates = 0  # gradient updates done; the aggregators' TaskStats.step
        self._last_actor: dict[str, Tensor] = {}
        # Built once: the parameter lists, the trunks' per-task replicas and the critic as the actor's loss
        # sees it (no gradient) are views of the parameters' storage, which every step updates in place.
        self._parts = {name: _NetworkParts.of(net, optimizer, aggregator, num_tasks) for name, net, optimizer, aggregator
                       in (("critic", self.critic, self.critic_optimizer, critic_aggregator),
                           ("actor", self.actor, self.actor_optimizer, actor_aggregator))}
        self._frozen_critic = ([p.detach() for p in self.critic.trunk_parameters()],
                               [p.detach() for p in self.critic.head_parameters()])

    # ---------------------------------------------------------------------------------- properties
    @property
    def batch_per_task(self) -> int:
        """Rows per task in each update: ``config.batch_size // num_tasks``."""
        return self.config.batch_size // self.num_tasks

    @property
    def alpha(self) -> Tensor:
        """Current temperatures ``α_i`` ``[k]`` (detached)."""
        return self.log_alpha.detach().exp()

    # -------------------------------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor, deterministic: bool = False) -> np.ndarray:
        """Actions for ``obs [k, obs_dim]`` (row ``i`` through head ``i``) or ``[k, n, obs_dim]``.

        ``deterministic`` returns ``tanh(mu)`` (evaluation) and draws no noise. On CUDA, host
        observations go up and actions come back through page-locked buffers, one copy each way.
        """
        obs = self.transfer.to_device(obs)
        if obs.ndim not in (2, 3) or obs.shape[0] != self.num_tasks or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"MultiTaskSAC.act: obs should be [k={self.num_tasks}, {self.obs_dim}] (row i is task i) "
                             f"or [k, n, {self.obs_dim}]; got {tuple(obs.shape)}.")
        rows = obs if obs.ndim == 3 else obs.unsqueeze(1)  # [k, n, obs_dim]
        noise_shape = (*rows.shape[:-1], self.action_dim)
        if deterministic:
            noise = torch.zeros(noise_shape, device=self.device)
        else:
            noise = torch.randn(noise_shape, generator=self.act_generator, device=self.device)
        action, _, mean_action = self.actor(rows, noise)
        chosen = (mean_action if deterministic else action).reshape(*obs.shape[:-1], self.action_dim)
        return self.transfer.to_host(chosen)

    # ---------------------------------------------------------------------------------- the update
    def update(self, batch: Batch | ReplayBuffer, performance: Tensor | None = None) -> dict[str, Tensor]:
        """One gradient step of the critic, then (every ``actor_update_every``) the actor and the
        temperatures, then (every ``target_update_every``) the target critic.

        Args:
            batch: a stratified :class:`~agents.replay.Batch` (``[k, b, ...]``) on the agent's device,
                or the :class:`~agents.replay.ReplayBuffer` itself: the agent then samples
                ``batch_per_task`` rows per task with device-side indices, inside the captured region
                under ``compile=cudagraphs``.
            performance: ``[k]`` per-task performance drops Δm in percent for aggregators that read
                them (PIVRG); ``None`` means Δm = 0.

        Returns:
            Detached ``[k]`` device tensors: ``loss/critic``, ``loss/actor``, ``loss/alpha``,
            ``weights/critic``, ``weights/actor``, ``alpha`` (after this step), ``entropy``
            (``−mean log π``). On steps that skip the actor, the actor entries repeat the last ones.
        """
        if isinstance(batch, ReplayBuffer):
            # Its CUDA graph bakes in the buffer's storage, so each buffer gets its own.
            batch = self.runner("sample", self._sample_phase, batch, variant=id(batch),
                                generators=(self.update_generator, batch.generator))
        k, _ = self._check_batch(batch)
        if performance is not None:
            performance = torch.as_tensor(performance, dtype=torch.float32, device=self.device)
            if performance.shape != (k,):
                raise ValueError(f"MultiTaskSAC.update: performance should be a [{k}] tensor of Δm (one per task), "
                                 f"got shape {tuple(performance.shape)}.")
        self.updates += 1
        step = self.updates
        critic = self.runner.own(self._phase("critic", self._critic_phase, batch.obs, batch.action, batch.reward,
                                             batch.next_obs, batch.done, performance))
        if step % self.config.actor_update_every == 0 or not self._last_actor:
            self._last_actor = self.runner.own(self._phase("actor", self._actor_phase, batch.obs, critic["alpha"],
                                                           performance))
        if step % self.config.target_update_every == 0:
            self.runner("target", self._target_phase, generators=(self.update_generator,))
        return {"loss/critic": critic["loss/critic"], "weights/critic": critic["weights/critic"], **self._last_actor,
                "alpha": self.alpha}

    def _phase(self, name: str, phase: Callable[..., Any], *args: Any) -> Any:
        """An aggregated phase through the runner: one CUDA graph per input layout (Δm given or not), kept
        eager when its aggregator cannot be captured."""
        blocker = None
        if name in self.config.aggregate:
            blocker = capture_blocker(self.critic_aggregator if name == "critic" else self.actor_aggregator)
        return self.runner(name, phase, *args, variant=tuple(arg is None for arg in args),
                           generators=(self.update_generator,), blocker=blocker)

    # ------------------------------------------------------------------ the phases of one update
    # Each is a function of tensors that reads like the pseudo-code above; the runner executes it eagerly,
    # or as a CUDA-graph replay (agents.execution). Outputs may be a graph's static buffers.
    def _sample_phase(self, buffer: ReplayBuffer) -> Batch:
        return buffer.sample(self.batch_per_task)

    def _critic_phase(self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, done: Tensor,
                      performance: Tensor | None) -> dict[str, Tensor]:
        """1. The critic's aggregated step; returns its losses, weights and the temperatures it used."""
        batch = Batch(obs, action, reward, next_obs, done)
        alpha = self.alpha  # [k], the temperatures before this step's temperature update
        target_q = self.compute_target_q(batch, alpha)                            # [k, b]
        losses, weights, _ = self._optimize(
            "critic", lambda trunk: (self.critic_losses(obs, action, target_q, trunk), None), performance)
        return {"loss/critic": losses, "weights/critic": weights, "alpha": alpha}

    def _actor_phase(self, obs: Tensor, alpha: Tensor, performance: Tensor | None) -> dict[str, Tensor]:
        """2. The actor's aggregated step against the updated critic, then the temperatures."""
        k, b = obs.shape[:2]
        noise = torch.randn((k, b, self.action_dim), generator=self.update_generator, device=self.device)
        losses, weights, entropy = self._optimize(
            "actor", lambda trunk: self.actor_losses(obs, noise, alpha, trunk), performance)
        alpha_losses = temperature_losses(self.log_alpha, entropy, self.target_entropy, self.config.temperature_loss)
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_losses.sum().backward()  # each log α_i gets its own task's gradient
        self.alpha_optimizer.step()
        return {"loss/actor": losses, "weights/actor": weights, "loss/alpha": alpha_losses.detach(), "entropy": entropy}

    @torch.no_grad()
    def _target_phase(self) -> None:
        """3. Polyak averaging of the target critic, θ' ← θ' + τ (θ − θ'), in place (one fused kernel)."""
        torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.config.tau)

    @torch.no_grad()
    def compute_target_q(self, batch: Batch, alpha: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """The soft Bellman target ``[k, b]`` (:func:`soft_q_target`) with ``a' ~ π(·|s')``.

        ``noise [k, b, A]`` fixes the reparameterisation noise of ``a'`` (drawn from the update
        generator by default); ``alpha`` defaults to the current temperatures.
        """
        alpha = self.alpha if alpha is None else alpha
        if noise is None:
            noise = torch.randn((*batch.reward.shape, self.action_dim), generator=self.update_generator,
                                device=self.device)
        next_action, next_log_prob, _ = self.actor(batch.next_obs, noise)
        next_q1, next_q2 = self.critic_target(batch.next_obs, next_action)
        return soft_q_target(batch.reward, batch.done, next_q1, next_q2, next_log_prob, alpha, self.config.gamma)

    # --------------------------------------------------------------------------- per-task losses
    def critic_losses(self, obs: Tensor, action: Tensor, target_q: Tensor,
                      trunk: Sequence[Tensor] | None = None) -> Tensor:
        """The ``[k]`` critic losses (:func:`critic_losses`) on ``[k, b, ...]`` rows; ``trunk``: the critic's
        trunk parameters (default) or their per-task replicas (:func:`~mtrl.aggregation.replicate_for_tasks`)."""
        parts = self._parts["critic"]
        q1, q2 = twin_q_apply(parts.trunk if trunk is None else trunk, parts.heads, obs, action)
        return critic_losses(q1, q2, target_q)

    def actor_losses(self, obs: Tensor, noise: Tensor, alpha: Tensor,
                     trunk: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """The ``[k]`` actor losses (:func:`actor_losses`) with ``a = tanh(μ + σ · noise)`` against the critic
        (no gradient into it), and the samples' entropy estimate −mean log π ``[k]`` (detached).
        ``trunk`` as in :meth:`critic_losses`, for the actor."""
        parts = self._parts["actor"]
        action, log_prob, _ = policy_apply(parts.trunk if trunk is None else trunk, parts.heads, obs, noise,
                                           self.actor.log_std_bounds)
        q1, q2 = twin_q_apply(*self._frozen_critic, obs, action)
        return actor_losses(log_prob, q1, q2, alpha), -log_prob.detach().mean(-1)

    # -------------------------------------------------------------------------- the aggregated step
    def _optimize(self, network: str, losses_of: Callable[[Sequence[Tensor]], tuple[Tensor, Tensor | None]],
                  performance: Tensor | None, step: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """One optimizer step of ``network`` on its ``k`` losses; returns (losses, weights, aux), detached.

        ``losses_of(trunk) -> (losses [k], aux)`` computes the network's losses with the given trunk
        parameters (``aux``: a statistic of the same forward, or ``None``). ``step`` (the aggregators'
        ``TaskStats.step``) defaults to :attr:`updates`.

        The aggregated step: the trunk runs through per-task replicas, one backward gives the Jacobian
        ``J`` on the trunk and each head its task's gradient, the aggregator turns ``J`` into weights, and
        the trunk gets ``weights @ J`` (clipped to ``max_grad_norm``).
        """
        parts = self._parts[network]
        trunk, heads, optimizer, aggregator = parts.trunk, parts.heads, parts.optimizer, parts.aggregator
        optimizer.zero_grad(set_to_none=True)
        if network not in self.config.aggregate:
            losses, aux = losses_of(trunk)                                               # [k]
            losses.mean().backward()
            optimizer.step()
            return losses.detach(), torch.full((self.num_tasks,), 1.0 / self.num_tasks, device=self.device), aux

        losses, aux = losses_of(parts.replicas)
        jacobian, head_gradients = task_partitioned_gradients(losses, parts.replicas, heads)
        weights = mtl_backward(losses, trunk, aggregator, self._task_stats(losses, performance, step),
                               jacobian=jacobian, task_params=heads, task_gradients=head_gradients,
                               scale_task_gradients=False, max_norm=self.config.max_grad_norm)
        optimizer.step()
        if aggregator.learns_from_steps:
            # Methods that learn from the step's effect (FAMO) get the same batch's losses after it.
            with torch.no_grad():
                aggregator.after_step(self._task_stats(losses_of(trunk)[0], performance, step))
        return losses.detach(), weights, aux

    def _task_stats(self, losses: Tensor, performance: Tensor | None, step: int | None) -> TaskStats:
        # Under a CUDA graph the step is read once, at capture (agents.execution).
        return TaskStats(losses.detach(), performance, self.updates if step is None else step)

    # --------------------------------------------------------------------------------------- checks
    def _check_batch(self, batch: Batch) -> tuple[int, int]:
        if batch.reward.ndim != 2:
            raise ValueError(f"MultiTaskSAC.update: batch.reward should be [k, b], got {tuple(batch.reward.shape)}; "
                             f"sample with ReplayBuffer.sample(batch_per_task).")
        k, b = batch.reward.shape
        if k != self.num_tasks:
            raise ValueError(f"MultiTaskSAC.update: the batch has {k} tasks, the agent {self.num_tasks}.")
        expected = {"obs": (k, b, self.obs_dim), "action": (k, b, self.action_dim), "next_obs": (k, b, self.obs_dim),
                    "done": (k, b)}
        for name, shape in expected.items():
            if tuple(getattr(batch, name).shape) != shape:
                raise ValueError(f"MultiTaskSAC.update: batch.{name} should be {shape}, got "
                                 f"{tuple(getattr(batch, name).shape)}.")
        return k, b

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: networks, targets, optimizers, temperatures, both
        aggregators' state, the random generators and the update counter."""
        return {
            "dims": {"obs_dim": self.obs_dim, "action_dim": self.action_dim, "num_tasks": self.num_tasks},
            "config": asdict(self.config),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "critic_aggregator": None if self.critic_aggregator is None else self.critic_aggregator.state_dict(),
            "actor_aggregator": None if self.actor_aggregator is None else self.actor_aggregator.state_dict(),
            "update_generator": self.update_generator.get_state(),
            "act_generator": self.act_generator.get_state(),
            "updates": self.updates,
            "last_actor": {name: value.clone() for name, value in self._last_actor.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        dims = {"obs_dim": self.obs_dim, "action_dim": self.action_dim, "num_tasks": self.num_tasks}
        if state.get("dims") != dims:
            raise ValueError(f"MultiTaskSAC.load_state_dict: the checkpoint is for {state.get('dims')}, this agent is {dims}.")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        for name, aggregator in (("critic", self.critic_aggregator), ("actor", self.actor_aggregator)):
            saved = state[f"{name}_aggregator"]
            if aggregator is not None and saved is not None:
                aggregator.load_state_dict(saved)
        self.update_generator.set_state(state["update_generator"])
        self.act_generator.set_state(state["act_generator"])
        self.updates = int(state["updates"])
        self._last_actor = {name: value.to(self.device).clone() for name, value in state["last_actor"].items()}
        # The optimizers hold new state tensors now: graphs captured before would update the old ones.
        self.runner.reset()


@dataclass
class _NetworkParts:
    """What one aggregated step of a network uses, looked up once: its trunk and head parameters, the trunk's
    per-task replicas (:func:`~mtrl.aggregation.replicate_for_tasks`), its optimizer and its aggregator."""

    trunk: list[Tensor]
    heads: list[Tensor]
    replicas: list[Tensor]
    optimizer: torch.optim.Optimizer
    aggregator: Aggregator | None

    @classmethod
    def of(cls, network: Actor | TwinCritic, optimizer: torch.optim.Optimizer, aggregator: Aggregator | None,
           num_tasks: int) -> _NetworkParts:
        trunk = network.trunk_parameters()
        return cls(trunk, network.head_parameters(), replicate_for_tasks(trunk, num_tasks), optimizer, aggregator)


def _check_agent_arguments(obs_dim: int, action_dim: int, num_tasks: int, config: SACConfig,
                           critic_aggregator: Aggregator | None, actor_aggregator: Aggregator | None) -> None:
    """What :class:`MultiTaskSAC` needs of its arguments beyond :class:`SACConfig`'s own checks."""
    for name, value in (("obs_dim", obs_dim), ("action_dim", action_dim), ("num_tasks", num_tasks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"MultiTaskSAC: `{name}` should be a positive integer. Found `{name} = {value!r}`.")
    if config.batch_size % num_tasks != 0:
        raise ValueError(
            f"batch_size = {config.batch_size} is not divisible by the number of tasks k = {num_tasks}: "
            f"the replay buffer samples batch_size / k rows per task. Use a multiple of {num_tasks} "
            f"(the paper uses 128 per task, i.e. batch_size = {128 * num_tasks})."
        )
    for name, aggregator in (("critic", critic_aggregator), ("actor", actor_aggregator)):
        if name in config.aggregate and not isinstance(aggregator, Aggregator):
            raise ValueError(f"MultiTaskSAC: config.aggregate includes '{name}' but {name}_aggregator is "
                             f"{aggregator!r}; pass an instance from mtrl.aggregation.make(...).")
    if critic_aggregator is not None and critic_aggregator is actor_aggregator:
        raise ValueError("MultiTaskSAC: critic_aggregator and actor_aggregator are the same object; "
                         "each network needs its own instance (stateful aggregators keep per-network state).")
