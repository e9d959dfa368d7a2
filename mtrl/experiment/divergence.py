"""The divergence guard: non-finite losses, Q-values beyond a bound or non-finite parameters stop the run.

The update itself never reads a value back to the host (see :mod:`mtrl.experiment.loop`), so the guard
checks at log steps and right before every checkpoint, in one pass:

1. each aggregator's ``check()`` (aggregators record non-finite inputs on the device and raise a
   ``ValueError`` naming the tasks here);
2. the window's mean losses and temperatures, per task;
3. every parameter of the actor, the critic, its target and the temperatures (head parameters are
   stacked per task, so a bad head names its task; a bad trunk is "the shared trunk");
4. ``|Q|`` of both critics on a batch drawn with the guard's own generator (the training sampler's
   stream is left alone), against ``q_bound``.

``on_nonfinite=stop`` (default) raises :class:`TrainingDiverged`; the trainer then writes no
checkpoint, so ``checkpoint.pt`` stays the last one that passed this check. ``on_nonfinite=skip``
also checks every gradient before each optimizer step (one host sync per step: slower) and drops a
step whose gradients are not finite, counting it (``train/skipped_updates``); the checks above
still stop the run if the state itself goes bad.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["TrainingDiverged", "DivergenceGuard"]

log = logging.getLogger("mtrl.train")

#: Update output key -> (network named in the message, what it is).
_OUTPUT_NETWORKS = {"loss/critic": ("critic", "loss"), "loss/actor": ("actor", "loss"),
                    "loss/alpha": ("temperature", "loss"), "alpha": ("temperature", "value"),
                    "weights/critic": ("critic", "aggregation weight"), "weights/actor": ("actor", "aggregation weight")}


def _optimizing_network(error: BaseException) -> str | None:
    """``network`` of the innermost ``MultiTaskSAC._optimize`` frame the error passed through."""
    traceback, network = error.__traceback__, None
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "_optimize" and isinstance(frame.f_locals.get("network"), str):
            network = frame.f_locals["network"]
        traceback = traceback.tb_next
    return network


class TrainingDiverged(RuntimeError):
    """The run's state went non-finite (or its Q-values beyond ``q_bound``); no checkpoint was written after it."""

    def __init__(self, step: int, problem: str) -> None:
        super().__init__(f"step {step}: {problem}")
        self.step, self.problem = step, problem


class DivergenceGuard:
    """Checks an agent's losses, aggregators, parameters and Q-values; see the module docstring.

    Args:
        agent: the :class:`~agents.MultiTaskSAC`.
        aggregators: ``{"critic": ..., "actor": ...}`` (those that exist).
        task_names: row ``i`` of every per-task tensor is ``task_names[i]``.
        on_nonfinite: ``stop`` or ``skip``.
        q_bound: largest ``|Q|`` still taken as sane.
        seed: seeds the generator of the Q-check batches.
    """

    def __init__(self, agent: Any, aggregators: Mapping[str, Any], task_names: list[str], on_nonfinite: str,
                 q_bound: float, seed: int) -> None:
        self.agent, self.aggregators, self.task_names = agent, dict(aggregators), list(task_names)
        self.on_nonfinite, self.q_bound = on_nonfinite, float(q_bound)
        self.skipped = 0
        self.generator = torch.Generator(device=agent.device)
        self.generator.manual_seed(int(seed))
        self._hooks = []
        if on_nonfinite == "skip":
            for optimizer in (agent.critic_optimizer, agent.actor_optimizer, agent.alpha_optimizer):
                self._hooks.append(optimizer.register_step_pre_hook(self._drop_nonfinite_step))

    # ----------------------------------------------------------------------------------- skipping
    def _drop_nonfinite_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Before ``optimizer.step()``: if any gradient is not finite, clear them all, so Adam leaves every
        parameter and its moments untouched (a parameter without a gradient is skipped)."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        finite = torch.stack([torch.isfinite(p.grad).all() for p in params]).all()
        if not bool(finite):   # host sync: the price of skip mode
            for p in params:
                p.grad = None
            self.skipped += 1

    # ------------------------------------------------------------------ errors raised inside an update
    def from_update_error(self, step: int, error: ValueError) -> TrainingDiverged | None:
        """The divergence an aggregator's non-finite-input ``ValueError`` inside an update means (None: another error).

        Aggregators that validate on the host raise inside the update; the message's task indices are
        mapped to names and the network is read from the failing ``_optimize(network, ...)`` call.
        """
        text = str(error)
        if "non-finite" not in text.lower():
            return None
        network = _optimizing_network(error) or "a"
        match = re.search(r"task\(s\) \[([\d, ]*)\]", text)
        if match and match.group(1).strip():
            indices = [int(index) for index in match.group(1).split(",")]
            mask = np.isin(np.arange(len(self.task_names)), indices)
            text = f"{text[:match.start()]}task(s) {self._names(mask)}{text[match.end():]}"
        return TrainingDiverged(step, f"the {network} network's aggregator got non-finite inputs: {text.rstrip('.')}")

    # ------------------------------------------------------------------------------------- checks
    def check(self, step: int, outputs: Mapping[str, np.ndarray], buffer: Any = None) -> None:
        """Raise :class:`TrainingDiverged` if anything is off (see the module docstring).

        ``outputs`` are the current window's mean update outputs (host arrays, ``[k]`` each).
        """
        problem = (self._aggregator_problem() or self._output_problem(outputs) or self._parameter_problem()
                   or self._q_problem(buffer))
        if problem is not None:
            raise TrainingDiverged(step, problem)

    def _aggregator_problem(self) -> str | None:
        for role, aggregator in self.aggregators.items():
            check = getattr(aggregator, "check", None)
            if check is None:
                continue
            try:
                check()
            except ValueError as error:
                if self.on_nonfinite == "skip":
                    log.warning("%s aggregator: %s (those updates were skipped)", role, error)
                    continue
                return f"the {role} network's aggregator got non-finite inputs: {error}"
        return None

    def _output_problem(self, outputs: Mapping[str, np.ndarray]) -> str | None:
        if self.on_nonfinite == "skip":
            return None   # the skipped steps' losses are the non-finite ones; the parameters stayed finite
        for key, value in outputs.items():
            bad = ~np.isfinite(np.asarray(value, dtype=np.float64).reshape(-1))
            if bad.any():
                network, what = _OUTPUT_NETWORKS.get(key, (key, "output"))
                return f"non-finite {network} {what} ({key}) for task(s) {self._names(bad)}"
        return None

    def _parameter_problem(self) -> str | None:
        agent = self.agent
        networks = {"actor": agent.actor, "critic": agent.critic, "target critic": agent.critic_target}
        k = len(self.task_names)
        with torch.no_grad():
            for network, module in networks.items():
                params = dict(module.named_parameters())
                finite = torch.stack([torch.isfinite(p).all() for p in params.values()])
                if bool(finite.all()):
                    continue
                heads = {id(h) for h in module.head_parameters()}
                for (name, p), ok in zip(params.items(), finite.tolist()):
                    if ok:
                        continue
                    if id(p) in heads and p.ndim >= 1 and p.shape[0] == k:
                        bad = ~torch.isfinite(p.reshape(k, -1)).all(dim=1).cpu().numpy()
                        return f"non-finite {network} parameter {name} in the head(s) of task(s) {self._names(bad)}"
                    return f"non-finite {network} parameter {name} (shared trunk: all tasks)"
            bad = ~torch.isfinite(agent.log_alpha.detach()).cpu().numpy()
            if bad.any():
                return f"non-finite temperature log α for task(s) {self._names(bad)}"
        return None

    def _q_problem(self, buffer: Any) -> str | None:
        if buffer is None or len(buffer) == 0:
            return None
        batch = buffer.sample(8, generator=self.generator)
        with torch.no_grad():
            q1, q2 = self.agent.critic(batch.obs, batch.action)                    # [k, b] each
            largest = torch.maximum(q1.abs(), q2.abs()).amax(dim=1).cpu().numpy()   # [k]
        bad = ~(largest <= self.q_bound)   # NaN counts as bad
        if bad.any():
            return (f"critic Q-values beyond q_bound={self.q_bound:g} (|Q| up to {np.nanmax(largest):.3g}) "
                    f"for task(s) {self._names(bad)}")
        return None

    def _names(self, mask: np.ndarray) -> str:
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.shape[0] != len(self.task_names):
            return "all (not per task)"
        return ", ".join(name for name, bad in zip(self.task_names, mask) if bad)

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped = int(state["skipped"])
        self.generator.set_state(state["generator"])
