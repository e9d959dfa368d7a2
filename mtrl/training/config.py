"""From the Hydra config to checked training settings, before any environment starts.

:func:`prepare` is the single entry: it merges a resumed run's saved config (``resume=<run dir>``),
checks every value a user can get wrong (unknown env / protocol / aggregator, a batch that does not
split evenly over the tasks, non-positive step counts or rates, an unreadable STL file or resume
directory) and raises :class:`ConfigError` with a message naming the override to fix. Nothing here
builds an environment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import mtrl.aggregation as aggregation

from mtrl.training.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint

__all__ = ["ConfigError", "TrainSettings", "prepare", "resolve_device", "merge_resumed_config",
           "FIXED_ON_RESUME"]

log = logging.getLogger(__name__)

STL_SUCCESS_NAME = "stl_success.json"   # what `python -m mtrl.stl` writes in its run directory

#: Keys that define the experiment itself: a resume keeps the saved values even when the command line
#: names them (another aggregator, task set, seed or network shape would not continue the same run; the
#: saved aggregator and network states could not even be loaded). Every other key typed on the resume
#: command line changes the saved value, e.g. `resume=<dir> steps=3000000` or `agent.max_grad_norm=1.0`.
FIXED_ON_RESUME = ("env", "protocol", "agg", "seed", "buffer_size", "agent.name", "agent.hidden_dim",
                   "agent.trunk_layers", "agent.head_layers", "agent.aggregate")

ON_NONFINITE = ("stop", "skip")


class ConfigError(ValueError):
    """A bad value in the training config; the message names the override to fix."""


@dataclass
class TrainSettings:
    """Everything the trainer needs, checked. Built by :func:`prepare`."""

    benchmark: str
    env_name: str                       # mt10, or mt1-reach-v3 for a single task
    task: str | None
    task_names: list[str]
    protocol: Any                       # envs.ProtocolConfig
    agent: Any                          # agents.SACConfig
    agg_name: str
    agg_options: dict[str, Any]
    seed: int
    device: torch.device
    steps: int
    warmup_steps: int
    buffer_size: int
    eval_every: int
    eval_episodes: int
    log_every: int
    checkpoint_every: int
    checkpoint_buffer: bool
    performance_source: str
    train_success_window: int
    stl_reference: np.ndarray           # [k] s^STL per task (floored if stl_floor is set)
    progress: bool
    vector_strategy: str
    on_nonfinite: str                   # stop | skip (divergence guard)
    q_bound: float                      # |Q| beyond this counts as divergence
    torch_threads: int | None
    config: dict[str, Any]              # the effective config, plain (saved in checkpoints and summary.json)
    resume: Path | None = None
    checkpoint: dict[str, Any] | None = field(default=None, repr=False)
    backend: str = "auto"               # env.backend: envpool | gymnasium | auto (envs.resolve_backend)
    eval_async: bool = True             # evaluate on a thread while training goes on (loop.py)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def batch_per_task(self) -> int:
        return self.agent.batch_size // self.num_tasks

    def make_aggregator(self) -> aggregation.Aggregator:
        return aggregation.make(self.agg_name, **self.agg_options)


# ------------------------------------------------------------------------------------------ entry
def prepare(cfg: DictConfig, overrides: Sequence[str] | None = None) -> TrainSettings:
    """Check ``cfg`` (merging a resumed run's saved config) and return the settings.

    ``overrides`` are the command line's ``key=value`` strings: on ``resume=`` they are the only values
    that change the saved config (default: Hydra's task overrides when under Hydra, else none).

    Raises:
        ConfigError: for any bad value; raised before an environment is built.
    """
    checkpoint = None
    resume = _get(cfg, "resume")
    if resume is not None:
        resume_dir = Path(str(resume)).expanduser()
        checkpoint = _load_resume(resume_dir)
        if overrides is None:
            overrides = _hydra_overrides()
        cfg = merge_resumed_config(checkpoint["config"], cfg, overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)

    # Import here: the envs and agents packages pull in metaworld / mujoco.
    import agents
    from agents.execution import resolve_compile_mode
    import envs

    env_cfg = _section(plain, "env")
    benchmark = str(env_cfg.get("benchmark", env_cfg.get("name")))
    # env.tasks (a subset of mt10/mt50, e.g. an MT4 on a laptop) or env.task (the task of mt1)
    task = env_cfg.get("tasks") if env_cfg.get("tasks") is not None else env_cfg.get("task")
    try:
        task_names = list(envs.benchmark_tasks(benchmark, task))
    except ValueError as error:
        raise ConfigError(f"env: {error}") from error
    k = len(task_names)

    protocol_cfg = dict(_section(plain, "protocol"))
    protocol_name = protocol_cfg.pop("name", None)
    try:
        protocol = envs.make_protocol(str(protocol_name), **protocol_cfg)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"protocol: {error}") from error

    settings = dict(
        steps=_positive_int(plain, "steps"),
        warmup_steps=_positive_int(plain, "warmup_steps"),
        buffer_size=_positive_int(plain, "buffer_size"),
        eval_every=_positive_int(plain, "eval_every"),
        log_every=_positive_int(plain, "log_every"),
        checkpoint_every=_positive_int(plain, "checkpoint_every"),
        train_success_window=_positive_int(plain, "train_success_window"),
        seed=_int(plain, "seed", minimum=0),
    )
    if settings["warmup_steps"] >= settings["steps"]:
        log.warning("warmup_steps=%d >= steps=%d: this run takes random actions only and never updates.",
                    settings["warmup_steps"], settings["steps"])
    if settings["buffer_size"] < k:
        raise ConfigError(f"buffer_size={settings['buffer_size']} holds less than one transition per task ({k} tasks).")
    eval_episodes = plain.get("eval_episodes")
    if eval_episodes is None:
        eval_episodes = protocol.eval_episodes_per_task
    else:
        eval_episodes = _positive_int(plain, "eval_episodes")

    agent_config = _agent_config(agents.SACConfig, _section(plain, "agent"), k, benchmark)

    agg_cfg = _section(plain, "agg")
    agg_name = agg_cfg.get("name")
    agg_options = dict(agg_cfg.get("options") or {})
    try:
        aggregation.make(agg_name, **agg_options)   # unknown name / option / bad value
    except (ValueError, TypeError) as error:
        raise ConfigError(f"agg: {error}") from error

    source = plain.get("performance_source")
    if source not in ("eval", "train"):
        raise ConfigError(f"performance_source should be `eval` or `train`. Found `performance_source={source!r}`.")
    reference = load_stl_reference(plain.get("stl_success"), task_names, plain.get("stl_floor"))

    strategy = plain.get("vector_strategy", "auto")
    if strategy not in ("auto", "sync", "async"):
        raise ConfigError(f"vector_strategy should be auto, sync or async. Found `vector_strategy={strategy!r}`.")

    backend = env_cfg.get("backend", "auto")
    if backend not in envs.BACKENDS:
        raise ConfigError(f"env.backend should be one of {', '.join(envs.BACKENDS)}. Found `env.backend={backend!r}`.")
    try:
        backend = envs.resolve_backend(backend, protocol)   # auto -> what runs here
    except ValueError as error:
        raise ConfigError(f"env.backend: {error}") from error
    on_nonfinite = plain.get("on_nonfinite", "stop")
    if on_nonfinite not in ON_NONFINITE:
        raise ConfigError(f"on_nonfinite should be stop or skip. Found `on_nonfinite={on_nonfinite!r}`.")
    q_bound = plain.get("q_bound", 1e6)
    if isinstance(q_bound, bool) or not isinstance(q_bound, (int, float)) or not q_bound > 0:
        raise ConfigError(f"q_bound should be a positive number. Found `q_bound={q_bound!r}`.")
    threads = plain.get("torch_threads")
    if threads is not None:
        threads = _positive_int(plain, "torch_threads")
    device = resolve_device(plain.get("device", "auto"))
    try:
        resolve_compile_mode(agent_config.compile, device)   # cudagraphs needs CUDA
    except ValueError as error:
        raise ConfigError(str(error)) from error

    return TrainSettings(
        backend=backend, eval_async=_bool(plain, "eval_async") if "eval_async" in plain else True,
        benchmark=benchmark, env_name=_env_label(env_cfg.get("name", benchmark), task), task=task,
        task_names=task_names,
        protocol=protocol, agent=agent_config, agg_name=str(agg_name), agg_options=agg_options,
        device=device, eval_episodes=int(eval_episodes),
        checkpoint_buffer=_bool(plain, "checkpoint_buffer"), performance_source=source,
        stl_reference=reference, progress=_bool(plain, "progress"), vector_strategy=strategy,
        on_nonfinite=on_nonfinite, q_bound=float(q_bound), torch_threads=threads,
        config=plain, resume=None if resume is None else Path(str(resume)), checkpoint=checkpoint,
        **settings,
    )


# ---------------------------------------------------------------------------------------- resume
def _load_resume(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise ConfigError(f"resume={run_dir}: not a directory. Pass the run directory that holds {CHECKPOINT_NAME}.")
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError(f"resume={run_dir}: no {CHECKPOINT_NAME} there (the run stopped before its first checkpoint?).")
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        raise ConfigError(f"resume: {error}") from error


def merge_resumed_config(saved: dict[str, Any], cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """The run's saved config, changed only where ``overrides`` (the resume command line) name a key.

    Each change is logged; a key of :data:`FIXED_ON_RESUME` keeps its saved value (with a warning).
    Keys the saved config lacks (added to ``train.yaml`` after the run started) take ``cfg``'s value.
    ``resume`` itself always follows ``cfg``.
    """
    merged = OmegaConf.create(saved)
    current = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(current, dict)
    current.pop("hydra", None)
    for key, value in current.items():
        if key not in saved:
            merged[key] = value
    merged.resume = current.get("resume")
    current_cfg = OmegaConf.create(current)
    ignored = []
    for key in dict.fromkeys(_override_key(override) for override in overrides):
        if key in ("resume", "") or key.startswith("hydra"):
            continue
        if any(key == fixed or key.startswith(fixed + ".") or fixed.startswith(key + ".") for fixed in FIXED_ON_RESUME):
            ignored.append(key)
            continue
        old = OmegaConf.select(merged, key, default=None)
        new = OmegaConf.select(current_cfg, key, default=None)
        if OmegaConf.is_config(new):
            new = OmegaConf.to_container(new)
        if old != new:
            OmegaConf.update(merged, key, new, merge=False, force_add=True)
            log.info("Resuming with %s=%s (the run had %s).", key, new, old)
    if ignored:
        log.warning("Resuming: %s keep the run's saved values (they define the experiment; start a new run "
                    "to change them).", ", ".join(ignored))
    return merged


def _override_key(override: str) -> str:
    """``agent.lr=3e-4`` -> ``agent.lr``; ``+agg.options.c=1`` -> ``agg.options.c``; ``agg=ls`` -> ``agg``."""
    return override.split("=", 1)[0].strip().lstrip("+~").split("@", 1)[0].replace("/", ".")


def _hydra_overrides() -> list[str]:
    """The command line's overrides when running under Hydra, else none."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


# ------------------------------------------------------------------------------------------ STL
def load_stl_reference(path: Any, task_names: list[str], floor: Any = None) -> np.ndarray:
    """Per-task single-task success rates ``s^STL`` (``[k]``), 1 for every task when ``path`` is None.

    The file is JSON ``{task: rate}`` (``python -m mtrl.stl`` writes it as ``stl_success.json``; its run
    directory may be given instead; a ``{"per_task": {...}}`` or ``{"success": {...}}`` wrapper is
    accepted too) and must name every task of the run. A rate of 0
    makes Δm undefined: it is refused unless ``floor`` is set, which raises every reference below
    ``floor`` to ``floor``.
    """
    if floor is not None:
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 < floor <= 1:
            raise ConfigError(f"stl_floor should be a number in (0, 1]. Found `stl_floor={floor!r}`.")
    if path is None:
        return np.ones(len(task_names), dtype=np.float64)
    file = Path(str(path)).expanduser()
    if file.is_dir():   # an STL run directory
        file = file / STL_SUCCESS_NAME
    try:
        data = json.loads(file.read_text())
    except OSError as error:
        raise ConfigError(f"stl_success={path}: cannot read the file ({error.strerror or error}).") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"stl_success={path}: not valid JSON ({error}).") from error
    if isinstance(data, dict):
        for key in ("per_task", "success"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict):
        raise ConfigError(f"stl_success={path}: expected a JSON object {{task: success rate}}.")
    missing = [name for name in task_names if name not in data]
    if missing:
        raise ConfigError(f"stl_success={path}: no success rate for task(s) {', '.join(missing)}.")
    values = []
    for name in task_names:
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"stl_success={path}: the rate of {name} should be a number in [0, 1], found {value!r}.")
        values.append(float(value))
    reference = np.asarray(values, dtype=np.float64)
    if floor is not None:
        reference = np.maximum(reference, float(floor))
    zero = [name for name, value in zip(task_names, reference) if value == 0]
    if zero:
        raise ConfigError(
            f"stl_success={path}: the single-task success of {', '.join(zero)} is 0, which makes "
            f"Δm = 100 (s_STL - s) / s_STL undefined. Set e.g. `stl_floor=0.05` to floor the references."
        )
    return reference


# -------------------------------------------------------------------------------------- helpers
def resolve_device(value: Any) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` on a machine without it is an error."""
    name = "auto" if value is None else str(value)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device should be auto, cpu, cuda or cuda:N. Found `device={name}`.") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name}: CUDA is not available on this machine (use device=auto or cpu).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) here.")
    elif device.type != "cpu":
        raise ConfigError(f"device should be auto, cpu, cuda or cuda:N. Found `device={name}`.")
    return device


def _agent_config(config_class: type, section: dict[str, Any], k: int, benchmark: str) -> Any:
    values = {key: value for key, value in section.items() if key != "name"}
    valid = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"agent: unknown key(s) {unknown}. Valid keys: {', '.join(valid)}.")
    defaults = {f.name: f.default for f in dataclasses.fields(config_class) if f.default is not dataclasses.MISSING}
    for key, value in list(values.items()):
        if isinstance(value, list):
            values[key] = tuple(value)
        if isinstance(defaults.get(key), (int, float)) and not isinstance(defaults.get(key), bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"agent.{key} should be a number. Found `agent.{key}={value!r}`.")
    for key in ("hidden_dim", "trunk_layers", "head_layers", "batch_size", "actor_update_every", "target_update_every"):
        if key in values and (not isinstance(values[key], int) or values[key] < 1):
            raise ConfigError(f"agent.{key} should be a positive integer. Found `agent.{key}={values[key]!r}`.")
    for key in ("lr", "actor_lr", "critic_lr", "alpha_lr", "init_temperature"):
        if key in values and values[key] is not None and not values[key] > 0:
            raise ConfigError(f"agent.{key} should be positive. Found `agent.{key}={values[key]!r}`.")
    if "tau" in values and not 0 < values["tau"] <= 1:
        raise ConfigError(f"agent.tau should be in (0, 1]. Found `agent.tau={values['tau']!r}`.")
    if "gamma" in values and not 0 <= values["gamma"] < 1:
        raise ConfigError(f"agent.gamma should be in [0, 1). Found `agent.gamma={values['gamma']!r}`.")
    batch = values.get("batch_size", defaults.get("batch_size"))
    if batch is not None and batch % k:
        raise ConfigError(
            f"agent.batch_size={batch} does not split evenly over the {k} tasks of {benchmark}: the batch is "
            f"stratified, batch_size / k rows per task. Use a multiple of {k}, e.g. agent.batch_size={128 * k} "
            f"(128 per task, as the paper)."
        )
    try:
        return config_class(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"agent: {error}") from error


def _env_label(name: Any, task: Any) -> str:
    if isinstance(task, (list, tuple)):
        return f"{name}-{len(task)}tasks"   # env.tasks subset, e.g. mt10-4tasks
    return str(name) if task is None else f"{name}-{task}"


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _section(plain: dict[str, Any], key: str) -> dict[str, Any]:
    value = plain.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"The config has no `{key}` group; pick one, e.g. `{key}=...`.")
    return value


def _int(plain: dict[str, Any], key: str, minimum: int) -> int:
    value = plain.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)   # 2e6 on the command line
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{key} should be {kind}. Found `{key}={value!r}`.")
    return value


def _positive_int(plain: dict[str, Any], key: str) -> int:
    return _int(plain, key, minimum=1)


def _bool(plain: dict[str, Any], key: str) -> bool:
    value = plain.get(key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} should be true or false. Found `{key}={value!r}`.")
    return value
