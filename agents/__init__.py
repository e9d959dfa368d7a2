"""Multi-task SAC with per-task heads, whose per-task losses go through a gradient aggregator.

``MultiTaskSAC`` (the agent), ``SACConfig`` (its hyperparameters), ``ReplayBuffer`` and ``Batch``
(stratified per-task sampling on the training device); the networks are in :mod:`agents.networks`.
"""

from agents.networks import Actor, MultiHeadLinear, MultiHeadMLP, TwinCritic
from agents.replay import Batch, ReplayBuffer
from agents.sac import MultiTaskSAC, SACConfig, soft_q_target

__all__ = ["MultiTaskSAC", "SACConfig", "ReplayBuffer", "Batch", "soft_q_target",
           "Actor", "TwinCritic", "MultiHeadMLP", "MultiHeadLinear"]
