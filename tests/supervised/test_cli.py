"""`python -m mtrl.supervised` on every benchmark in a tiny configuration, sweeps, multiruns and summaries;
and the README's adapter example."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mtrl.supervised import bench
from mtrl.supervised.data import MNIST_FILES, write_idx
from mtrl.report import main as report_main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
TINY_DIGITS = ["bench.epochs=2", "bench.max_steps_per_epoch=3", "bench.batch_size=32",
               "bench.data={n_train:200,n_val:60,n_test:60}"]


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="supervised", overrides=list(overrides))


def test_toy_cli_writes_plot_table_and_results(tmp_path: Path) -> None:
    out = _cli("mtrl.supervised", "bench=toy", "aggs=[ls,pivrg]", "bench.steps=40", "bench.record_every=5",
               f"hydra.run.dir={tmp_path}")
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["aggregators"]) == {"ls", "pivrg"}
    per_start = results["aggregators"]["pivrg"]["per_start"]
    assert len(per_start) == 5 and all(np.isfinite([r["L1"], r["L2"]]).all() for r in per_start)
    assert (tmp_path / "toy.png").stat().st_size > 10_000
    assert "| pivrg | (-8.5, 7.5) |" in out.stdout and (tmp_path / "final_losses.md").is_file()
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_multidigits_with_stl_baseline_and_cache(tmp_path: Path) -> None:
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    overrides = ("bench=multidigits", "agg=excessmtl", "noise=0.4", "seed=1", "device=cpu", *TINY_DIGITS,
                 f"cache_dir={cache}")
    r = bench.run(_compose(*overrides), run_dir)
    assert r == json.loads((run_dir / "results.json").read_text())
    assert r["bench"] == "multidigits" and r["aggregator"] == "excessmtl" and r["noise"] == 0.4 and r["seed"] == 1
    assert r["aggregator_options"]["warmup_steps"] == 9            # warmup_epochs: 3 × 3 steps per epoch
    assert r["clean_tasks"] == [0] and r["noisy_tasks"] == [1] and r["steps"] == 6
    assert 0 <= r["clean_accuracy"] <= 1 and r["clean_accuracy"] == r["test_metrics"][0]
    assert 0 <= r["clean_weight"] <= 1 and len(r["delta_m"]) == 2
    assert r["delta_m_var"] == pytest.approx(np.var(r["delta_m"]))
    cached = list(cache.glob("multidigits_noise0.4_seed1_*.json"))
    assert len(cached) == 1 and r["stl"]["source"] == str(cached[0])
    assert any(run_dir.glob("events.out.tfevents.*"))
    # A second run reuses the cached single-task references (a changed budget would not).
    stamp = cached[0].stat().st_mtime_ns
    again = bench.run(_compose(*overrides, "agg=ls", "tensorboard=false"), tmp_path / "again")
    assert again["stl"] == r["stl"] and cached[0].stat().st_mtime_ns == stamp
    assert bench.stl_cache_path(cache, {**_compose(*overrides).bench, "epochs": 3}, 0.4, 1) != cached[0]


def test_multirun_over_seeds_then_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "multi"
    _cli("mtrl.supervised", "--multirun", "bench=multidigits", "agg=rlw", "seed=0,1", "baseline=none",
         "tensorboard=false", *TINY_DIGITS, f"hydra.sweep.dir={sweep}")
    assert len(list(sweep.rglob("results.json"))) == 2
    assert report_main([str(sweep)]) == 0
    rows = json.loads((sweep / "summary.json").read_text())
    assert [(r["aggregator"], r["n"], r["seeds"]) for r in rows] == [("rlw", 2, [0, 1])]
    accuracy = [json.loads(p.read_text())["clean_metric"] for p in sorted(sweep.rglob("results.json"))]
    assert rows[0]["clean_metric"]["mean"] == pytest.approx(np.mean(accuracy))
    assert rows[0]["clean_metric"]["std"] == pytest.approx(np.std(accuracy, ddof=1))
    assert "| multidigits | rlw | 0 | 2 |" in (sweep / "summary.md").read_text()


def test_noisyregression_with_pivrg_and_representation_path(tmp_path: Path) -> None:
    cfg = _compose("bench=noisyregression", "agg=pivrg", "noise=0.5", "wrt=representation", "bench.epochs=2",
                   "bench.max_steps_per_epoch=3", "bench.batch_size=32", "bench.data={n_train:200,n_val:50,n_test:50}",
                   f"cache_dir={tmp_path / 'cache'}", "tensorboard=false")
    r = bench.run(cfg, tmp_path / "run")
    assert r["metric"] == ["mse"] * 7 and r["higher_is_better"] == [False] * 7
    assert r["noisy_tasks"] == [0, 1] and r["clean_tasks"] == [2, 3, 4, 5, 6] and r["wrt"] == "representation"
    assert "clean_accuracy" not in r and r["clean_metric"] > 0
    # Δm against the STL test MSE, lower is better: Δm_i = (M_i - M_i^STL) / M_i^STL · 100.
    stl = np.array(r["stl"]["test"])
    np.testing.assert_allclose(r["delta_m"], (np.array(r["test_metrics"]) - stl) / stl * 100)
    assert all("val_delta_m" in h for h in r["history"])      # PIVRG read validation Δm from epoch 0 on


def test_stl_file_and_cache_reuse(tmp_path: Path) -> None:
    stl = tmp_path / "stl.json"
    stl.write_text(json.dumps([0.5, 0.25]))
    cfg = _compose("bench=multidigits", "agg=ls", *TINY_DIGITS, f"stl_file={stl}", "tensorboard=false")
    r = bench.run(cfg, tmp_path / "a")
    assert r["stl"]["test"] == [0.5, 0.25]
    acc = np.array(r["test_metrics"])
    np.testing.assert_allclose(r["delta_m"], -(acc - [0.5, 0.25]) / np.array([0.5, 0.25]) * 100)


def _write_mnist(folder: Path, n_train: int = 60, n_test: int = 24) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / MNIST_FILES["train_images"], rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(folder / MNIST_FILES["train_labels"], (np.arange(n_train) % 10).astype(np.uint8))
    write_idx(folder / (MNIST_FILES["test_images"] + ".gz"), rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(folder / (MNIST_FILES["test_labels"] + ".gz"), (np.arange(n_test) % 10).astype(np.uint8))


def test_multimnist_on_a_generated_idx_fixture(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "mnist")
    cfg = _compose("bench=multimnist", f"data_dir={tmp_path / 'mnist'}", "agg=nashmtl", "noise=0.6", "bench.epochs=1",
                   "bench.batch_size=16", "baseline=none")
    r = bench.run(cfg, tmp_path / "run")
    assert r["bench"] == "multimnist" and r["steps"] == 3 and len(r["test_metrics"]) == 2
    assert r["delta_m"] is None and (tmp_path / "run" / "results.json").is_file()


def test_a_zero_stl_reference_drops_delta_m_instead_of_failing(tmp_path: Path, caplog) -> None:
    stl = tmp_path / "stl.json"
    stl.write_text(json.dumps({"val": [0.5, 0.0], "test": [0.5, 0.5]}))
    r = bench.run(_compose("bench=multidigits", "agg=pivrg", *TINY_DIGITS, f"stl_file={stl}", "tensorboard=false"),
                  tmp_path / "run")
    assert r["delta_m"] is None and "Δm is undefined" in caplog.text


def test_multimnist_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(bench.BenchError, match="data_dir"):
        bench.run(_compose("bench=multimnist"), tmp_path / "a")
    with pytest.raises(bench.BenchError, match="train-images-idx3-ubyte"):
        bench.run(_compose("bench=multimnist", f"data_dir={tmp_path}"), tmp_path / "b")


def test_noise_sweep_writes_fig6_plot_and_summary(tmp_path: Path) -> None:
    cfg = _compose("bench=multidigits", "aggs=[ls,excessmtl]", "noises=[0.0,0.8]", "baseline=none", "tensorboard=false",
                   *TINY_DIGITS)
    out = bench.run(cfg, tmp_path)
    assert out["runs"] == 4
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert sorted((r["aggregator"], r["noise"]) for r in rows) == [("excessmtl", 0.0), ("excessmtl", 0.8),
                                                                   ("ls", 0.0), ("ls", 0.8)]
    assert (tmp_path / "noise_sweep.png").stat().st_size > 10_000
    assert (tmp_path / "ls" / "noise0.8" / "seed0" / "results.json").is_file()


def test_bad_aggregator_or_benchmark_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Valid names"):
        bench.run(_compose("bench=multidigits", "aggs=[nope]"), tmp_path)
    with pytest.raises(ValueError, match="Valid options"):
        bench.run(_compose("bench=toy", "agg=ls", "+agg.options.zzz=1"), tmp_path)


# ------------------------------------------------------------------------------------ README example
EXAMPLE = Path(__file__).with_name("readme_example.py")


def test_readme_example_runs(capsys) -> None:
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "task weights" in capsys.readouterr().out


def test_readme_contains_the_example_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    assert EXAMPLE.read_text().strip() in readme
