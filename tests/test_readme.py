"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_the_aggregation_and_adapter_examples() -> None:
    assert any("mtl_backward" in code for code in EXAMPLES)
    assert any("MultiTaskTrainer" in code for code in EXAMPLES)


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code: str) -> None:
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def test_readme_shows_the_main_and_test_commands() -> None:
    assert "python -m mtrl.train env=mt10 agg=pivrg" in README
    assert "python -m pytest" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    command = re.search(r"```bash\n(python -m pytest[^\n]*)\n```", README).group(1)
    assert command.replace("python ", "python3 ") in ci
