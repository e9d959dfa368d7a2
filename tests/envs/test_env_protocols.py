"""Protocols, benchmark task names and the Hydra files of the env/ and protocol/ groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import envs
from envs.multitask import resolve_vector_strategy

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_protocol_defaults() -> None:
    metaworld = envs.make_protocol("metaworld")
    assert (metaworld.max_episode_steps, metaworld.fixed_goal, metaworld.normalize_reward) == (500, False, False)
    mtrl = envs.make_protocol("mtrl")
    assert (mtrl.max_episode_steps, mtrl.fixed_goal, mtrl.eval_episodes_per_task, mtrl.normalize_reward) == (
        150, True, 1, True)


def test_protocol_overrides_and_null_means_default() -> None:
    protocol = envs.make_protocol("mtrl", max_episode_steps=20, eval_episodes_per_task=None)
    assert protocol.max_episode_steps == 20 and protocol.eval_episodes_per_task == 1


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("garage", {}, "Valid protocols: metaworld, mtrl"),
        ("mtrl", {"episode_length": 3}, "Unknown protocol field"),
        ("mtrl", {"max_episode_steps": 0}, "max_episode_steps"),
        ("mtrl", {"eval_episodes_per_task": 1.5}, "eval_episodes_per_task"),
        ("mtrl", {"fixed_goal": "yes"}, "fixed_goal"),
        ("metaworld", {"reward_function_version": "v3"}, "reward_function_version"),
        ("metaworld", {"reward_normalizer_alpha": 0.0}, "reward_normalizer_alpha"),
    ],
)
def test_bad_protocol_raises(name: str, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        envs.make_protocol(name, **overrides)


def test_benchmark_tasks() -> None:
    mt10 = envs.benchmark_tasks("mt10")
    assert len(mt10) == 10 and mt10[0] == "reach-v3" and mt10[-1] == "window-close-v3"
    mt50 = envs.benchmark_tasks("MT50")
    assert len(mt50) == len(set(mt50)) == 50 and set(mt10) <= set(mt50)
    assert envs.benchmark_tasks("mt1", "push-v3") == ["push-v3"]


@pytest.mark.parametrize(
    ("bench", "task", "match"),
    [
        ("mt20", None, "Valid benchmarks: mt10, mt50, mt1"),
        ("mt1", "reach-v2", "Valid tasks: .*reach-v3"),
        ("mt1", None, "Valid tasks: .*pick-place-v3"),
        ("mt10", "reach-v3", "mt1 only"),
    ],
)
def test_bad_names_raise_with_the_valid_ones(bench: str, task: str | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        envs.benchmark_tasks(bench, task)
    with pytest.raises(ValueError, match=match):  # before anything is built
        envs.make_multitask_env(bench, envs.make_protocol("metaworld"), seed=0, task=task)


def test_bad_seed_and_strategy_raise() -> None:
    protocol = envs.make_protocol("mtrl")
    with pytest.raises(ValueError, match="seed"):
        envs.make_multitask_env("mt1", protocol, seed=-1, task="reach-v3")
    with pytest.raises(ValueError, match="auto, sync, async"):
        envs.make_multitask_env("mt1", protocol, seed=0, task="reach-v3", vector_strategy="threads")


def test_auto_vector_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert resolve_vector_strategy("auto", 10) == "sync"
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert resolve_vector_strategy("auto", 10) == "async"
    assert resolve_vector_strategy("auto", 1) == "sync"
    assert resolve_vector_strategy("sync", 10) == "sync"


@pytest.mark.parametrize("path", sorted((CONFIGS / "protocol").glob("*.yaml")), ids=lambda p: p.stem)
def test_protocol_files_match_the_code(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    assert config["name"] == path.stem
    assert envs.make_protocol(**config) == envs.make_protocol(path.stem)


def test_every_protocol_and_benchmark_has_a_file() -> None:
    assert sorted(p.stem for p in (CONFIGS / "protocol").glob("*.yaml")) == sorted(envs.PROTOCOLS)
    assert sorted(p.stem for p in (CONFIGS / "env").glob("*.yaml")) == sorted(envs.BENCHMARKS)
    for path in (CONFIGS / "env").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        assert config["name"] == path.stem
        envs.benchmark_tasks(config["name"], config["task"])
