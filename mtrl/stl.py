"""Single-task baseline (STL): stable-baselines3 SAC trained on each task of a benchmark alone.

    python -m mtrl.stl env=mt10 steps=2000000 seed=0
    python -m mtrl.stl env=mt1 env.task=push-v3 protocol=mtrl
    python -m mtrl.stl env=mt10 'env.tasks=[reach-v3,window-open-v3]'   # the tasks of a subset run

For every task: SB3 SAC with the multi-task agent's hyperparameters where SB3 allows (3x400 ReLU networks,
Adam 3e-4, batch 128 = the multi-task batch per task, γ 0.99, τ 0.005, learned temperature from 1 with target
entropy -|A|, random warm-up steps, one update per step) on the task's gymnasium environment from
:mod:`envs` (no one-hot; the same goals as in the multi-task run of the same seed and protocol; rewards
normalised under ``protocol=mtrl``), evaluated with the deterministic policy on a separate evaluation
environment every ``eval_every`` steps and at the end. The run directory gets

* ``stl_success.json``: ``{task: success rate}``, each task's best (``report=best``) or final success, the
  file ``python -m mtrl.train stl_success=...`` reads as s^STL; rewritten after every task;
* ``stl_summary.json``: per task the final and best success, every evaluation, steps and wall time, and the
  config.

Tasks train one after the other; to use several cores, start one process per task subset
(``tasks=[reach-v3]``, ...) and join their files with ``python -m mtrl.stl merge='runs/stl/mt10/*/*/*'``.

Config: ``configs/stl.yaml`` with the ``env/`` and ``protocol/`` groups of the trainer.
"""

from __future__ import annotations

import glob
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mtrl import validation
from mtrl.experiment.checkpoint import atomic_write_json
from mtrl.validation import ConfigError, boolean, choice, integer, number

log = logging.getLogger("mtrl.stl")

STL_SUCCESS_NAME = "stl_success.json"
STL_SUMMARY_NAME = "stl_summary.json"
_REPORTS = ("best", "final")


class STLConfigError(ConfigError):
    """A value in the STL config that cannot work; raised before any environment is built."""


def validate(cfg: dict) -> dict[str, Any]:
    """Checks the whole config and returns the settings of the run (raises :class:`STLConfigError`)."""
    try:
        return _settings(cfg)
    except STLConfigError:
        raise
    except ConfigError as error:
        raise STLConfigError(str(error)) from error


def _settings(cfg: dict) -> dict[str, Any]:
    from mtrl.experiment.config import benchmark_and_tasks, make_protocol
    from mtrl.validation import resolve_device

    env_cfg = cfg.get("env") or {}
    _, _, benchmark_tasks = benchmark_and_tasks(env_cfg)
    protocol = make_protocol(cfg.get("protocol") or {})

    tasks = cfg.get("tasks")
    if tasks is None:
        tasks = benchmark_tasks
    else:
        tasks = [tasks] if isinstance(tasks, str) else list(tasks) if isinstance(tasks, (list, tuple)) else [tasks]
        unknown = [task for task in tasks if task not in benchmark_tasks]
        repeated = sorted({str(task) for task in tasks if tasks.count(task) > 1})
        if unknown or not tasks:
            problem = f"{unknown} not in {env_cfg.get('name')}" if unknown else "an empty list"
            raise STLConfigError(f"tasks: {problem}. Valid tasks: {', '.join(benchmark_tasks)}.")
        if repeated:
            raise STLConfigError(f"tasks: {', '.join(repeated)} appear(s) more than once; list each task once.")
    eval_episodes = cfg.get("eval_episodes")
    eval_episodes = protocol.eval_episodes_per_task if eval_episodes is None else integer(eval_episodes, "eval_episodes", 1)
    device = cfg.get("device")
    resolve_device(device)   # cpu, auto, cuda or cuda:N that exists here
    threads = cfg.get("torch_threads")
    if threads is not None:
        threads = integer(threads, "torch_threads", 1)

    sac = cfg.get("sac")
    if not isinstance(sac, dict):
        raise STLConfigError(f"sac should hold SAC's hyperparameters (configs/stl.yaml). Found `sac={sac!r}`.")
    settings = dict(
        env_name=str(env_cfg.get("name")),
        tasks=tasks,
        protocol=protocol,
        seed=integer(cfg.get("seed"), "seed", 0),
        device=str(device),
        torch_threads=threads,
        steps=integer(cfg.get("steps"), "steps", 1),
        warmup_steps=integer(cfg.get("warmup_steps"), "warmup_steps", 0),
        eval_every=integer(cfg.get("eval_every"), "eval_every", 0),
        eval_episodes=eval_episodes,
        report=choice(cfg.get("report"), "report", _REPORTS),
        tensorboard=boolean(cfg.get("tensorboard"), "tensorboard"),
        hidden_dim=integer(sac.get("hidden_dim"), "sac.hidden_dim", 1),
        hidden_layers=integer(sac.get("hidden_layers"), "sac.hidden_layers", 1),
        lr=number(sac.get("lr"), "sac.lr", 0, low_open=True),
        batch_size=integer(sac.get("batch_size"), "sac.batch_size", 1),
        gamma=number(sac.get("gamma"), "sac.gamma", 0, 1, low_open=True),
        tau=number(sac.get("tau"), "sac.tau", 0, 1, low_open=True),
        buffer_size=integer(sac.get("buffer_size"), "sac.buffer_size", 1),
        init_temperature=number(sac.get("init_temperature"), "sac.init_temperature", 0, low_open=True),
        train_freq=integer(sac.get("train_freq"), "sac.train_freq", 1),
        gradient_steps=integer(sac.get("gradient_steps"), "sac.gradient_steps", 1),
    )
    if settings["warmup_steps"] >= settings["steps"]:
        log.warning("warmup_steps=%d >= steps=%d: SB3 takes random actions only and never learns.",
                    settings["warmup_steps"], settings["steps"])
    return settings


def train_task(task: str, s: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Trains SB3 SAC on ``task`` alone and returns its evaluation record."""
    import numpy as np
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    import envs

    protocol, seed = s["protocol"], s["seed"]
    train_env = envs.make_single_task_env(task, protocol, seed)
    eval_env = envs.make_eval_env("mt1", protocol, seed, task=task, vector_strategy="sync", one_hot=False)
    evaluations: list[dict[str, Any]] = []

    def evaluate(model: SAC, step: int) -> float:
        success = envs.evaluate(
            lambda obs: model.predict(obs, deterministic=True)[0], eval_env, s["eval_episodes"]
        )[task]
        evaluations.append({"step": step, "success": success})
        log.info("%s step %d: eval success %.2f", task, step, success)
        return success

    class PeriodicEvaluation(BaseCallback):
        def _on_step(self) -> bool:
            if s["eval_every"] and self.num_timesteps % s["eval_every"] == 0:
                self.logger.record("eval/success", evaluate(self.model, self.num_timesteps))
            return True

    model = SAC(
        "MlpPolicy",
        train_env,
        learning_rate=s["lr"],
        buffer_size=min(s["buffer_size"], s["steps"]),
        learning_starts=s["warmup_steps"],
        batch_size=s["batch_size"],
        tau=s["tau"],
        gamma=s["gamma"],
        train_freq=s["train_freq"],
        gradient_steps=s["gradient_steps"],
        ent_coef=f"auto_{s['init_temperature']}",
        target_entropy="auto",
        policy_kwargs=dict(net_arch=[s["hidden_dim"]] * s["hidden_layers"], activation_fn=torch.nn.ReLU),
        tensorboard_log=str(run_dir / "tb") if s["tensorboard"] else None,
        seed=seed,
        device=s["device"],
        verbose=0,
    )
    started = time.perf_counter()
    try:
        model.learn(total_timesteps=s["steps"], callback=PeriodicEvaluation(), tb_log_name=task)
        if not evaluations or evaluations[-1]["step"] != s["steps"]:
            evaluate(model, s["steps"])
    finally:
        train_env.close()
        eval_env.close()
    successes = np.asarray([record["success"] for record in evaluations])
    return {
        "final": float(successes[-1]),
        "best": float(successes.max()),
        "best_step": int(evaluations[int(successes.argmax())]["step"]),
        "steps": s["steps"],
        "wall_time_s": round(time.perf_counter() - started, 3),
        "evaluations": evaluations,
    }


def merge_inputs(patterns: Sequence[str] | str) -> tuple[dict[str, float], list[Path]]:
    """The ``stl_success.json`` of several STL runs (directories or glob patterns), checked and joined.

    Each file must be ``{task: success rate}`` with Meta-World task names and rates in [0, 1]; a task
    found in several runs is an error (:class:`STLConfigError`). Reads only: :func:`merge` writes.
    """
    import envs

    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise STLConfigError(f"merge should list run directories or glob patterns, e.g. merge='runs/stl/mt10/*/*/*'. "
                             f"Found `merge={patterns!r}`.")
    directories = sorted({Path(p) for pattern in patterns for p in (glob.glob(str(Path(pattern).expanduser()))
                                                                      or [pattern])})
    success: dict[str, float] = {}
    sources: dict[str, Path] = {}
    for directory in directories:
        path = directory / STL_SUCCESS_NAME if directory.is_dir() else directory
        try:
            part = json.loads(path.read_text())
        except OSError as error:
            raise STLConfigError(f"merge: cannot read {path} ({error.strerror or error}).") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise STLConfigError(f"merge: {path} is not valid JSON ({validation.one_line(error)}).") from error
        if not isinstance(part, dict) or not part:
            raise STLConfigError(f"merge: {path} should hold {{task: success rate}} (what `python -m mtrl.stl` writes).")
        for task, rate in part.items():
            if task not in envs.BENCHMARKS["mt1"]:
                raise STLConfigError(f"merge: {path} names `{task}`, not a Meta-World v3 task.")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise STLConfigError(f"merge: {path} gives {task} the success rate {rate!r}; a rate is a number in [0, 1].")
            if task in success:
                raise STLConfigError(f"merge: task {task} appears in more than one run ({sources[task]} and {path}).")
            success[task], sources[task] = float(rate), path
    return success, directories


def merge(patterns: list[str] | str, run_dir: Path) -> dict[str, float]:
    """Joins the ``stl_success.json`` of several STL runs (directories or glob patterns) into ``run_dir``.

    For tasks trained in parallel processes (``tasks=[reach-v3]`` in one, ``tasks=[push-v3]`` in another);
    the inputs are checked by :func:`merge_inputs`.
    """
    success, directories = merge_inputs(patterns)
    path = Path(run_dir) / STL_SUCCESS_NAME
    with validation.writing(path, "the merged runs' files are unchanged"):
        atomic_write_json(success, path)
    log.info("Merged %d task(s) from %d run(s) into %s", len(success), len(directories), path)
    return success


def _check(job: DictConfig, overrides: Sequence[str]) -> Any:
    """``python -m mtrl.stl``'s values: the merge inputs, or every training setting."""
    plain = OmegaConf.to_container(job, resolve=True)
    assert isinstance(plain, dict)
    if plain.get("merge") is not None:
        return merge_inputs(plain["merge"])
    return validate(plain)


#: ``python -m mtrl.stl`` for the validation layer.
COMMAND = validation.HydraCommand(prog="mtrl.stl", config_name="stl", check=_check)


def run(cfg: DictConfig | dict, run_dir: str | Path) -> dict[str, float]:
    """Trains every task of the config in turn and writes the JSON files into ``run_dir``
    (or, with ``merge`` set, only joins earlier runs' files).

    Raises:
        STLConfigError: a bad value (before anything is built).
        OutputError: a file could not be written (full disk); the files of the tasks done before are intact.
    """
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    plain.pop("hydra", None)
    if plain.get("merge") is not None:
        return merge(plain["merge"], Path(run_dir))
    s = validate(plain)
    run_dir = Path(run_dir)
    if s["torch_threads"] is not None:
        import torch

        torch.set_num_threads(s["torch_threads"])
    log.info(
        "STL: SB3 SAC on %d task(s) of %s, protocol %s, %d steps each, seed %d -> %s",
        len(s["tasks"]), s["env_name"], s["protocol"].name, s["steps"], s["seed"], run_dir,
    )
    success: dict[str, float] = {}
    details: dict[str, Any] = {}
    for task in s["tasks"]:
        saved = (f"the tasks done before ({', '.join(success)}) are in {run_dir / STL_SUCCESS_NAME}" if success
                 else "no task was saved yet")
        with validation.writing(run_dir, f"{saved}; {task} stopped"):
            details[task] = train_task(task, s, run_dir)   # SB3 writes its TensorBoard files as it trains
        success[task] = details[task][s["report"]]
        summary = {"report": s["report"], "per_task": details, "config": plain}
        for path, payload in ((run_dir / STL_SUCCESS_NAME, success), (run_dir / STL_SUMMARY_NAME, summary)):
            with validation.writing(path, f"{saved}; {task} finished (success {success[task]:.2f}) but is not saved"):
                atomic_write_json(payload, path)
        log.info("%s: final success %.2f, best %.2f", task, details[task]["final"], details[task]["best"])
    mean = sum(success.values()) / len(success)
    log.info("STL mean success (%s): %.3f; written to %s", s["report"], mean, run_dir / STL_SUCCESS_NAME)
    return success


@hydra.main(version_base="1.3", config_path=str(validation.CONFIGS), config_name="stl")
def _app(cfg: DictConfig) -> float:
    """Hydra entry; returns the mean STL success (for sweepers)."""
    with validation.job() as run_dir:
        success = run(cfg, run_dir)
        return sum(success.values()) / len(success)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mtrl.stl``: bad input exits 2 with one line, before anything is written; then Hydra runs."""
    validation.run_hydra(COMMAND, _app, argv)


if __name__ == "__main__":
    main()
