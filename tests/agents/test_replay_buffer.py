"""The stratified replay buffer: exactly b rows per task, only that task's rows, reproducible."""

import numpy as np
import pytest
import torch

from agents import ReplayBuffer

K, OBS, ACT = 4, 3, 2


def _filled(steps: int, capacity: int = 400, seed: int = 0) -> ReplayBuffer:
    """Each stored row says which task and which step it came from: obs = [task, step, 0]."""
    buffer = ReplayBuffer(K, OBS, ACT, capacity, seed=seed)
    for step in range(steps):
        obs = np.zeros((K, OBS), dtype=np.float32)
        obs[:, 0], obs[:, 1] = np.arange(K), step
        buffer.add(obs, np.full((K, ACT), step, np.float32), np.arange(K, dtype=np.float32) + 10 * step,
                   obs + 1, np.arange(K) == step % K)
    return buffer


def test_every_task_gets_exactly_b_rows_and_only_its_own() -> None:
    batch = _filled(30).sample(128)
    assert batch.obs.shape == (K, 128, OBS) and batch.next_obs.shape == (K, 128, OBS)
    assert batch.action.shape == (K, 128, ACT) and batch.reward.shape == (K, 128) and batch.done.shape == (K, 128)
    for task in range(K):
        assert (batch.obs[task, :, 0] == task).all()
        assert (batch.next_obs[task, :, 0] == task + 1).all()
    # the fields of one row come from the same transition
    step = batch.obs[..., 1]
    torch.testing.assert_close(batch.action[..., 0], step)
    torch.testing.assert_close(batch.reward, torch.arange(K).float().unsqueeze(1) + 10 * step)
    torch.testing.assert_close(batch.done, (torch.arange(K).unsqueeze(1) == step.long() % K).float())


def test_ring_buffer_keeps_the_most_recent_transitions() -> None:
    buffer = _filled(150, capacity=K * 100)
    assert len(buffer) == K * 100
    steps = buffer.sample(2000).obs[..., 1]
    assert steps.min() >= 50 and steps.max() == 149


def test_sampling_is_reproducible_from_a_generator_and_from_the_state() -> None:
    buffer = _filled(40)
    generator = torch.Generator().manual_seed(3)
    first = buffer.sample(16, generator=generator).obs
    generator.manual_seed(3)
    torch.testing.assert_close(buffer.sample(16, generator=generator).obs, first)

    state = buffer.state_dict()
    expected = buffer.sample(16).obs
    restored = ReplayBuffer(K, OBS, ACT, 400, seed=99)
    restored.load_state_dict(state)
    assert len(restored) == len(buffer)
    torch.testing.assert_close(restored.sample(16).obs, expected)


def test_state_without_data_restores_the_generator_and_an_empty_buffer() -> None:
    restored = ReplayBuffer(K, OBS, ACT, 400)
    restored.load_state_dict(_filled(10).state_dict(include_data=False))
    assert len(restored) == 0


def test_bad_input_is_refused_with_a_message() -> None:
    buffer = _filled(2)
    with pytest.raises(ValueError, match=r"`obs` should have shape \(4, 3\)"):
        buffer.add(np.zeros((3, OBS)), np.zeros((K, ACT)), np.zeros(K), np.zeros((K, OBS)), np.zeros(K, bool))
    with pytest.raises(ValueError, match="batch_per_task"):
        buffer.sample(0)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(K, OBS, ACT, 40).sample(4)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(K, OBS, ACT, 2)
    with pytest.raises(ValueError, match="saved buffer"):
        ReplayBuffer(K + 1, OBS, ACT, 400).load_state_dict(buffer.state_dict())
