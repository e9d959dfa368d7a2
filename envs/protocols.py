"""Evaluation protocols for Meta-World multi-task RL: episode length, goals, evaluation and reward scale.

Two protocols, one file each under ``configs/protocol/``:

``metaworld`` (default): today's Meta-World convention (metaworld 3.x, ``gym.make_vec("Meta-World/MT10")``):
500-step episodes, each reset draws one of 50 pre-sampled goals of the task, the v2 reward as the
environment returns it.

``mtrl``: the protocol of the facebookresearch/mtrl codebase, behind the MT10 numbers of the CARE paper
that the PIVRG paper's Table 4 reuses: one fixed goal per task (mtrl draws one of the 50 tasks per
environment once and shares it between the training and evaluation environments), 150-step episodes
(hard-coded in ``mtrl/experiment/metaworld.py``), one deterministic evaluation episode per task (its
metaworld evaluation steps one vector environment with one sub-environment per task for one episode),
and running reward normalisation per task (garage's ``NormalizedEnvWrapper`` with ``normalize_reward=True``,
applied through mtenv).

.. note::
    The published mtrl/PIVRG numbers used Meta-World **v1** tasks; metaworld 3.x only ships v3 tasks, so
    numbers under ``protocol=mtrl`` are comparable in protocol, not in task definitions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

_REWARD_FUNCTION_VERSIONS = ("v1", "v2")


@dataclass(frozen=True)
class ProtocolConfig:
    """How episodes, goals, rewards and evaluation are set up (see the module docstring)."""

    name: str
    """``"metaworld"`` or ``"mtrl"``."""
    max_episode_steps: int
    """Episode length; episodes always run to this horizon (success does not end them)."""
    fixed_goal: bool
    """True: one goal per task for the whole run (and its evaluation); False: one of 50 goals per reset."""
    eval_episodes_per_task: int
    """Default number of deterministic evaluation episodes per task."""
    normalize_reward: bool
    """Divide each task's reward by a running estimate of its standard deviation (mtrl codebase)."""
    reward_function_version: str = "v2"
    """Meta-World's reward function (``"v2"``: current; ``"v1"``: the older shaping kept in the v3 tasks)."""
    reward_normalizer_alpha: float = 0.001
    """Update rate of the exponential moving reward mean/variance (garage's ``reward_alpha``)."""

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"Unknown protocol `{self.name}`. Valid protocols: {', '.join(PROTOCOLS)}.")
        for field in ("max_episode_steps", "eval_episodes_per_task"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Parameter `{field}` should be a positive integer. Found `{field} = {value!r}`.")
        for field in ("fixed_goal", "normalize_reward"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"Parameter `{field}` should be a bool. Found `{field} = {getattr(self, field)!r}`.")
        if self.reward_function_version not in _REWARD_FUNCTION_VERSIONS:
            raise ValueError(
                "Parameter `reward_function_version` should be one of "
                f"{', '.join(_REWARD_FUNCTION_VERSIONS)}. Found `{self.reward_function_version!r}`."
            )
        alpha = self.reward_normalizer_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Parameter `reward_normalizer_alpha` should be in (0, 1]. Found `{alpha!r}`.")


PROTOCOLS: dict[str, dict] = {
    "metaworld": dict(
        max_episode_steps=500,
        fixed_goal=False,
        # Random goals make one episode a noisy estimate; 10 per task keeps an evaluation of MT10 at
        # 5000 vector steps. Meta-World's own `evaluation()` defaults to 50.
        eval_episodes_per_task=10,
        normalize_reward=False,
    ),
    "mtrl": dict(
        max_episode_steps=150,
        fixed_goal=True,
        # Fixed goal and deterministic policy: every evaluation episode of a task is the same episode.
        eval_episodes_per_task=1,
        normalize_reward=True,
    ),
}
"""Defaults of each protocol (the same values as ``configs/protocol/<name>.yaml``)."""


def make_protocol(name: str, **overrides) -> ProtocolConfig:
    """The protocol ``name`` with its defaults, any field replaced by ``overrides``.

    ``make_protocol(**cfg.protocol)`` builds it from the Hydra group ``protocol/``.

    Raises:
        ValueError: unknown protocol name, unknown field, or an invalid value.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown protocol `{name}`. Valid protocols: {', '.join(PROTOCOLS)}.")
    fields = {f.name for f in dataclasses.fields(ProtocolConfig)} - {"name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown protocol field(s) {unknown}. Valid fields: {', '.join(sorted(fields))}.")
    values = {**PROTOCOLS[name], **{key: value for key, value in overrides.items() if value is not None}}
    return ProtocolConfig(name=name, **values)
