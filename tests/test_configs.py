"""The Hydra config groups stay in step with the code they configure."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

import mtrl.aggregation as agg

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
AGG_FILES = sorted((CONFIGS / "agg").glob("*.yaml"))


def test_every_aggregator_has_a_config_file() -> None:
    assert sorted(path.stem for path in AGG_FILES) == agg.available()


@pytest.mark.parametrize("path", AGG_FILES, ids=lambda p: p.stem)
def test_agg_config_lists_the_constructor_defaults(path: Path) -> None:
    """Each `agg/<name>.yaml` shows every option with the default the class itself uses."""
    config = yaml.safe_load(path.read_text())
    assert config["name"] == path.stem
    options = config["options"] or {}
    signature = inspect.signature(type(agg.make(path.stem)).__init__)
    defaults = {name: p.default for name, p in signature.parameters.items() if name != "self"}
    assert set(options) == set(defaults)
    for name, value in options.items():
        expected = defaults[name]
        expected = list(expected) if isinstance(expected, tuple) else expected
        assert value == expected, f"{path.name}: {name}={value!r}, but the class default is {expected!r}"
    agg.make(path.stem, **options)
