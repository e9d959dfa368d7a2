"""Shared fixtures: every test starts from the same seeds."""

import os
import random

import numpy as np
import pytest
import torch

# Under pytest-xdist each worker gets one core's worth of threads: the models in the tests are tiny,
# and two workers with two threads each on a 2-core machine run slower than with one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
