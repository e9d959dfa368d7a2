"""``env.tasks``: a subset of MT10/MT50 (an MT2-MT4 for a laptop) in the environment, the trainer, STL and
evaluation; and ``env=mt1`` runs the single-task batch (128)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import envs
import mtrl.train  # noqa: F401  (registers the config's resolvers)
from mtrl.stl import STLConfigError, validate
from mtrl.experiment import ConfigError, prepare, run

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SUBSET = ["window-open-v3", "reach-v3"]   # not in MT10's order: the listed order is the one-hot order
TINY = ["steps=8", "warmup_steps=4", "eval_every=8", "log_every=4", "checkpoint_every=8", "eval_episodes=1",
        "protocol.max_episode_steps=4", "buffer_size=100", "agent.hidden_dim=16", "agent.trunk_layers=1",
        "progress=false", "vector_strategy=sync", "device=cpu"]


def compose_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def test_benchmark_tasks_subset_keeps_the_listed_order() -> None:
    assert envs.benchmark_tasks("mt10", SUBSET) == SUBSET
    assert envs.benchmark_tasks("mt50", ("assembly-v3", "reach-v3")) == ["assembly-v3", "reach-v3"]
    assert envs.benchmark_tasks("mt10", None) == envs.BENCHMARKS["mt10"]


@pytest.mark.parametrize("name, tasks, message", [
    ("mt10", ["reach-v3", "assembly-v3"], "unknown task"),      # an MT50 task is not in MT10
    ("mt10", [], "empty or repeated"),
    ("mt10", ["reach-v3", "reach-v3"], "empty or repeated"),
    ("mt10", "reach-v3", "env=mt1"),                            # a single name: point to mt1
    ("mt1", ["reach-v3"], "Unknown Meta-World task"),
])
def test_benchmark_tasks_refuses_bad_subsets(name: str, tasks, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        envs.benchmark_tasks(name, tasks)


def test_subset_environment_rows_are_the_tasks_own_environments() -> None:
    protocol = envs.make_protocol("metaworld", max_episode_steps=3)
    with envs.make_multitask_env("mt10", protocol, seed=7, task=SUBSET, vector_strategy="sync") as env:
        assert env.task_names == SUBSET and env.obs_dim == 39 + 2
        obs = env.reset()
        np.testing.assert_array_equal(obs[:, 39:], np.eye(2))
        for i, name in enumerate(SUBSET):   # the same goals and seeds as the task alone (and as in MT10)
            single = envs.make_task_env(name, protocol, seed=7)
            np.testing.assert_array_equal(obs[i, :39], single.reset()[0])
            single.close()


def test_train_config_honours_env_tasks_before_building_envs() -> None:
    settings = prepare(compose_config("train", *TINY, f"env.tasks=[{','.join(SUBSET)}]", "agent.batch_size=8"))
    assert settings.task_names == SUBSET and settings.env_name == "mt10-2tasks" and settings.batch_per_task == 4
    with pytest.raises(ConfigError, match="env: env.tasks: unknown task"):
        prepare(compose_config("train", *TINY, "env.tasks=[reach-v3,nope-v3]"))
    with pytest.raises(ConfigError, match="does not split evenly over the 2 tasks"):
        prepare(compose_config("train", *TINY, f"env.tasks=[{','.join(SUBSET)}]", "agent.batch_size=9"))


def test_training_and_evaluation_on_a_subset(tmp_path: Path) -> None:
    summary = run(compose_config("train", *TINY, f"env.tasks=[{','.join(SUBSET)}]", "agent.batch_size=8", "agg=pivrg"),
                  run_dir=tmp_path)
    assert summary["tasks"] == SUBSET and summary["transitions"] == 8 * 2
    assert list(summary["final"]["per_task"]) == SUBSET
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["env"]["tasks"] == SUBSET


def test_stl_honours_env_tasks() -> None:
    plain = OmegaConf.to_container(compose_config("stl", f"env.tasks=[{','.join(SUBSET)}]"), resolve=True)
    assert validate(plain)["tasks"] == SUBSET
    plain = OmegaConf.to_container(compose_config("stl", "env=mt50", "env.tasks=[assembly-v3]", "tasks=[reach-v3]"),
                                   resolve=True)
    with pytest.raises(STLConfigError, match="not in mt50"):   # `tasks` picks within env.tasks
        validate(plain)


def test_mt1_runs_the_single_task_batch() -> None:
    assert prepare(compose_config("train", *TINY, "env=mt1")).agent.batch_size == 128
    assert prepare(compose_config("train", *TINY, "env=mt1", "agent.batch_size=256")).agent.batch_size == 256
    assert prepare(compose_config("train", *TINY, "env=mt10")).agent.batch_size == 1280
