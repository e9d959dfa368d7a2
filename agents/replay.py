"""A multi-task replay buffer that lives on the training device and samples stratified by task.

One vector-environment step adds one transition per task, so every task holds the same number of
transitions and the storage is a ring buffer per task, laid out ``[k, capacity_per_task, ...]``.
:meth:`ReplayBuffer.sample` draws exactly ``batch_per_task`` rows of each task (uniformly, with
replacement, as SB3 and the mtrl codebase do) and returns them as ``[k, b, ...]`` tensors: row block
``i`` is task ``i``'s, which is what the multi-head agent and the task-partitioned Jacobian expect.
Indices come from a ``torch.Generator`` on the buffer's device and are scaled by a device-side count
of the filled slots, so sampling is reproducible, never reads a value back to the host, and can be
captured in a CUDA graph whose replays still see the buffer grow.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "ReplayBuffer"]


@dataclass
class Batch:
    """A stratified batch; row block ``i`` belongs to task ``i``.

    Attributes:
        obs: ``[k, b, obs_dim]``.
        action: ``[k, b, action_dim]``.
        reward: ``[k, b]``.
        next_obs: ``[k, b, obs_dim]``: the true next observation (the final one at an episode's end).
        done: ``[k, b]`` float, 1 where the transition *terminated* (time-limit truncation is not
            termination: the target still bootstraps there).
    """

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    done: Tensor

    @property
    def num_tasks(self) -> int:
        return int(self.reward.shape[0])

    @property
    def batch_per_task(self) -> int:
        return int(self.reward.shape[1])

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class ReplayBuffer:
    """Ring buffer of ``capacity`` transitions in all (``capacity // num_tasks`` per task).

    Args:
        num_tasks: ``k``; :meth:`add` takes one row per task.
        obs_dim: observation size (including the task one-hot, if the environment appends it).
        action_dim: action size.
        capacity: transitions over all tasks (the paper: 1M).
        device: where the storage and the sampling live (the training device).
        seed: seeds the buffer's own generator, used when :meth:`sample` gets none.
    """

    def __init__(self, num_tasks: int, obs_dim: int, action_dim: int, capacity: int,
                 device: torch.device | str = "cpu", seed: int | None = None) -> None:
        for name, value in (("num_tasks", num_tasks), ("obs_dim", obs_dim), ("action_dim", action_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ReplayBuffer: `{name}` should be a positive integer. Found `{name} = {value!r}`.")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < num_tasks:
            raise ValueError(
                f"ReplayBuffer: `capacity` (transitions over all tasks) should be an integer >= num_tasks = {num_tasks}. "
                f"Found `capacity = {capacity!r}`."
            )
        self.num_tasks, self.obs_dim, self.action_dim = num_tasks, obs_dim, action_dim
        self.capacity_per_task = capacity // num_tasks
        self.capacity = self.capacity_per_task * num_tasks
        self.device = torch.device(device)
        shape = (num_tasks, self.capacity_per_task)
        self.obs = torch.zeros(*shape, obs_dim, dtype=torch.float32, device=self.device)
        self.action = torch.zeros(*shape, action_dim, dtype=torch.float32, device=self.device)
        self.reward = torch.zeros(*shape, dtype=torch.float32, device=self.device)
        self.next_obs = torch.zeros(*shape, obs_dim, dtype=torch.float32, device=self.device)
        self.done = torch.zeros(*shape, dtype=torch.float32, device=self.device)
        self._task_index = torch.arange(num_tasks, device=self.device).unsqueeze(1)  # [k, 1]
        self._filled = torch.zeros((), dtype=torch.int64, device=self.device)   # = _size, on the device
        self._staging: Tensor | None = None   # CUDA: page-locked host row of one step (see add)
        self.generator = torch.Generator(device=self.device)
        if seed is None:
            self.generator.seed()  # non-deterministic, and leaves torch's global generator alone
        else:
            self.generator.manual_seed(int(seed))
        self._position = 0   # next slot to write, per task (the same for every task)
        self._size = 0       # filled slots per task
        self._added = 0      # vector steps added since the buffer was created (row r sits in slot r % capacity)

    @property
    def _size(self) -> int:
        """Filled slots per task. Setting it also updates the device-side copy that sampling reads."""
        return self._size_value

    @_size.setter
    def _size(self, value: int) -> None:
        self._size_value = int(value)
        self._filled.fill_(self._size_value)   # a kernel argument, no host sync

    # ------------------------------------------------------------------------------------ writing
    def add(self, obs: np.ndarray | Tensor, action: np.ndarray | Tensor, reward: np.ndarray | Tensor,
            next_obs: np.ndarray | Tensor, terminated: np.ndarray | Tensor) -> None:
        """Store one vector step: row ``i`` of each argument is task ``i``'s transition.

        ``obs``/``next_obs`` ``[k, obs_dim]``, ``action`` ``[k, action_dim]``, ``reward`` and
        ``terminated`` ``[k]``. Pass ``terminated`` only (not ``terminated | truncated``): a
        time-limit truncation must keep bootstrapping.
        """
        k = self.num_tasks
        items = {
            "obs": (obs, (k, self.obs_dim)), "action": (action, (k, self.action_dim)),
            "reward": (reward, (k,)), "next_obs": (next_obs, (k, self.obs_dim)), "terminated": (terminated, (k,)),
        }
        slot = self._position
        rows: list[Tensor] = []
        for name, (value, shape) in items.items():
            tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
            if tuple(tensor.shape) != shape:
                raise ValueError(f"ReplayBuffer.add: `{name}` should have shape {shape} (one row per task), "
                                 f"got {tuple(tensor.shape)}.")
            rows.append(tensor.reshape(k, -1))
        if self.device.type == "cuda" and not any(row.is_cuda for row in rows):
            rows = self._through_pinned(rows)
        for storage, row in zip((self.obs, self.action, self.reward, self.next_obs, self.done), rows):
            storage[:, slot].copy_(row.reshape(storage[:, slot].shape))   # casts to float32
        self._position = (slot + 1) % self.capacity_per_task
        self._size = min(self._size + 1, self.capacity_per_task)
        self._added += 1

    def _through_pinned(self, rows: list[Tensor]) -> list[Tensor]:
        """Move one step's host rows to the device in one copy from a page-locked buffer (CUDA)."""
        widths = [row.shape[1] for row in rows]
        if self._staging is None:
            self._staging = torch.empty(self.num_tasks, sum(widths), pin_memory=True)
            self._staged = torch.empty(self.num_tasks, sum(widths), device=self.device)
            self._staging_copied = torch.cuda.Event()
        self._staging_copied.synchronize()   # the last step's copy has left the pinned buffer
        torch.cat([row.to(torch.float32) for row in rows], dim=1, out=self._staging)
        self._staged.copy_(self._staging, non_blocking=True)
        self._staging_copied.record()
        return list(self._staged.split(widths, dim=1))

    # ----------------------------------------------------------------------------------- sampling
    def sample(self, batch_per_task: int, generator: torch.Generator | None = None) -> Batch:
        """Exactly ``batch_per_task`` transitions of every task, uniformly with replacement.

        Args:
            batch_per_task: rows per task ``b`` (the paper: 128).
            generator: a ``torch.Generator`` on the buffer's device; the buffer's own by default.

        Returns:
            A :class:`Batch` of ``[k, b, ...]`` tensors on the buffer's device.
        """
        if isinstance(batch_per_task, bool) or not isinstance(batch_per_task, int) or batch_per_task < 1:
            raise ValueError(f"ReplayBuffer.sample: `batch_per_task` should be a positive integer. "
                             f"Found `batch_per_task = {batch_per_task!r}`.")
        if self._size == 0:
            raise ValueError("ReplayBuffer.sample: the buffer is empty; add transitions (warm-up steps) first.")
        generator = self.generator if generator is None else generator
        uniform = torch.rand((self.num_tasks, batch_per_task), generator=generator, device=self.device,
                             dtype=torch.float64)                                  # [k, b] in [0, 1)
        # floor(u · size) is uniform on {0, ..., size - 1}; the minimum guards the rounding of u · size to size.
        rows = torch.minimum((uniform * self._filled).long(), self._filled - 1)   # [k, b]
        index = (self._task_index, rows)
        return Batch(obs=self.obs[index], action=self.action[index], reward=self.reward[index],
                     next_obs=self.next_obs[index], done=self.done[index])

    def __len__(self) -> int:
        """Transitions stored over all tasks."""
        return self._size * self.num_tasks

    # -------------------------------------------------------------------------------------- state
    _FIELDS = ("obs", "action", "reward", "next_obs", "done")

    @property
    def added(self) -> int:
        """Vector steps added so far (rows ``added - capacity_per_task`` ... ``added - 1`` are still stored)."""
        return self._added

    def export_rows(self, start: int, stop: int) -> dict[str, Tensor]:
        """Rows ``start`` to ``stop - 1`` (counted in vector steps since creation), as host tensors ``[k, n, ...]``.

        Incremental checkpoints save the rows added since the last one with this.
        """
        oldest = max(0, self._added - self.capacity_per_task)
        if not oldest <= start <= stop <= self._added:
            raise ValueError(f"ReplayBuffer.export_rows: rows [{start}, {stop}) are not all stored "
                             f"(stored: [{oldest}, {self._added})).")
        slots = torch.arange(start, stop, device=self.device) % self.capacity_per_task
        return {name: getattr(self, name)[:, slots].cpu() for name in self._FIELDS}

    def import_rows(self, start: int, data: dict[str, Tensor]) -> None:
        """Write :meth:`export_rows`' output back as rows ``start ...``; the buffer then ends at its last row.

        Chunks must come in order (each ending at or after the rows already there).
        """
        count = int(data["reward"].shape[1])
        if start + count < self._added:
            raise ValueError(f"ReplayBuffer.import_rows: rows [{start}, {start + count}) end before row {self._added}.")
        for name in self._FIELDS:
            if tuple(data[name].shape[:2]) != (self.num_tasks, count):
                raise ValueError(f"ReplayBuffer.import_rows: `{name}` should be [{self.num_tasks}, {count}, ...], "
                                 f"got {tuple(data[name].shape)}.")
        slots = torch.arange(start, start + count, device=self.device) % self.capacity_per_task
        for name in self._FIELDS:
            getattr(self, name)[:, slots] = data[name].to(self.device, torch.float32)
        self._added = start + count
        self._position = self._added % self.capacity_per_task
        self._size = min(self._added, self.capacity_per_task)

    def state_dict(self, include_data: bool = True) -> dict[str, Any]:
        """The sampler's generator and, with ``include_data``, the ring position and every stored transition
        (training checkpoints save the rows incrementally instead: :meth:`export_rows`)."""
        state: dict[str, Any] = {
            "num_tasks": self.num_tasks, "obs_dim": self.obs_dim, "action_dim": self.action_dim,
            "capacity_per_task": self.capacity_per_task, "generator": self.generator.get_state(),
        }
        if include_data:
            state["position"], state["size"], state["added"] = self._position, self._size, self._added
            state["data"] = {name: getattr(self, name)[:, :self._size].clone()
                             for name in ("obs", "action", "reward", "next_obs", "done")}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; without saved data the buffer starts empty."""
        expected = {"num_tasks": self.num_tasks, "obs_dim": self.obs_dim, "action_dim": self.action_dim,
                    "capacity_per_task": self.capacity_per_task}
        found = {key: state.get(key) for key in expected}
        if found != expected:
            raise ValueError(f"ReplayBuffer.load_state_dict: the saved buffer has {found}, this one {expected}.")
        self.generator.set_state(state["generator"])
        if "data" in state:
            size = int(state["size"])
            for name, saved in state["data"].items():
                getattr(self, name)[:, :size].copy_(saved)
            self._position, self._size = int(state["position"]), size
            self._added = int(state.get("added", size))
        else:
            self._position, self._size, self._added = 0, 0, 0
