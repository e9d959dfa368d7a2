"""A full disk: each command exits 2 with one line naming the file it could not write and what is intact,
and leaves no half-written file (writes are atomic) and, when nothing of the run had started, nothing at all.

On real small file systems (``small_disk`` in tests/conftest.py: a tmpfs, or ``ulimit -f`` where mounting is
not allowed), never a mocked ``open``. The report's case is in tests/report/test_report_disk_full.py; a full
disk inside a training run (checkpoints, buffer chunks) in tests/train/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REASON = {"tmpfs": "No space left on device", "fsize": "File too large"}


def assert_write_failure(result, module: str, path: Path, mode: str) -> str:
    """Exit 2, one line ``<module>: error: cannot write <path> (<reason>); ...``, no traceback."""
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"{module}") and f"error: cannot write {path} ({REASON[mode]}); " in lines[0], lines[0]
    return lines[0]


def partial_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.endswith(".tmp")]


def test_bench_result_on_a_full_disk_is_printed_not_lost(small_disk, tmp_path: Path) -> None:
    disk = small_disk(512)
    if disk.mode == "tmpfs":
        disk.fill()
    out = disk.path / "result.json"
    result = disk.run("mtrl.bench", ["jacobian", "--quick", "--torch-threads", "1", "--out", out], tmp_path)
    message = assert_write_failure(result, "mtrl.bench jacobian", out, disk.mode)
    assert "the result is printed above as JSON" in message
    printed = json.loads(result.stdout[result.stdout.index("\n{") + 1:])
    assert printed["benchmark"] == "jacobian" and printed["quick"] is True and "ratio_to_plain" in printed
    assert not out.exists() and not partial_files(disk.path)


@pytest.mark.parametrize(("module", "argv"), [
    ("mtrl.train", ["env=mt1", "agg=ls"]),
    ("mtrl.stl", ["env=mt1"]),
    ("mtrl.supervised", ["bench=toy", "agg=ls"]),
])
def test_hydra_files_on_a_full_disk_leave_nothing(module: str, argv: list[str], small_disk, tmp_path: Path) -> None:
    """Hydra saves the config first: on a full disk the run never starts and its directory goes again."""
    disk = small_disk(1024)
    if disk.mode == "tmpfs":
        disk.fill()
    run_dir = disk.path / "run"
    result = disk.run(module, [*argv, f"hydra.run.dir={run_dir}"], tmp_path)
    message = assert_write_failure(result, module, run_dir / ".hydra" / "config.yaml", disk.mode)
    assert message.endswith("the run did not start; nothing of it is left.")
    assert not run_dir.exists()


def _outputs_on(disk_path: Path, tmp_path: Path, name: str) -> list[str]:
    """Overrides that put the run directory on the small disk and Hydra's own files (config, log) beside it."""
    return [f"hydra.run.dir={disk_path / 'run'}", f"hydra.output_subdir={tmp_path / 'hydra'}",
            f"hydra.job_logging.handlers.file.filename={tmp_path / f'{name}.log'}"]


def test_stl_merge_on_a_full_disk(small_disk, tmp_path: Path) -> None:
    disk = small_disk(4096)
    if disk.mode != "tmpfs":
        pytest.skip("needs a file system that fills up (mounting a tmpfs is not allowed here)")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "stl_success.json").write_text(json.dumps({"reach-v3": 0.5}))
    disk.fill()
    result = disk.run("mtrl.stl", [f"merge={tmp_path / 'a'}", *_outputs_on(disk.path, tmp_path, "stl")], tmp_path)
    path = disk.path / "run" / "stl_success.json"
    assert assert_write_failure(result, "mtrl.stl", path, disk.mode).endswith("the merged runs' files are unchanged.")
    assert not path.exists() and not partial_files(disk.path)


def test_stl_task_results_on_a_full_disk(small_disk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training itself is not what is tested: a task that 'trained' in no time, then a full disk."""
    import mtrl.stl as stl
    from mtrl.validation import OutputError

    disk = small_disk(64 * 1024)
    if disk.mode != "tmpfs":
        pytest.skip("needs a file system that fills up (mounting a tmpfs is not allowed here)")
    record = {"final": 0.5, "best": 0.75, "best_step": 10, "steps": 20, "wall_time_s": 0.1,
              "evaluations": [{"step": 10, "success": 0.75}, {"step": 20, "success": 0.5}]}
    monkeypatch.setattr(stl, "train_task", lambda task, settings, run_dir: record)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(stl.validation.CONFIGS), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="stl", overrides=["tasks=[reach-v3,push-v3]"]), resolve=True)
    stl.run(cfg, disk.path / "ok")                       # room enough: both tasks saved
    assert json.loads((disk.path / "ok" / "stl_success.json").read_text()) == {"reach-v3": 0.75, "push-v3": 0.75}
    disk.fill()
    with pytest.raises(OutputError) as error:
        stl.run(cfg, disk.path / "full")
    assert str(error.value) == (f"cannot write {disk.path / 'full' / 'stl_success.json'} (No space left on device); "
                                "no task was saved yet; reach-v3 finished (success 0.75) but is not saved.")
    assert not partial_files(disk.path)


def test_supervised_plot_on_a_small_disk_keeps_the_results(small_disk, tmp_path: Path) -> None:
    disk = small_disk(48 * 1024)   # results.json fits, the toy's PNG does not
    argv = ["bench=toy", "agg=ls", "bench.steps=40", "bench.record_every=5", "tensorboard=false",
            *_outputs_on(disk.path, tmp_path, "supervised")]
    result = disk.run("mtrl.supervised", argv, tmp_path)
    run_dir = disk.path / "run"
    message = assert_write_failure(result, "mtrl.supervised", run_dir / "toy.png", disk.mode)
    assert message.endswith("the table above holds the final losses.") and "| ls |" in result.stdout
    assert json.loads((run_dir / "results.json").read_text())["aggregators"]["ls"]["per_start"]
    assert not (run_dir / "toy.png").exists() and not partial_files(disk.path)


def test_supervised_results_on_a_full_disk(small_disk, tmp_path: Path) -> None:
    disk = small_disk(4096)
    if disk.mode != "tmpfs":
        pytest.skip("needs a file system that fills up (mounting a tmpfs is not allowed here)")
    disk.fill()
    argv = ["bench=multidigits", "agg=ls", "baseline=none", "tensorboard=false", "bench.epochs=1",
            "bench.max_steps_per_epoch=2", "bench.batch_size=32", "bench.data={n_train:200,n_val:60,n_test:60}",
            *_outputs_on(disk.path, tmp_path, "supervised")]
    result = disk.run("mtrl.supervised", argv, tmp_path)
    path = disk.path / "run" / "results.json"
    assert assert_write_failure(result, "mtrl.supervised", path, disk.mode).endswith("the run is not saved.")
    assert not path.exists() and not partial_files(disk.path)
