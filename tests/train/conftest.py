"""Helpers for the `mtrl.train` tests: the repository's Hydra config, composed with tiny settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import mtrl.train  # noqa: F401  (registers the config's resolvers)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

#: A few dozen MT10 steps with tiny networks: 3-step episodes, one evaluation episode per task. Evaluations run
#: inline: the evaluation worker (eval_async=true, the default) takes longer to start than such a run lasts;
#: the tests of the worker ask for it.
TINY = [
    "steps=12", "warmup_steps=4", "eval_every=6", "log_every=3", "checkpoint_every=6",
    "protocol.max_episode_steps=3", "eval_episodes=1", "buffer_size=1000",
    "agent.hidden_dim=32", "agent.trunk_layers=1", "agent.batch_size=40",
    "progress=false", "vector_strategy=sync", "eval_async=false",
]


def compose_config(*overrides: str) -> DictConfig:
    """The training config as ``python -m mtrl.train <TINY> <overrides>`` would see it."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, *overrides])


@pytest.fixture
def config() -> object:
    """``config(*overrides)``: :func:`compose_config` as a fixture (test modules import nothing from here)."""
    return compose_config


@pytest.fixture
def tensorboard_scalars() -> object:
    """``tensorboard_scalars(run_dir)``: every scalar tag of the run's event files, ``{tag: [(step, value)]}``."""
    return read_scalars


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # In wall-time order: the accumulator reads the files in name order, and two writers opened in one second
    # by one process (a test's run and its resume) are told apart by a counter compared as text ("10" < "9").
    # Without purge_orphaned_data=False, reading the resume's file first and then the run's earlier steps
    # would count as a restart and drop the resume's steps (which happened once the counter passed 9).
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    events.Reload()
    return {tag: [(e.step, e.value) for e in sorted(events.Scalars(tag), key=lambda e: (e.wall_time, e.step))]
            for tag in events.Tags()["scalars"]}


@pytest.fixture
def no_envs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if an environment gets built (bad input must be caught before)."""
    import envs

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("an environment was built before the bad input was reported")

    monkeypatch.setattr(envs, "make_multitask_env", forbidden)
    monkeypatch.setattr(envs, "make_eval_env", forbidden)
    yield
