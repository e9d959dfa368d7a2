"""`python -m mtrl.supervised bench=<paper benchmark> data_dir=<fixture>`: one command each, sweeps, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mtrl.report.supervised import mean_ranks, paper_rows, paper_table
from mtrl.supervised import bench
from mtrl.supervised.benchmarks import get
from mtrl.supervised.benchmarks.delta import metric_deltas, task_scores
from mtrl.supervised.benchmarks.training import ConfigError
from paper_fixtures import CI_OVERRIDES, write_dense, write_qm9

ROOT = Path(__file__).resolve().parents[2]
QM9_CI = ("bench.test_size=10", "bench.val_size=10", "bench.batch_size=8")


def _cli(*args: str, expect: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="supervised", overrides=list(overrides))


def test_nyuv2_one_command_writes_the_paper_columns_delta_m_and_feeds_pivrg_the_training_split(tmp_path: Path) -> None:
    data = write_dense(tmp_path / "nyuv2")
    _cli("mtrl.supervised", "bench=nyuv2", f"data_dir={data}", "agg=pivrg", *CI_OVERRIDES,
         "bench.max_steps_per_epoch=1", f"hydra.run.dir={tmp_path / 'run'}")
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    names = ["mIoU", "pix_acc", "abs_err", "rel_err", "angle_mean", "angle_median", "within_11.25", "within_22.5",
             "within_30"]
    assert r["kind"] == "paper_benchmark" and [c["name"] for c in r["columns"]] == names
    assert r["stl"]["source"].startswith("PIVRG Table 1") and r["performance_split"] == "train"
    assert r["report_epochs"] == [1, 2] and r["steps"] == 2                      # last_mean over (up to) 10 epochs
    test = {k: np.mean([e["test"][k] for e in r["history"]]) for k in names}
    assert r["test"] == pytest.approx(test)
    assert r["delta_m_mean"] == pytest.approx(np.mean(list(r["delta_m"].values())))
    assert r["delta_m_var"] == pytest.approx(np.var(list(r["delta_m"].values())))
    # After each epoch PIVRG reads the per-task mean Δm of that epoch's training-split metrics.
    nyu = get("nyuv2")
    stl = r["stl"]["values"]
    for entry in r["history"]:
        expected = task_scores(metric_deltas(entry["train"], stl, nyu.columns), nyu.columns, nyu.tasks)
        assert entry["performance"] == pytest.approx(expected)
    assert r["aggregator_options"] == {"omega_lower": 0.5, "omega_upper": 2.0, "tau_min": 10.0}


def test_cityscapes_against_single_task_runs_of_this_toolkit_cached(tmp_path: Path) -> None:
    data = write_dense(tmp_path / "cityscapes", label_folder="label_7", num_classes=7, normals=False)
    overrides = ("bench=cityscapes", f"data_dir={data}", "agg=ls", "baseline=stl", f"cache_dir={tmp_path / 'cache'}",
                 "bench.epochs=1", "bench.max_steps_per_epoch=1", "device=cpu", "tensorboard=false")
    r = bench.run(_compose(*overrides), tmp_path / "run")
    cached = list((tmp_path / "cache").glob("cityscapes_noise0_seed0_*.json"))
    assert len(cached) == 1 and r["stl"]["source"] == str(cached[0])
    payload = json.loads(cached[0].read_text())
    assert set(payload["test"]) == {"mIoU", "pix_acc", "abs_err", "rel_err"} and r["stl"]["values"] == payload["test"]
    mtime = cached[0].stat().st_mtime_ns
    again = bench.run(_compose(*overrides, "agg=rlw"), tmp_path / "run2")
    assert again["stl"] == r["stl"] and cached[0].stat().st_mtime_ns == mtime     # read from the cache


def test_bad_inputs_are_one_line_errors_with_exit_code_2(tmp_path: Path) -> None:
    missing = _cli("mtrl.supervised", "bench=nyuv2", f"hydra.run.dir={tmp_path / 'a'}", expect=2)
    assert "data_dir=" in missing.stderr and "label/<i>.npy" in missing.stderr and "lorenmt/mtan" in missing.stderr
    absent = _cli("mtrl.supervised", "bench=cityscapes", f"data_dir={tmp_path / 'nothing'}",
                  f"hydra.run.dir={tmp_path / 'b'}", expect=2)
    assert "label_7/<i>.npy" in absent.stderr
    with pytest.raises(ConfigError, match="no label-noise option"):
        bench.run(_compose("bench=cityscapes", f"data_dir={tmp_path}", "noise=0.2"), tmp_path / "c")
    with pytest.raises(ConfigError, match="baseline"):
        bench.run(_compose("bench=cityscapes", f"data_dir={write_dense(tmp_path / 'd', label_folder='label_7', normals=False)}",
                           "baseline=median"), tmp_path / "e")


def test_qm9_multirun_sweep_and_the_paper_table_report(tmp_path: Path) -> None:
    pytest.importorskip("torch_geometric")
    data = write_qm9(tmp_path / "qm9", n=40)
    sweep = tmp_path / "sweep"
    _cli("mtrl.supervised", "--multirun", "bench=qm9", "agg=ls,pivrg", "seed=0,1", f"data_dir={data}", *CI_OVERRIDES,
         *QM9_CI, f"hydra.sweep.dir={sweep}")
    results = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    assert sorted((r["aggregator"], r["seed"]) for r in results) == [("ls", 0), ("ls", 1), ("pivrg", 0), ("pivrg", 1)]
    assert all(r["report_rule"].endswith("the best validation Δm") and r["performance_split"] == "val" for r in results)
    out = _cli("mtrl.report", str(sweep), "--no-plots").stdout
    assert "### qm9" in out and "| STL | 0.0671 | 0.1814 | 60.58 |" in out and "MR ↓" in out
    ls = [r for r in results if r["aggregator"] == "ls"]
    mean, se = np.mean([r["delta_m_mean"] for r in ls]), np.std([r["delta_m_mean"] for r in ls], ddof=1) / np.sqrt(2)
    line = next(line for line in out.splitlines() if line.startswith("| ls |"))
    assert f"{mean:.1f} ± " in line and line.endswith("| 0,1 |") and (sweep / "paper_tables.md").is_file()
    assert se > 0


def _result(method: str, seed: int, values: list[float], dm: float) -> dict:
    columns = [{"name": "acc", "task": "a", "higher_is_better": True, "header": "Acc"},
               {"name": "err", "task": "b", "higher_is_better": False, "header": "Err"}]
    return {"kind": "paper_benchmark", "bench": "toybench", "aggregator": method, "seed": seed, "noise": 0.0,
            "columns": columns, "test": dict(zip(["acc", "err"], values)), "delta_m_mean": dm, "delta_m_var": 1.0,
            "stl": {"source": "hand-made", "values": {"acc": 1.0, "err": 1.0}}}


def test_report_rows_mean_standard_error_and_mean_rank_with_ties() -> None:
    results = [_result("ls", 0, [0.5, 2.0], 10.0), _result("ls", 1, [0.7, 4.0], 20.0),
               _result("pivrg", 0, [0.6, 1.0], 0.0), _result("nashmtl", 0, [0.9, 3.0], 5.0)]
    rows = paper_rows(results)["toybench"]
    assert [row["method"] for row in rows] == ["ls", "nashmtl", "pivrg"]
    ls = rows[0]
    assert ls["cells"]["acc"][:2] == pytest.approx((0.6, 0.1)) and ls["delta_m"][:2] == pytest.approx((15.0, 5.0))
    # acc (higher better): nashmtl 0.9 > ls 0.6 = pivrg 0.6 -> ranks 2.5, 1, 2.5;
    # err (lower better): pivrg 1 < ls 3 = nashmtl 3 -> ranks 2.5, 2.5, 1
    assert mean_ranks(rows) == pytest.approx([2.5, 1.75, 1.75])
    table = paper_table("toybench", rows)
    assert "| ls | 0.6000 ± 0.1000 | 3.00 ± 1.00 | 2.50 | 15.00 ± 5.00 | 1.00 ± 0.0000 | 0,1 |" in table
    assert "| pivrg | 0.6000 | 1.00 | 1.75 | 0.0000 | 1.00 | 0 |" in table
