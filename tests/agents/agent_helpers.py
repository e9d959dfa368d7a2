"""What the agent tests share: a small problem's sizes and a replay buffer filled with random transitions."""

from __future__ import annotations

import numpy as np

from agents import ReplayBuffer

#: tasks, observation size, action size, hidden width, rows per task in a batch
K, OBS, ACT, HIDDEN, B = 3, 6, 2, 32, 8


def filled_buffer(seed: int = 0, steps: int = 64, device: str = "cpu") -> ReplayBuffer:
    """``steps`` vector steps of random transitions (10 % of them terminal) in a ``K``-task buffer."""
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(K, OBS, ACT, K * 1000, device=device, seed=seed)
    for _ in range(steps):
        buffer.add(rng.normal(size=(K, OBS)), rng.uniform(-1, 1, (K, ACT)), rng.normal(size=K),
                   rng.normal(size=(K, OBS)), rng.random(K) < 0.1)
    return buffer
