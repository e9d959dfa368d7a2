"""Δm (PIVRG paper Eq. 3) in both metric directions."""

import pytest
import torch

from mtrl.metrics import performance_drop, success_drop


def test_higher_is_better_metric_below_reference_is_a_positive_drop() -> None:
    drop = performance_drop(torch.tensor([0.8, 1.0, 0.9], dtype=torch.float64), torch.tensor([1.0, 0.5, 0.9], dtype=torch.float64), higher_is_better=True)
    torch.testing.assert_close(drop, torch.tensor([20.0, -100.0, 0.0], dtype=torch.float64))


def test_lower_is_better_metric_above_reference_is_a_positive_drop() -> None:
    drop = performance_drop(torch.tensor([1.5, 0.5]), torch.tensor([1.0, 1.0]), higher_is_better=False)
    torch.testing.assert_close(drop, torch.tensor([50.0, -50.0], dtype=torch.float64))


def test_mixed_directions_per_task() -> None:
    drop = performance_drop(torch.tensor([0.9, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.0]), higher_is_better=[True, False])
    torch.testing.assert_close(drop, torch.tensor([10.0, 100.0], dtype=torch.float64))


def test_success_drop_defaults_to_a_perfect_reference() -> None:
    torch.testing.assert_close(success_drop(torch.tensor([1.0, 0.25, 0.0])),
                               torch.tensor([0.0, 75.0, 100.0], dtype=torch.float64))


def test_zero_reference_is_refused_with_the_task() -> None:
    with pytest.raises(ValueError, match=r"tasks \[1\]"):
        performance_drop(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))
