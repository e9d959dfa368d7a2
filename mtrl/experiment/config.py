"""From the Hydra config to checked training settings, before any environment starts.

:func:`prepare` is the single entry: it merges a resumed run's saved config (``resume=<run dir>``),
checks every value a user can get wrong (unknown env / protocol / aggregator, a batch that does not
split evenly over the tasks, non-positive step counts or rates, an unreadable STL file or resume
directory) and raises :class:`ConfigError` with a message naming the override to fix. Nothing here
builds an environment.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import mtrl.aggregation as aggregation
from mtrl.experiment.checkpoint import BUFFER_DIR, CHECKPOINT_NAME, CheckpointError, load_checkpoint
from mtrl.validation import ConfigError, boolean, choice, dataclass_config, integer, number, one_line, resolve_device

__all__ = ["ConfigError", "TrainSettings", "prepare", "resolve_device", "merge_resumed_config", "env_label",
           "benchmark_and_tasks", "make_protocol", "FIXED_ON_RESUME"]

log = logging.getLogger(__name__)

STL_SUCCESS_NAME = "stl_success.json"   # what `python -m mtrl.stl` writes in its run directory

#: Keys that define the experiment itself: a resume cannot change them (another aggregator, task set,
#: protocol, seed or network shape would not continue the same run; the saved aggregator and network
#: states could not even be loaded). Typing one with another value than the run's is refused; every other
#: key typed on the resume command line changes the saved value, e.g. `resume=<dir> steps=3000000`.
FIXED_ON_RESUME = ("env.name", "env.task", "env.tasks", "protocol", "agg", "seed", "buffer_size", "agent.name",
                   "agent.hidden_dim", "agent.trunk_layers", "agent.head_layers", "agent.aggregate")

ON_NONFINITE = ("stop", "skip")
PERFORMANCE_SOURCES = ("eval", "train")
VECTOR_STRATEGIES = ("auto", "sync", "async")


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
        return self.agent.batch_per_task or self.agent.batch_size // self.num_tasks

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
    benchmark, task, task_names = benchmark_and_tasks(env_cfg)
    k = len(task_names)
    protocol = make_protocol(_section(plain, "protocol"))

    settings = dict(
        steps=_positive_int(plain, "steps"),
        warmup_steps=_positive_int(plain, "warmup_steps"),
        buffer_size=_positive_int(plain, "buffer_size"),
        eval_every=_positive_int(plain, "eval_every"),
        log_every=_positive_int(plain, "log_every"),
        checkpoint_every=_positive_int(plain, "checkpoint_every"),
        train_success_window=_positive_int(plain, "train_success_window"),
        seed=integer(plain.get("seed"), "seed", minimum=0),
    )
    if checkpoint is not None:
        _check_resumed_steps(resume, int(checkpoint["step"]), settings["steps"])
    elif settings["warmup_steps"] >= settings["steps"]:
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
    agg_options = agg_cfg.get("options") or {}
    if not isinstance(agg_options, dict):
        raise ConfigError(f"agg.options should hold the aggregator's options, e.g. agg.options.c=0.5. "
                          f"Found `agg.options={agg_options!r}`.")
    agg_options = dict(agg_options)
    try:
        aggregation.make(agg_name, **agg_options)   # unknown name / option / bad value
    except (ValueError, TypeError) as error:
        raise ConfigError(f"agg: {error}") from error

    source = choice(plain.get("performance_source"), "performance_source", PERFORMANCE_SOURCES)
    reference = load_stl_reference(plain.get("stl_success"), task_names, plain.get("stl_floor"))
    strategy = choice(plain.get("vector_strategy", "auto"), "vector_strategy", VECTOR_STRATEGIES)
    backend = choice(env_cfg.get("backend", "auto"), "env.backend", envs.BACKENDS)
    try:
        backend = envs.resolve_backend(backend, protocol)   # auto -> what runs here
    except ValueError as error:
        raise ConfigError(f"env.backend: {error}") from error
    on_nonfinite = choice(plain.get("on_nonfinite", "stop"), "on_nonfinite", ON_NONFINITE)
    q_bound = number(plain.get("q_bound", 1e6), "q_bound", 0, low_open=True)
    threads = plain.get("torch_threads")
    if threads is not None:
        threads = _positive_int(plain, "torch_threads")
    device = resolve_device(plain.get("device", "auto"))
    try:
        resolve_compile_mode(agent_config.compile, device)   # cudagraphs needs CUDA
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if checkpoint is not None and _bool(plain, "checkpoint_buffer"):
        _check_buffer_chunks(Path(str(resume)).expanduser(), checkpoint)

    return TrainSettings(
        backend=backend, eval_async=_bool(plain, "eval_async") if "eval_async" in plain else True,
        benchmark=benchmark, env_name=env_label(env_cfg.get("name", benchmark), task), task=task,
        task_names=task_names,
        protocol=protocol, agent=agent_config, agg_name=str(agg_name), agg_options=agg_options,
        device=device, eval_episodes=int(eval_episodes),
        checkpoint_buffer=_bool(plain, "checkpoint_buffer"), performance_source=source,
        stl_reference=reference, progress=_bool(plain, "progress"), vector_strategy=strategy,
        on_nonfinite=on_nonfinite, q_bound=q_bound, torch_threads=threads,
        config=plain, resume=None if resume is None else Path(str(resume)), checkpoint=checkpoint,
        **settings,
    )


def benchmark_and_tasks(env_cfg: dict[str, Any]) -> tuple[str, Any, list[str]]:
    """``(benchmark, task, task names)`` of the ``env`` section: ``env.tasks`` (a subset of mt10/mt50, e.g.
    an MT4 on a laptop) or ``env.task`` (the task of mt1). Shared by ``mtrl.train`` and ``mtrl.stl``."""
    import envs

    benchmark = str(env_cfg.get("benchmark", env_cfg.get("name")))
    task = env_cfg.get("tasks") if env_cfg.get("tasks") is not None else env_cfg.get("task")
    if isinstance(task, list):
        repeated = sorted({name for name in task if task.count(name) > 1}, key=str)
        if repeated:
            raise ConfigError(f"env.tasks: {', '.join(map(str, repeated))} appear(s) more than once; list each task once.")
    try:
        return benchmark, task, list(envs.benchmark_tasks(benchmark, task))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"env: {error}") from error


def make_protocol(protocol_cfg: dict[str, Any]) -> Any:
    """``envs.ProtocolConfig`` of the ``protocol`` section (unknown fields and bad values are ConfigErrors)."""
    import envs

    values = dict(protocol_cfg)
    name = values.pop("name", None)
    try:
        return envs.make_protocol(str(name), **values)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"protocol: {one_line(error)}") from error


def env_label(name: Any, task: Any) -> str:
    """The run's environment label (run directories, ``summary.json``): ``mt10``; ``mt1-reach-v3`` for a
    single task; ``mt10-4tasks`` for a subset (``env.tasks``)."""
    if isinstance(task, Sequence) and not isinstance(task, str):
        return f"{name}-{len(task)}tasks"
    return str(name) if task is None else f"{name}-{task}"


# ---------------------------------------------------------------------------------------- resume
def _load_resume(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        problem = "not a directory" if run_dir.exists() else "no such directory"
        raise ConfigError(f"resume={run_dir}: {problem}. Pass the run directory that holds {CHECKPOINT_NAME}.")
    path = run_dir / CHECKPOINT_NAME
    if path.is_dir():
        raise ConfigError(f"resume={run_dir}: {path} is a directory, not a checkpoint file.")
    if not path.is_file():
        raise ConfigError(f"resume={run_dir}: no {CHECKPOINT_NAME} there (the run stopped before its first checkpoint?).")
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        raise ConfigError(f"resume: {error}") from error


def _check_resumed_steps(resume: Any, done: int, steps: int) -> None:
    """A resume trains up to ``steps``: fewer than the run has done would change nothing (and contradict its
    summary), so it is refused."""
    if steps < done:
        raise ConfigError(f"resume={resume}: steps={steps} is below the {done} steps this run has done; give "
                          f"steps > {done} to train it further (its results so far are in its summary.json).")


def _check_buffer_chunks(run_dir: Path, checkpoint: dict[str, Any]) -> None:
    """The replay-buffer chunks the checkpoint names are on disk and readable (their headers: the rows are
    read by the trainer)."""
    manifest = checkpoint.get("buffer_chunks") or {}
    for chunk in manifest.get("chunks", []):
        path = run_dir / BUFFER_DIR / str(chunk.get("file"))
        try:
            if not path.is_file() or path.stat().st_size == 0:
                raise OSError("missing" if not path.exists() else "not a file" if not path.is_file() else "empty")
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # noqa: BLE001 - unpickling fails in many ways; all mean a damaged chunk
            raise ConfigError(f"resume={run_dir}: the replay-buffer chunk {path} is {one_line(error)[:120]}; "
                              f"resume with checkpoint_buffer=false to refill the buffer instead.") from error


def merge_resumed_config(saved: dict[str, Any], cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """The run's saved config, changed only where ``overrides`` (the resume command line) name a key.

    Each change is logged, and keys whose value interpolates a changed key (``agent.max_grad_norm`` follows
    ``env.max_grad_norm``) follow it. Keys the saved config lacks (added to ``train.yaml`` after the run
    started) take ``cfg``'s value; ``resume`` itself always follows ``cfg``.

    Raises:
        ConfigError: an override would change a key of :data:`FIXED_ON_RESUME` (for a config group typed
            as ``agg=<option>``: the option's ``name``).
    """
    from mtrl.validation import config_groups

    merged = OmegaConf.create(saved)
    current = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(current, dict)
    current.pop("hydra", None)
    for key, value in current.items():
        if key not in saved:
            merged[key] = value
    merged.resume = current.get("resume")
    current_cfg = OmegaConf.create(current)
    unresolved = OmegaConf.to_container(cfg, resolve=False)
    groups = config_groups()
    typed = [key for key in dict.fromkeys(_override_key(override) for override in overrides)
             if key not in ("resume", "") and not key.startswith("hydra")]
    for key in typed:
        _refuse_fixed_change(key, merged, current_cfg, groups, current.get("resume"))
    for key in typed + [dependent for key in typed for dependent in _interpolating(unresolved, key)
                        if dependent not in typed]:
        old = _plain_select(merged, key)
        new = _plain_select(current_cfg, key)
        if old != new:
            OmegaConf.update(merged, key, new, merge=False, force_add=True)
            log.info("Resuming with %s=%s (the run had %s).", key, new, old)
    return merged


def _plain_select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _refuse_fixed_change(key: str, saved: DictConfig, current: DictConfig, groups: dict[str, list[str]],
                         resume: Any) -> None:
    for fixed in FIXED_ON_RESUME:
        if key == fixed:
            path = f"{key}.name" if key in groups else key   # a config group: its option
        elif key.startswith(fixed + "."):
            path = key
        elif fixed.startswith(key + "."):
            path = fixed
        else:
            continue
        old, new = _plain_select(saved, path), _plain_select(current, path)
        if old != new:
            raise ConfigError(f"resume={resume}: {key} would change {path} from the run's {old!r} to {new!r}, "
                              f"and a resume keeps it (it defines the experiment). Leave {key} out, or start a "
                              f"new run to change it.")


def _interpolating(unresolved: Any, key: str, prefix: str = "") -> list[str]:
    """Keys of the (unresolved) config whose value is an interpolation that reads ``key``."""
    found = []
    if isinstance(unresolved, dict):
        for name, value in unresolved.items():
            path = f"{prefix}{name}"
            if isinstance(value, str) and "${" in value and re.search(rf"[{{:,]\s*{re.escape(key)}\s*[}},]", value):
                found.append(path)
            elif isinstance(value, dict):
                found += _interpolating(value, key, f"{path}.")
    return found


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
        floor = number(floor, "stl_floor", 0, 1, low_open=True)
    if path is None:
        return np.ones(len(task_names), dtype=np.float64)
    file = Path(str(path)).expanduser()
    if file.is_dir():   # an STL run directory
        file = file / STL_SUCCESS_NAME
        if not file.is_file():
            raise ConfigError(f"stl_success={path}: a directory without {STL_SUCCESS_NAME}; give that file or the "
                              f"run directory of `python -m mtrl.stl`.")
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
def _agent_config(config_class: type, section: dict[str, Any], k: int, benchmark: str) -> Any:
    """The agent section as ``config_class`` (``agents.SACConfig``): its fields, type hints and own checks
    (:func:`mtrl.validation.dataclass_config`), and a batch that splits evenly over the ``k`` tasks."""
    agent = dataclass_config(config_class, {key: value for key, value in section.items() if key != "name"}, "agent")
    if agent.batch_per_task is None and agent.batch_size % k:
        raise ConfigError(
            f"agent.batch_size={agent.batch_size} does not split evenly over the {k} tasks of {benchmark}: the "
            f"batch is stratified, batch_size / k rows per task. Use a multiple of {k}, e.g. "
            f"agent.batch_size={128 * k} (128 per task, as the paper)."
        )
    return agent


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _section(plain: dict[str, Any], key: str) -> dict[str, Any]:
    value = plain.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"The config has no `{key}` group; pick one, e.g. `{key}=...`.")
    return value


def _positive_int(plain: dict[str, Any], key: str) -> int:
    return integer(plain.get(key), key, minimum=1)


def _bool(plain: dict[str, Any], key: str) -> bool:
    return boolean(plain.get(key), key)
