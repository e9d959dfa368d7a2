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
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mtrl.stl")

STL_SUCCESS_NAME = "stl_success.json"
STL_SUMMARY_NAME = "stl_summary.json"
_REPORTS = ("best", "final")


class STLConfigError(ValueError):
    """A value in the STL config that cannot work; raised before any environment is built."""


def _positive_int(cfg: dict, key: str, minimum: int = 1) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise STLConfigError(f"`{key}` should be {kind}. Found `{key}={value!r}`.")
    return value


def _positive_float(cfg: dict, key: str) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise STLConfigError(f"`sac.{key}` should be a positive number. Found `{value!r}`.")
    return float(value)


def validate(cfg: dict) -> dict[str, Any]:
    """Checks the whole config and returns the settings of the run (raises :class:`STLConfigError`)."""
    import envs

    env_cfg = cfg.get("env") or {}
    try:
        subset = env_cfg.get("tasks")   # env.tasks (a subset of mt10/mt50) or env.task (mt1)
        benchmark_tasks = envs.benchmark_tasks(str(env_cfg.get("name")), env_cfg.get("task") if subset is None else subset)
    except ValueError as error:
        raise STLConfigError(f"env: {error}") from error
    protocol_cfg = dict(cfg.get("protocol") or {})
    try:
        protocol = envs.make_protocol(str(protocol_cfg.pop("name", None)), **protocol_cfg)
    except (ValueError, TypeError) as error:
        raise STLConfigError(f"protocol: {error}") from error

    tasks = cfg.get("tasks")
    if tasks is None:
        tasks = benchmark_tasks
    else:
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [task for task in tasks if task not in benchmark_tasks]
        if unknown or not tasks:
            raise STLConfigError(
                f"tasks: {unknown or 'an empty list'} not in {env_cfg.get('name')}. "
                f"Valid tasks: {', '.join(benchmark_tasks)}."
            )
    eval_episodes = cfg.get("eval_episodes")
    eval_episodes = protocol.eval_episodes_per_task if eval_episodes is None else _positive_int(cfg, "eval_episodes")
    report = cfg.get("report")
    if report not in _REPORTS:
        raise STLConfigError(f"`report` should be one of {', '.join(_REPORTS)}. Found `report={report!r}`.")
    device = str(cfg.get("device"))
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", device):
        raise STLConfigError(f"`device` should be cpu, auto, cuda or cuda:N. Found `device={device!r}`.")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise STLConfigError(f"device={device} but CUDA is not available; use device=cpu.")

    threads = cfg.get("torch_threads")
    if threads is not None:
        threads = _positive_int(cfg, "torch_threads")

    sac = dict(cfg.get("sac") or {})
    settings = dict(
        env_name=str(env_cfg.get("name")),
        tasks=tasks,
        protocol=protocol,
        seed=_positive_int(cfg, "seed", minimum=0),
        device=device,
        torch_threads=threads,
        steps=_positive_int(cfg, "steps"),
        warmup_steps=_positive_int(cfg, "warmup_steps", minimum=0),
        eval_every=_positive_int(cfg, "eval_every", minimum=0),
        eval_episodes=eval_episodes,
        report=report,
        tensorboard=bool(cfg.get("tensorboard")),
        hidden_dim=_positive_int(sac, "hidden_dim"),
        hidden_layers=_positive_int(sac, "hidden_layers"),
        lr=_positive_float(sac, "lr"),
        batch_size=_positive_int(sac, "batch_size"),
        gamma=_positive_float(sac, "gamma"),
        tau=_positive_float(sac, "tau"),
        buffer_size=_positive_int(sac, "buffer_size"),
        init_temperature=_positive_float(sac, "init_temperature"),
        train_freq=_positive_int(sac, "train_freq"),
        gradient_steps=_positive_int(sac, "gradient_steps"),
    )
    if settings["gamma"] > 1 or settings["tau"] > 1:
        raise STLConfigError("`sac.gamma` and `sac.tau` should be in (0, 1].")
    return settings


def _write_json(obj: Any, path: Path) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(obj, file, indent=2)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


def merge(patterns: list[str] | str, run_dir: Path) -> dict[str, float]:
    """Joins the ``stl_success.json`` of several STL runs (directories or glob patterns) into ``run_dir``.

    For tasks trained in parallel processes (``tasks=[reach-v3]`` in one, ``tasks=[push-v3]`` in another).
    A task found in several runs is an error.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    directories = sorted({Path(p) for pattern in patterns for p in (glob.glob(str(pattern)) or [pattern])})
    success: dict[str, float] = {}
    for directory in directories:
        path = directory / STL_SUCCESS_NAME if directory.is_dir() else directory
        try:
            part = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise STLConfigError(f"merge: cannot read {path} ({error}).") from error
        twice = sorted(set(part) & set(success))
        if twice:
            raise STLConfigError(f"merge: task(s) {', '.join(twice)} appear in more than one run ({path}).")
        success.update(part)
    if not success:
        raise STLConfigError(f"merge: no {STL_SUCCESS_NAME} found in {patterns}.")
    _write_json(success, run_dir / STL_SUCCESS_NAME)
    log.info("Merged %d task(s) from %d run(s) into %s", len(success), len(directories), run_dir / STL_SUCCESS_NAME)
    return success


def run(cfg: DictConfig | dict, run_dir: str | Path) -> dict[str, float]:
    """Trains every task of the config in turn and writes the JSON files into ``run_dir``
    (or, with ``merge`` set, only joins earlier runs' files)."""
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
        details[task] = train_task(task, s, run_dir)
        success[task] = details[task][s["report"]]
        _write_json(success, run_dir / STL_SUCCESS_NAME)
        _write_json({"report": s["report"], "per_task": details, "config": plain}, run_dir / STL_SUMMARY_NAME)
        log.info("%s: final success %.2f, best %.2f", task, details[task]["final"], details[task]["best"])
    mean = sum(success.values()) / len(success)
    log.info("STL mean success (%s): %.3f; written to %s", s["report"], mean, run_dir / STL_SUCCESS_NAME)
    return success


@hydra.main(version_base="1.3", config_path="../configs", config_name="stl")
def main(cfg: DictConfig) -> float:
    """Hydra entry; returns the mean STL success (for sweepers)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        success = run(cfg, HydraConfig.get().runtime.output_dir)
    except STLConfigError as error:
        log.error("%s", error)
        print(f"mtrl.stl: error: {error}", file=sys.stderr)
        sys.exit(2)
    return sum(success.values()) / len(success)


if __name__ == "__main__":
    main()
