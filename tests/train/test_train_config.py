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
    from mtrl.training import prepare

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
