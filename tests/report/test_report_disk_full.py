"""``python -m mtrl.report`` on a small disk: exit 2, one line naming the file it could not write and the
complete ones, no half-written file (``small_disk``: tests/conftest.py; the other commands: tests/test_disk_full.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from report_helpers import TASKS, config, write_summary


def test_report_on_a_small_disk(small_disk, tmp_path: Path) -> None:
    for agg in ("ls", "pivrg"):
        write_summary(tmp_path / "sweep" / agg, config(agg, 0), np.full((2, len(TASKS)), 0.5))
    disk = small_disk(16 * 1024)   # the first figure does not fit
    out = disk.path / "report"
    result = disk.run("mtrl.report", [tmp_path / "sweep", "--out", out], tmp_path)
    reason = "No space left on device" if disk.mode == "tmpfs" else "File too large"
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr == (f"mtrl.report: error: cannot write {out / 'curves.png'} ({reason}); nothing was "
                             "written; files not rewritten keep their previous version.\n")
    assert not any(path.name.endswith(".tmp") or path.name == "curves.png" for path in disk.path.rglob("*"))
    no_plots = disk.run("mtrl.report", [tmp_path / "sweep", "--out", out, "--no-plots"], tmp_path)
    assert no_plots.returncode == 0 and (out / "report.md").read_text().startswith("# Report")
