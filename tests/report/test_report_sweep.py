"""Real runs: a submitit-local multirun of the trainer (2 aggregators x 2 seeds, a few steps each) that the
report reads; the requeue of a submitit job resumes its run directory; the launcher presets; a supervised
sweep through the same command."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mtrl.report import main
from mtrl.report.plots import read_scalars, read_signals
from mtrl.report.runs import group_runs, load_runs

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
#: One MT1 task, 12 vector steps, two evaluations (steps 6 and 12), tiny networks.
TINY = ["env=mt1", "steps=12", "warmup_steps=4", "eval_every=6", "log_every=3", "checkpoint_every=6",
        "protocol.max_episode_steps=3", "eval_episodes=1", "buffer_size=1000", "agent.hidden_dim=16",
        "agent.trunk_layers=1", "agent.batch_size=8", "progress=false", "vector_strategy=sync", "torch_threads=1"]


def _python(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``--multirun hydra/launcher=submitit_local agg=ls,pivrg seed=0,1``: four trainer subprocesses."""
    sweep_dir = tmp_path_factory.mktemp("multirun")
    _python("-m", "mtrl.train", "--multirun", "hydra/launcher=submitit_local", "agg=ls,pivrg", "seed=0,1", *TINY,
            f"hydra.sweep.dir={sweep_dir}")
    return sweep_dir


@pytest.mark.slow
def test_report_of_a_submitit_local_sweep(sweep: Path, tmp_path: Path) -> None:
    summaries = {path.parent: json.loads(path.read_text()) for path in sweep.rglob("summary.json")}
    assert len(summaries) == 4 and all(s["finished"] and s["steps"] == 12 for s in summaries.values())

    assert main([str(sweep), "--out", str(tmp_path)]) == 0
    with (tmp_path / "report.csv").open() as file:
        rows = {row["group"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"agg=ls", "agg=pivrg"}
    for agg in ("ls", "pivrg"):
        best = [s["best_mean_success"] for s in summaries.values() if s["agg"] == agg]
        final = [s["final_mean_success"] for s in summaries.values() if s["agg"] == agg]
        assert rows[f"agg={agg}"]["seeds"] == "0 1"
        assert float(rows[f"agg={agg}"]["best_mean"]) == pytest.approx(np.mean(best))
        assert float(rows[f"agg={agg}"]["final_mean"]) == pytest.approx(np.mean(final))
        assert float(rows[f"agg={agg}"]["best_se"]) == pytest.approx(np.std(best, ddof=1) / np.sqrt(2))
    for name in ("curves.png", "per_task.png", "aggregates.png", "weights.png", "omega.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name
    # The trainer's own tags: ω and Var[Δm] for PIVRG only, the task weights for both.
    signals = read_signals(group_runs(load_runs([sweep])))
    assert sorted(signals["agg=pivrg"]) == ["agg/actor/weight", "agg/critic/weight", "agg/omega", "agg/var_dm"]
    assert sorted(signals["agg=ls"]) == ["agg/actor/weight", "agg/critic/weight"]
    assert len(signals["agg=pivrg"]["agg/var_dm"][""]) == 2                       # one series per seed
    assert "(protocol metaworld)" in (tmp_path / "report.md").read_text()
    # The weight figure's data: PIVRG's ω and the critic weights from the runs' TensorBoard events.
    pivrg_run = next(path for path, s in summaries.items() if s["agg"] == "pivrg")
    scalars = read_scalars(pivrg_run, ["agg/omega/", "agg/critic/weight/"])
    assert [step for step, _ in scalars["agg/omega/reach-v3"]] == [6, 9, 12]
    assert "agg/critic/weight/reach-v3" in scalars


@pytest.mark.slow
def test_a_requeued_submitit_job_resumes_its_run_directory(sweep: Path) -> None:
    """What submitit does on a SLURM timeout or preemption: unpickle the job, call its ``checkpoint()``,
    run the returned submission. Here in a subprocess, as submitit's local job environment."""
    script = (
        "import glob, sys\n"
        "from submitit.core.utils import DelayedSubmission\n"
        "for path in sorted(glob.glob(sys.argv[1] + '/.submitit/*/*_submitted.pkl')):\n"
        "    job = DelayedSubmission.load(path)\n"
        "    if 'agg=pivrg' in job.args[0] and 'seed=1' in job.args[0]:\n"
        "        requeued = job.function.checkpoint(*job.args, **job.kwargs)\n"
        "        print('OVERRIDES', requeued.args[0][-1])\n"
        "        requeued.result()\n"
    )
    job_env = {"_TEST_CLUSTER_": "local", "SUBMITIT_LOCAL_JOB_ID": "requeued", "SUBMITIT_LOCAL_NTASKS": "1",
               "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_GLOBALID": "0",
               "SUBMITIT_LOCAL_LOCALID": "0"}
    out = _python("-c", script, str(sweep), env=job_env)
    run_dir = sweep / "mt1-reach-v3" / "pivrg" / "seed1"
    assert f"OVERRIDES resume='{run_dir.resolve()}'" in out.stdout
    assert list((run_dir / ".hydra").glob("resume_*")), "the requeued job did not write into the same run directory"
    assert "Resumed" in (run_dir / "train.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 12 and [e["step"] for e in summary["evaluations"]] == [6, 12]


def test_launcher_presets_select_mtrl_launchers() -> None:
    from hydra_plugins.mtrl_launchers.mtrl_launchers import threads_per_job

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        launchers = {name: compose(config_name="train", overrides=[f"hydra/launcher={name}"],
                                   return_hydra_config=True).hydra.launcher
                     for name in ("joblib", "submitit_slurm", "submitit_local")}
    for name, launcher in launchers.items():
        assert launcher._target_.startswith("hydra_plugins.mtrl_launchers."), name
    slurm = launchers["submitit_slurm"]
    assert slurm.gpus_per_node == 1 and slurm.max_num_timeout > 0 and slurm.timeout_min >= 60
    assert slurm.partition is None and "setup" in slurm                  # the plugin's other fields stay
    assert launchers["joblib"].n_jobs == 2 and launchers["joblib"].prefer == "processes"
    assert threads_per_job(4, 10, cores=16) == 4 and threads_per_job(4, 2, cores=16) == 8
    assert threads_per_job(-1, 10, cores=16) == 1 and threads_per_job(8, 10, cores=2) == 1


def test_a_supervised_sweep_reports_too(tmp_path: Path, capsys) -> None:
    from mtrl.supervised import bench

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="supervised", overrides=[
            "bench=multidigits", "aggs=[ls,rlw]", "seeds=[0,1]", "baseline=none", "tensorboard=false",
            "device=cpu", "bench.epochs=1", "bench.max_steps_per_epoch=2", "bench.batch_size=32",
            "bench.data={n_train:100,n_val:40,n_test:40}"])
    bench.run(cfg, tmp_path / "sweep")          # also writes the sweep's summary.json (a list, not a run)
    capsys.readouterr()
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert sorted((row["aggregator"], row["n"]) for row in rows) == [("ls", 2), ("rlw", 2)]
    for row in rows:
        clean = [json.loads(p.read_text())["clean_metric"]
                 for p in (tmp_path / "sweep" / row["aggregator"]).rglob("results.json")]
        assert row["clean_metric"]["mean"] == pytest.approx(np.mean(clean))
    assert "| multidigits | ls | 0 | 2 |" in capsys.readouterr().out


def test_joblib_launcher_splits_torch_threads_unless_the_command_line_sets_them(monkeypatch) -> None:
    from omegaconf import OmegaConf

    from hydra_plugins.mtrl_launchers import mtrl_launchers

    launched = []
    monkeypatch.setattr(mtrl_launchers._JoblibLauncher, "launch",
                        lambda self, job_overrides, initial_job_idx: launched.append(job_overrides))
    monkeypatch.setattr(mtrl_launchers, "usable_cores", lambda: 8)
    launcher = mtrl_launchers.JoblibLauncher(n_jobs=2)
    launcher.config = OmegaConf.create({"torch_threads": None})
    launcher.launch([["agg=ls"], ["agg=pivrg"], ["agg=cagrad"]], 0)
    assert launched[-1] == [["agg=ls", "torch_threads=4"], ["agg=pivrg", "torch_threads=4"],
                            ["agg=cagrad", "torch_threads=4"]]
    launcher.launch([["agg=ls", "torch_threads=3"]], 0)                 # the user's choice stays
    assert launched[-1] == [["agg=ls", "torch_threads=3"]]
    launcher.config = OmegaConf.create({"seed": 0})                       # an app without the key (mtrl.supervised)
    launcher.launch([["seed=1"]], 0)
    assert launched[-1] == [["seed=1"]]
