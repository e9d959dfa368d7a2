"""Multi-task SAC with per-task heads, whose per-task losses go through a gradient aggregator.

``MultiTaskSAC`` (the agent), ``SACConfig`` (its hyperparameters), ``ReplayBuffer`` and ``Batch``
(stratified per-task sampling on the training device). The SAC maths is :mod:`agents.sac`, the
networks :mod:`agents.networks`, and how ``SACConfig.compile`` executes the update (eagerly or as
CUDA-graph replays) :mod:`agents.execution`.
"""

from agents.networks import Actor, MultiHeadLinear, MultiHeadMLP, TwinCritic
from agents.replay import Batch, ReplayBuffer
from agents.sac import COMPILE_MODES, MultiTaskSAC, SACConfig, soft_q_target

__all__ = ["MultiTaskSAC", "SACConfig", "COMPILE_MODES", "ReplayBuffer", "Batch", "soft_q_target",
           "Actor", "TwinCritic", "MultiHeadMLP", "MultiHeadLinear"]
