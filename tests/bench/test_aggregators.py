"""``python -m mtrl.bench aggregators --quick``: runs, writes its JSON, and its ratios are its quotients."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import mtrl.aggregation as agg
from mtrl.bench.__main__ import main


def test_quick_run_writes_consistent_json(tmp_path: Path) -> None:
    out = tmp_path / "aggregators.json"
    result = main(["aggregators", "--quick", "--torch-threads", "1", "--ks", "3,6", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert result["benchmark"] == "aggregators" and result["quick"] is True and "machine" in result
    rows = result["rows"]
    assert {(row["method"], row["k"]) for row in rows} == {(m, k) for m in agg.available() for k in (3, 6)}
    for row in rows:
        plain = result["plain_update_s"][str(row["k"])]
        assert row["call_ms"] > 0 and plain > 0
        assert math.isclose(row["ratio_to_plain_update"], row["call_ms"] / (1e3 * plain), rel_tol=1e-9)
        assert row["fallbacks"] == 0
        if "reference" in row:
            assert row["reference_ms"] > 0
            assert math.isclose(row["ratio_to_reference"], row["call_ms"] / row["reference_ms"], rel_tol=1e-9)
            # Independent solvers agree; torchjd's MGDA is plain Frank-Wolfe (its tolerance, not ours).
            assert row["max_weight_diff"] <= (0.05 if row["method"] == "mgda" else 1e-3), row
    with_reference = {row["method"] for row in rows if "reference" in row}
    assert {"pcgrad", "mgda", "imtlg", "cagrad", "nashmtl", "fairgrad", "pivrg"} <= with_reference


@pytest.mark.parametrize("argv, message", [
    (["--ks", "0"], "--ks should be positive integers"),
    (["--methods", "nope"], "unknown method"),
])
def test_bad_options_exit_with_a_clear_message(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["aggregators", "--quick", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
