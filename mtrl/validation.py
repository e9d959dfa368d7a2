"""One validation layer for the five commands: bad input exits 2 with one line, before anything is written.

``python -m mtrl.train``, ``mtrl.stl`` and ``mtrl.supervised`` (Hydra apps), ``mtrl.report`` and
``mtrl.bench`` (argparse) keep one promise (README, "Runs that stop"):

* **Bad input** (a malformed override, an unknown key typed with or without ``+``, an unknown config-group
  option, a value of the wrong type or out of range, a file that cannot be read, an output that cannot be
  created) exits 2 with one line on stderr that names what to change, before any file or directory is made.
* **An output that cannot be written** (a full disk) exits 2 with one line naming the file and what is
  intact; files are written atomically (:func:`mtrl.experiment.checkpoint.atomic_write_json`), so a reader
  never sees half of one.

A Hydra app describes itself as a :class:`HydraCommand` (its config and its own value checks);
:func:`check_command_line` composes the config as Hydra will and runs every check, and :func:`run_hydra`
is the entry: the checks, then Hydra with the run directory pinned, so that a refusal found only inside
the run (a data file the benchmark cannot parse) removes what Hydra wrote for it. The argparse commands
use :class:`ArgumentParser` (errors in one line) and the path checks. The value helpers (:func:`integer`,
:func:`number`, :func:`dataclass_config`, ...) are shared by every command's checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["ConfigError", "OutputError", "HydraCommand", "CheckedCommandLine", "check_command_line", "run_hydra",
           "job", "fail", "one_line", "ArgumentParser", "integer", "number", "boolean", "choice",
           "dataclass_config", "check_writable_dir", "check_output_file", "readable_file", "writing",
           "write_failure", "config_groups", "positive_int_type", "non_negative_int_type", "writable_dir_type",
           "resolve_device", "INTEGER_LIMIT", "CONFIGS"]

#: The repository's Hydra configs (``train.yaml``, ``stl.yaml``, ``supervised.yaml`` and their groups).
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: The largest integer a key takes: beyond it a float (``steps=1e99``) no longer holds an exact integer.
INTEGER_LIMIT = 2 ** 53


class ConfigError(ValueError):
    """Bad input to a command; the message is one line that names what to change."""


class OutputError(OSError):
    """An output that could not be written (full disk, read-only folder); the message names the file and
    what is intact."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "an output could not be written"


# ------------------------------------------------------------------------------------------ messages
def one_line(error: BaseException | str) -> str:
    """A message on one line: the substance of a multi-line error (Hydra's end with a link to its docs)."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("See ")]
    joined = ""
    for line in lines[:3]:
        joined += line if not joined else (" " if joined.endswith((".", ":")) else "; ") + line
    override = getattr(error, "override", None)   # Hydra's parse errors: name the override
    if isinstance(override, str) and override not in joined:
        joined = f"{override}: {joined}"
    return joined or (type(error).__name__ if isinstance(error, BaseException) else "error")


def fail(prog: str, error: BaseException | str) -> NoReturn:
    """``<prog>: error: <one line>`` on stderr, exit code 2."""
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(2)


def write_failure(path: str | Path, error: OSError, intact: str) -> OutputError:
    """The :class:`OutputError` for ``path``: ``cannot write <path> (<reason>); <intact>.``"""
    reason = error.strerror or one_line(error)
    return OutputError(f"cannot write {error.filename or path} ({reason}); {intact.rstrip('.')}.")


@contextmanager
def writing(path: str | Path, intact: str) -> Iterator[None]:
    """Turns an ``OSError`` raised inside the block (writing ``path``) into :func:`write_failure`'s error."""
    try:
        yield
    except OutputError:
        raise
    except OSError as error:
        raise write_failure(path, error, intact) from error


# -------------------------------------------------------------------------------------------- values
def _show(key: str, value: Any) -> str:
    return f"Found `{key}={value!r}`."


def integer(value: Any, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``; a float passes only when it is an integer below
    :data:`INTEGER_LIMIT` (``steps=2e6`` from the command line), never ``1e99`` or ``2.5``."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= INTEGER_LIMIT:
        value = int(value)
    upper = INTEGER_LIMIT if maximum is None else maximum
    if isinstance(value, int) and not isinstance(value, bool) and value > upper:
        raise ConfigError(f"{key} should be at most {upper}. {_show(key, value)}")
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        if minimum == 1 and maximum is None:
            kind = "a positive integer"
        elif minimum is not None and maximum is not None:
            kind = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            kind = f"an integer >= {minimum}"
        else:
            kind = "an integer"
        raise ConfigError(f"{key} should be {kind}. {_show(key, value)}")
    return value


def number(value: Any, key: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the interval ``low .. high`` (closed unless ``*_open``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and abs(value) <= sys.float_info.max
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low == 0 and low_open and high is None:
            kind = "a positive number"
        elif low == 0 and high is None:
            kind = "a number >= 0"
        elif low is not None and high is not None:
            kind = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        else:
            kind = "a finite number"
        raise ConfigError(f"{key} should be {kind}. {_show(key, value)}")
    return float(value)


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} should be true or false. {_show(key, value)}")
    return value


def choice(value: Any, key: str, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ConfigError(f"{key} should be one of {', '.join(options)}. {_show(key, value)}")
    return value


def _check_annotated(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against the type hint of a dataclass field (int, float, str, bool, ``X | None``,
    ``tuple[X, ...]``, ``tuple[X, Y]``); lists become tuples. Other hints pass the value through."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:
            return _check_annotated(value, options[0], key)
        return value
    if hint is bool:
        return boolean(value, key)
    if hint is int:
        return integer(value, key)
    if hint is float:
        return number(value, key)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} should be a string. {_show(key, value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} should be a list, e.g. {key}=[a,b]. {_show(key, value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_annotated(item, args[0], key) for item in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} should be a list of {len(args)} values. {_show(key, list(value))}")
        return tuple(_check_annotated(item, arg, key) for item, arg in zip(value, args))
    return value


def dataclass_config(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """``cls(**values)``, checked: unknown keys, each value against its field's type hint, then the class's
    own checks (its ``ValueError``/``TypeError`` as one line). The fields come from the dataclass itself."""
    fields = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}. Valid keys: {', '.join(fields)}.")
    hints = typing.get_type_hints(cls)
    checked = {key: _check_annotated(value, hints.get(key, Any), f"{section}.{key}") for key, value in values.items()}
    try:
        return cls(**checked)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{section}: {one_line(error)}") from error


def resolve_device(value: Any, key: str = "device") -> Any:
    """``device=`` as a ``torch.device``: ``auto`` picks CUDA when present; ``cuda`` (or ``cuda:N``) on a
    machine without it is an error, as is anything but auto, cpu, cuda, cuda:N."""
    import torch

    name = "auto" if value is None else str(value)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"{key} should be auto, cpu, cuda or cuda:N. Found `{key}={name}`.") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={name}: CUDA is not available on this machine (use {key}=auto or cpu).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}={name}: only {torch.cuda.device_count()} CUDA device(s) here.")
    elif device.type != "cpu":
        raise ConfigError(f"{key} should be auto, cpu, cuda or cuda:N. Found `{key}={name}`.")
    return device


# --------------------------------------------------------------------------------------------- paths
def _nearest_existing(path: Path) -> Path:
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_writable_dir(path: str | Path, what: str, hint: str = "") -> Path:
    """``path`` is a directory this process can create or write into (nothing is created here)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a directory.{(' ' + hint) if hint else ''}")
    existing = _nearest_existing(path)
    writable = os.access(existing, os.W_OK | os.X_OK) and (existing == path.absolute() or _can_create_in(existing))
    problem = "is not a directory" if not existing.is_dir() else None if writable else "is not writable"
    if problem:
        raise ConfigError(f"cannot create {what} {path}: {existing} {problem}.{(' ' + hint) if hint else ''}")
    return path


def _can_create_in(directory: Path) -> bool:
    """A file can be created in ``directory`` (tried, and removed: permissions alone do not tell, e.g. for
    root in /proc). Only for a folder that gets a new directory: an existing run directory is not touched."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".mtrl-probe-", dir=directory)
    except OSError:
        return False
    os.close(handle)
    os.unlink(probe)
    return True


def check_output_file(path: str | Path, what: str, hint: str = "") -> Path:
    """``path`` is a file this process can create or replace (its folder writable or creatable)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file name, e.g. {path / 'result.json'}.")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {path} is not writable.{(' ' + hint) if hint else ''}")
    check_writable_dir(path.parent, f"the folder of {what}", hint)
    return path


def readable_file(value: Any, key: str) -> Path:
    """``value`` names a readable file; the message says what is wrong (missing, a directory, unreadable)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"{key} should be a file path. {_show(key, value)}")
    path = Path(value).expanduser()
    if path.is_dir():
        raise ConfigError(f"{key}={value}: is a directory, not a file.")
    if not path.exists():
        raise ConfigError(f"{key}={value}: no such file.")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key}={value}: not readable (permission denied).")
    return path


# ------------------------------------------------------------------------------------------- argparse
class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``<prog>: error: <message>``, exit 2) and no usage block before them.

    Sub-parsers made with ``add_subparsers`` are of this class too."""

    def error(self, message: str) -> NoReturn:
        hint = "" if message.endswith(".") else "."
        fail(self.prog.removeprefix("python -m "), f"{message}{hint} See `{self.prog} --help`.")


def positive_int_type(text: str) -> int:
    """argparse ``type``: a positive integer (``--steps -5`` is refused at parse time)."""
    try:
        return integer(int(text), "value", minimum=1)
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"should be a positive integer, got {text!r}") from None


def non_negative_int_type(text: str) -> int:
    """argparse ``type``: an integer >= 0."""
    try:
        return integer(int(text), "value", minimum=0)
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"should be an integer >= 0, got {text!r}") from None


def writable_dir_type(text: str) -> Path:
    """argparse ``type``: a directory that can be created or written into (checked before any work)."""
    try:
        return check_writable_dir(text, "the directory")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ------------------------------------------------------------------------------------------ Hydra apps
@dataclass(frozen=True)
class HydraCommand:
    """What :func:`check_command_line` needs to know about a Hydra app.

    ``check(job, overrides)`` is the command's own value check (raises :class:`ConfigError`) on the composed
    config without its ``hydra`` node; ``overrides`` are the command line's (normalised) overrides.
    ``open_keys``: nodes whose keys the command's check validates itself (``agg.options``: the aggregator's
    constructor knows its options), so they take new keys without ``+``.
    """

    prog: str
    config_name: str
    check: Callable[[Any, Sequence[str]], Any]
    open_keys: tuple[str, ...] = ()


@dataclass
class CheckedCommandLine:
    """The outcome of :func:`check_command_line`: the arguments to give Hydra and where its files go."""

    argv: list[str]                   # flags and normalised overrides, in order
    job: Any                          # the composed config without ``hydra`` (DictConfig)
    multirun: bool
    run_dir: Path | None = None       # single runs: hydra.run.dir, resolved
    output_subdir: str | None = None  # single runs: where Hydra saves its config, relative to run_dir
    settings: Any = None              # what the command's check returned (first job of a sweep)


#: Hydra flags after which Hydra prints something and runs nothing (no check needed, nothing written).
_INFO_FLAGS = ("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-p", "--package", "--resolve",
               "-i", "--info", "-sc", "--shell-completion")
#: Flags that change which config is composed: the checks cannot follow, Hydra runs unchecked.
_CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun")


def config_groups(configs: Path = CONFIGS) -> dict[str, list[str]]:
    """``{group: [options]}`` of the config folder (``agg``: ``[cagrad, ..., uw]``)."""
    return {path.name: sorted(option.stem for option in path.glob("*.yaml"))
            for path in sorted(configs.iterdir()) if path.is_dir()}


def check_command_line(command: HydraCommand, argv: Sequence[str]) -> CheckedCommandLine | None:
    """Refuse every bad override before Hydra writes anything; None when Hydra only prints (``--help``, ``--cfg``).

    In order: Hydra's override grammar; config-group options (``agg=nonexistent`` lists the valid ones);
    deletions (``~key``); keys (unknown ones are refused whether typed with ``+`` or not; keys under
    ``command.open_keys`` are added, ``++``, for the command's check to judge); composition and
    interpolations; that the run directory can be created; the command's value check. With ``--multirun``
    every value of every swept key is checked (with the other keys at their first value).

    Raises:
        ConfigError: one line naming what to change.
    """
    argv = list(argv)
    flags = [arg for arg in argv if arg.startswith("-")]
    if any(flag.split("=", 1)[0] in _INFO_FLAGS + _CONFIG_FLAGS for flag in flags):
        return None
    multirun = any(flag in ("-m", "--multirun") for flag in flags)
    unknown_flags = [flag for flag in flags if flag not in ("-m", "--multirun")]
    if unknown_flags:
        raise ConfigError(f"unknown flag {unknown_flags[0]}: {command.prog} takes key=value overrides, "
                          f"--multirun, and Hydra's --help / --cfg job.")
    overrides = _normalise(command, [arg for arg in argv if not arg.startswith("-")], multirun)
    jobs = _sweep_jobs(overrides) if multirun else [overrides]
    checked = CheckedCommandLine(argv=[*flags, *overrides], job=None, multirun=multirun)
    for index, job_overrides in enumerate(jobs):
        cfg = _compose(command, job_overrides)
        if index == 0:
            _check_run_dir(cfg, checked)
        job = _job_config(cfg)
        settings = _quiet(command.check, job, job_overrides)
        if index == 0:
            checked.job, checked.settings = job, settings
    return checked


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        if "=" not in text and not text.startswith("~"):
            raise ConfigError(f"{text}: not an override; write key=value (e.g. seed=1).")
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as error:
            message = one_line(error)
            raise ConfigError(message if message.startswith(text) else f"{text}: {message}") from error
    return parsed


def _normalise(command: HydraCommand, overrides: Sequence[str], multirun: bool) -> list[str]:
    """Group options checked; ``+key``/``++key`` made plain (``key``) so that an unknown key is refused;
    keys under ``command.open_keys`` made ``++key`` (added, the command's check judges them)."""
    groups = config_groups()
    normalised = []
    for text, override in zip(overrides, _parse(overrides)):
        key = override.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            normalised.append(text)
            continue
        if override.is_delete():
            raise ConfigError(f"{text}: deleting a key is not supported; set it instead ({key}=<value>).")
        if override.package is not None:
            raise ConfigError(f"{text}: `@package` overrides are not supported; select an option ({key}=<option>).")
        if override.is_sweep_override() and not multirun:
            raise ConfigError(f"{text}: several values run a sweep: add --multirun (a list value is written "
                              f"{key}=[a,b]).")
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        if key in groups:
            for value in values:
                if str(value) not in groups[key]:
                    raise ConfigError(f"{key}={value}: no such option. Valid options for `{key}`: "
                                      f"{', '.join(groups[key])}.")
        plain = text.lstrip("+")
        if any(key.startswith(open_key + ".") for open_key in command.open_keys):
            plain = "++" + plain
        normalised.append(plain)
    return normalised


def _sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs to check for a sweep: every value of every swept key, the others at their first value."""
    parsed = _parse(overrides)
    values: list[list[str]] = []
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ConfigError(f"{text}: only lists of values (a,b,c or range(...)) can be swept.")
            prefix = "++" if text.startswith("++") else ""
            values.append([f"{prefix}{override.key_or_group}={value}" for value in override.sweep_string_iterator()])
        else:
            values.append([text])
    first = [options[0] for options in values]
    jobs = [first]
    for position, options in enumerate(values):
        for option in options[1:]:
            jobs.append([*first[:position], option, *first[position + 1:]])
    return jobs


def _compose(command: HydraCommand, overrides: Sequence[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name=command.config_name, overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        unknown = re.search(r"Could not (?:override|append to config\. An item is already at) '([^']+)'", str(error))
        if unknown:
            raise ConfigError(_unknown_key_message(command, overrides, unknown.group(1))) from error
        raise ConfigError(one_line(error)) from error
    except (ValueError, TypeError) as error:
        raise ConfigError(one_line(error)) from error
    return cfg


def _unknown_key_message(command: HydraCommand, overrides: Sequence[str], key: str) -> str:
    """``unknown key `agent.foo`. Valid keys of `agent`: ...`` (the valid keys of the nearest existing node)."""
    from omegaconf import DictConfig, OmegaConf

    groups = config_groups()
    selections = [text for text in overrides if text.split("=", 1)[0].lstrip("+") in groups]
    base = _compose(command, selections)
    base = OmegaConf.masked_copy(base, [k for k in base if k != "hydra"])
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    while parent and not isinstance(OmegaConf.select(base, parent), DictConfig):
        parent = parent.rsplit(".", 1)[0] if "." in parent else ""
    node = OmegaConf.select(base, parent) if parent else base
    valid = ", ".join(str(name) for name in node.keys())
    where = f" of `{parent}`" if parent else ""
    return f"unknown key `{key}`. Valid keys{where}: {valid}."


def _check_run_dir(cfg: Any, checked: CheckedCommandLine) -> None:
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = "hydra.sweep.dir" if checked.multirun else "hydra.run.dir"
    try:
        directory = Path(str(OmegaConf.select(cfg, node)))
        subdir = OmegaConf.select(cfg, "hydra.output_subdir")
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as error:
        raise ConfigError(one_line(error)) from error
    check_writable_dir(directory, "the run directory", f"Run from a writable folder or set {node}=<a writable path>.")
    if not checked.multirun:
        checked.run_dir, checked.output_subdir = directory, None if subdir is None else str(subdir)


def _job_config(cfg: Any) -> Any:
    """The composed config without ``hydra``, every interpolation resolved once (a bad one is an error)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    job = OmegaConf.create(plain)
    try:
        OmegaConf.to_container(job, resolve=True)
    except (OmegaConfBaseException, ValueError, TypeError) as error:
        raise ConfigError(one_line(error)) from error
    return job


def _quiet(check: Callable[..., Any], *args: Any) -> Any:
    """Run a check with warnings muted: the run logs them once, in its own log."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return check(*args)
    finally:
        logging.disable(previous)


# ----------------------------------------------------------------------------------- the Hydra entry
@dataclass
class _Job:
    """What a single run had on disk before Hydra started: undo what the run wrote if it is refused late."""

    run_dir: Path
    output_subdir: str | None
    existed: bool
    ancestor: Path                    # the nearest folder that existed before
    logs: dict[Path, int]             # log files of the run directory and their sizes before
    subdir_existed: bool = False      # output_subdir was there before (then it is left alone)
    started: bool = False


_current: _Job | None = None
_entry: str | None = None   # the prog whose run_hydra is this process's entry (None in a sweep's worker process)


@contextmanager
def job() -> Iterator[Path]:
    """The body of a Hydra task function: yields the job's run directory.

    From here on the run's files are its own: an :class:`OutputError` (a full disk) exits 2 with one line and
    keeps them. A :class:`ConfigError` raised inside (input that only the run can judge, found before it
    writes anything of its own) exits 2 with one line after removing what Hydra wrote for a single run.
    Outside :func:`run_hydra` (a sweep's worker process) both propagate unchanged.
    """
    from hydra.core.hydra_config import HydraConfig

    if _current is not None:
        _current.started = True
    try:
        yield Path(HydraConfig.get().runtime.output_dir)
    except ConfigError as error:
        if _entry is None:
            raise
        _undo()
        fail(_entry, error)
    except OutputError as error:
        if _entry is None:
            raise
        fail(_entry, error)


def run_hydra(command: HydraCommand, app: Callable[[], Any], argv: Sequence[str] | None = None) -> Any:
    """``python -m <command>``: :func:`check_command_line`, then Hydra's ``app`` (a ``@hydra.main`` function).

    Bad input exits 2 with one line before anything is written. The run directory is pinned
    (``hydra.run.dir`` resolved once), so that a :class:`ConfigError` raised inside the run (input found bad
    only there) or a full disk while Hydra writes its own files removes what this run added (a new run
    directory, ``.hydra/`` or ``.hydra/resume_<time>/``, log lines) before exiting 2. An :class:`OutputError`
    (an output of the run that could not be written) exits 2 and keeps what was written.
    """
    global _current, _entry
    _entry = command.prog
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        checked = check_command_line(command, argv)
    except ConfigError as error:
        fail(command.prog, error)
    hydra_argv = list(argv) if checked is None else checked.argv
    if checked is not None and checked.run_dir is not None:
        run_dir = checked.run_dir.absolute()
        hydra_argv.append(f"hydra.run.dir={_quote(str(run_dir))}")
        if checked.output_subdir is not None:
            hydra_argv.append(f"hydra.output_subdir={_quote(checked.output_subdir)}")
        subdir = checked.output_subdir
        _current = _Job(run_dir=run_dir, output_subdir=subdir, existed=run_dir.exists(),
                        ancestor=_nearest_existing(run_dir),
                        logs={path: path.stat().st_size for path in run_dir.glob("*.log")} if run_dir.is_dir() else {},
                        subdir_existed=subdir is not None and (run_dir / subdir).exists())
    sys.argv = [sys.argv[0], *hydra_argv]
    _report_failures_in_one_line()
    try:
        return app()
    except OutputError as error:
        fail(command.prog, error)
    except ConfigError as error:
        _undo()
        fail(command.prog, error)
    except OSError as error:
        if _current is None or _current.started:
            raise
        _undo()   # Hydra's own files (.hydra/, the log) on a full disk: the run never started
        fail(command.prog, write_failure(_file_being_written(error) or _current.run_dir, error,
                                         "the run did not start; nothing of it is left"))


def _file_being_written(error: OSError) -> str | None:
    """The file an ``OSError`` was raised for: its ``filename``, else the open file in the innermost frame
    that holds one (a full disk fails ``write``, which does not say which file)."""
    if error.filename is not None:
        return str(error.filename)
    traceback = error.__traceback__
    frames = []
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None


def _report_failures_in_one_line() -> None:
    """What would print a trace besides the one line of :func:`fail`: Hydra's report of a failed job (it
    re-raises instead, to be reported here), a log file on a full disk (``--- Logging error ---`` per line)
    and a writer thread's full disk (TensorBoard's: the main thread gets the error on its next write)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    logging.raiseExceptions = False

    def excepthook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.exc_value, OSError):
            threading.__excepthook__(args)

    threading.excepthook = excepthook


def _undo() -> None:
    """Remove what the refused run added to the disk (see :func:`run_hydra`)."""
    job = _current
    if job is None:
        return
    for handler in list(logging.root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == job.run_dir:
            logging.root.removeHandler(handler)
            handler.close()
    if not job.existed:
        shutil.rmtree(job.run_dir, ignore_errors=True)
        parent = job.run_dir.parent
        while parent != job.ancestor and parent != parent.parent and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
        return
    if job.output_subdir not in (None, ".", "") and not job.subdir_existed:
        shutil.rmtree(job.run_dir / job.output_subdir, ignore_errors=True)
    for path in job.run_dir.glob("*.log"):
        if path not in job.logs:
            path.unlink(missing_ok=True)
        elif path.stat().st_size > job.logs[path]:
            os.truncate(path, job.logs[path])


def _quote(value: str) -> str:
    """A Hydra override value for an arbitrary path: quoted, ``'`` and ``${`` escaped (in Hydra's quoted
    strings a backslash needs escaping only before a quote, so a trailing one is doubled)."""
    if re.fullmatch(r"[\w/.:+~@-]+", value):
        return value
    escaped = value.replace("'", "\\'").replace("${", "\\${")
    return f"'{escaped}\\'" if escaped.endswith("\\") else f"'{escaped}'"

