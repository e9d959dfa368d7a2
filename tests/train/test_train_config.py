"""configs/train.yaml and configs/agent/ stay in step with the code (paper defaults)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from omegaconf import OmegaConf

import agents

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_agent_config_lists_every_sac_field_with_its_default() -> None:
    # resolved alone: batch_size's ${oc.select:env.batch_size,1280} is 1280 without env=mt1
    values = OmegaConf.to_container(OmegaConf.load(CONFIGS / "agent" / "sac.yaml"), resolve=True)
    assert values.pop("name") == "sac"
    defaults = {f.name: f.default for f in dataclasses.fields(agents.SACConfig)}
    assert set(values) == set(defaults)
    for key, value in values.items():
        expected = list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]
        assert value == expected, f"agent/sac.yaml: {key}={value!r}, SACConfig default {expected!r}"


def test_default_training_config_follows_the_paper(config) -> None:
    from mtrl.experiment import prepare

    cfg = config("steps=2000000", "warmup_steps=1500", "eval_every=10000", "agent.batch_size=1280",
                 "agent.hidden_dim=400", "agent.trunk_layers=3", "buffer_size=1000000")
    defaults = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    for key in ("steps", "warmup_steps", "eval_every", "buffer_size"):
        assert cfg[key] == defaults[key], key
    assert defaults["defaults"][:4] == [{"env": "mt10"}, {"protocol": "metaworld"}, {"agg": "pivrg"}, {"agent": "sac"}]
    settings = prepare(cfg)   # builds no environment
    assert settings.num_tasks == 10 and settings.batch_per_task == 128
    assert settings.eval_episodes == 1   # TINY's override; the protocol default otherwise
    assert settings.performance_source == "eval" and settings.stl_reference.tolist() == [1.0] * 10


def test_mt10_and_mt50_clip_the_trunk_gradient_at_one_and_mt1_does_not(config) -> None:
    """Issue 12: without a GPU run long enough to choose, MT10/MT50 follow the papers' MT10 code (clip at 1.0);
    MT1 stays unclipped (parity with SB3); the command line turns it off or changes it."""
    from hydra import compose, initialize_config_dir

    for env, expected in (("mt10", 1.0), ("mt50", 1.0), ("mt1", None)):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            assert compose(config_name="train", overrides=[f"env={env}"]).agent.max_grad_norm == expected, env
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        assert compose(config_name="train", overrides=["agent.max_grad_norm=null"]).agent.max_grad_norm is None
        assert compose(config_name="train", overrides=["agent.max_grad_norm=0.5"]).agent.max_grad_norm == 0.5
