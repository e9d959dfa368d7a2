"""Every bad input to ``mtrl.stl``, ``mtrl.supervised``, ``mtrl.report`` and ``mtrl.bench`` exits 2 with one
line on stderr, no traceback, and leaves no file behind (``mtrl.train``'s fuzz: tests/train/test_train_bad_input.py).

Per command: at least 40 malformed inputs drawn from every kind of mistake, checked in this process (the
checks the entry runs before anything else), and a sample through the real entry in a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import string
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from mtrl import validation

ROOT = Path(__file__).resolve().parents[1]
SYNTAX = ["steps=[", "=5", "steps", "seed==1", "seed=(1", "+=3", "seed=1,,2", "sac={a:", "~seed", "seed=1]"]


def _word(rng: random.Random) -> str:
    return "x" + "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7)))   # never a valid name


def _bad_int(rng: random.Random) -> object:
    return rng.choice([0, -rng.randint(1, 10**6), 2.5, "1e99", _word(rng), "null", "true", "[1,2]"])


def snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every file below ``root`` with its size and modification time, and every folder."""
    return {str(path.relative_to(root)): None if path.is_dir() else (path.stat().st_size, path.stat().st_mtime_ns)
            for path in root.rglob("*")}


def assert_one_line(message: str, case: object) -> None:
    lines = message.strip().splitlines()
    assert len(lines) == 1 and lines[0].strip(), (case, message)
    assert "Traceback" not in message, (case, message)


def run_cli(module: str, argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def assert_refused_by_the_entry(module: str, argv: Sequence[str], cwd: Path) -> str:
    """The real entry in a subprocess: exit 2, one line ``<module>: error: ...``, no traceback, no new file."""
    before = snapshot(cwd)
    result = run_cli(module, argv, cwd)
    assert result.returncode == 2, (argv, result.stdout[-2000:], result.stderr[-2000:])
    assert_one_line(result.stderr, argv)
    assert result.stderr.startswith(module) and ": error: " in result.stderr, result.stderr
    assert snapshot(cwd) == before, f"{argv} left files behind"
    return result.stderr


# ------------------------------------------------------------------------------------------------ mtrl.stl
def malformed_stl(count: int, fixtures: dict[str, Path], seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    positive = ["steps", "sac.hidden_dim", "sac.hidden_layers", "sac.batch_size", "sac.buffer_size", "sac.train_freq",
                "sac.gradient_steps"]
    kinds: list[Callable[[], list[str]]] = [
        lambda: [f"{rng.choice(positive)}={_bad_int(rng)}"],
        lambda: [f"{rng.choice(['eval_episodes', 'torch_threads'])}={rng.choice([0, -3, 1.5, _word(rng)])}"],   # null: default
        lambda: [f"{rng.choice(['warmup_steps', 'eval_every', 'seed'])}={rng.choice([-rng.randint(1, 99), 1.5, '1e99', _word(rng)])}"],
        lambda: [f"{rng.choice(['sac.lr', 'sac.init_temperature'])}={rng.choice([0, -1, 'inf', _word(rng)])}"],
        lambda: [f"{rng.choice(['sac.gamma', 'sac.tau'])}={rng.choice([0, 1.5, -0.1, _word(rng)])}"],
        lambda: [f"{rng.choice(['report', 'device'])}={_word(rng)}"],
        lambda: [f"tensorboard={rng.choice([_word(rng), 1, 0, 'null'])}"],
        lambda: [f"{rng.choice(['env', 'protocol'])}={_word(rng)}"],
        lambda: [rng.choice(["", "+", "sac.", "+sac.", "++"]) + f"{_word(rng)}=1"],          # unknown keys
        lambda: [rng.choice(["tasks=[reach-v3,reach-v3]", f"tasks=[{_word(rng)}-v3]", "tasks=[]",
                             "env.tasks=[push-v3,reach-v3,push-v3]", f"env.tasks=[{_word(rng)}]"])],
        lambda: ["env=mt1", f"env.task={rng.choice([_word(rng), 'null', '[reach-v3]'])}"],
        lambda: [f"protocol.max_episode_steps={rng.choice([0, -3, _word(rng)])}"],
        lambda: [f"merge={rng.choice(['[]', '/nonexistent/' + _word(rng), str(fixtures['stl_rate']), str(fixtures['stl_task']), str(fixtures['garbage'])])}"],
        lambda: [rng.choice(SYNTAX)],
        lambda: ["hydra.run.dir=" + str(fixtures["file"] / _word(rng))],                   # a file in the way
    ]
    return [rng.choice(kinds)() for _ in range(count)]


@pytest.fixture
def fixtures(tmp_path: Path) -> dict[str, Path]:
    """Damaged inputs beside an empty working directory ``tmp_path / "cwd"``."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (tmp_path / "cwd").mkdir()
    paths = {"file": inputs / "a_file", "garbage": inputs / "garbage.json", "stl_rate": inputs / "rate",
             "stl_task": inputs / "task", "stl_text": inputs / "stl_text.json", "stl_uneven": inputs / "uneven.json",
             "damaged_run": inputs / "damaged", "empty_dir": inputs / "empty", "foreign_run": inputs / "foreign"}
    paths["file"].write_text("not a folder")
    paths["garbage"].write_bytes(os.urandom(64))
    for name, content in (("stl_rate", {"reach-v3": 1.5}), ("stl_task", {"reach-v4": 0.5})):
        paths[name].mkdir()
        (paths[name] / "stl_success.json").write_text(json.dumps(content))
    paths["stl_text"].write_text(json.dumps({"val": ["a", "b"], "test": [1, 2]}))
    paths["stl_uneven"].write_text(json.dumps({"val": [0.5], "test": [0.5, 0.5]}))
    (paths["damaged_run"] / "run").mkdir(parents=True)
    (paths["damaged_run"] / "run" / "summary.json").write_text('{"agg": "ls", "config": {"steps":')
    (paths["damaged_run"] / "sup").mkdir()
    (paths["damaged_run"] / "sup" / "results.json").write_text("[1, 2")
    paths["empty_dir"].mkdir()
    (paths["foreign_run"] / "run").mkdir(parents=True)
    (paths["foreign_run"] / "run" / "summary.json").write_text(json.dumps({"hello": 1}))
    return paths


def _refused_in_process(command: validation.HydraCommand, cases: list[list[str]], cwd: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(cwd)
    before = snapshot(cwd.parent)
    for argv in cases:
        with pytest.raises(validation.ConfigError) as error:
            validation.check_command_line(command, argv)
        assert_one_line(str(error.value), argv)
    assert snapshot(cwd.parent) == before, "something was written for bad input"


def test_stl_fuzz_in_process(fixtures: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtrl.stl import COMMAND

    cases = malformed_stl(60, fixtures)
    _refused_in_process(COMMAND, cases, tmp_path / "cwd", monkeypatch)


@pytest.mark.parametrize(("argv", "message"), [
    (["tasks=[reach-v3,push-v3,reach-v3]"], "tasks: reach-v3 appear(s) more than once"),
    (["merge=MERGE_RATE"], "gives reach-v3 the success rate 1.5; a rate is a number in [0, 1]"),
    (["merge=MERGE_TASK"], "names `reach-v4`, not a Meta-World v3 task"),
    (["+foo=1"], "unknown key `foo`. Valid keys: env, protocol, seed"),
    (["steps=1e99"], "steps should be a positive integer. Found `steps=1e+99`"),
])
def test_stl_messages_name_the_problem(argv: list[str], message: str, fixtures: dict[str, Path]) -> None:
    from mtrl.stl import COMMAND

    argv = [arg.replace("MERGE_RATE", str(fixtures["stl_rate"])).replace("MERGE_TASK", str(fixtures["stl_task"]))
            for arg in argv]
    with pytest.raises(validation.ConfigError) as error:
        validation.check_command_line(COMMAND, argv)
    assert message in str(error.value)


# ---------------------------------------------------------------------------------------- mtrl.supervised
def malformed_supervised(count: int, fixtures: dict[str, Path], seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    data = rng.choice
    kinds: list[Callable[[], list[str]]] = [
        lambda: [f"seed={data([-rng.randint(1, 9), 1.5, '1e99', _word(rng)])}"],
        lambda: [f"noise={data([1.5, -0.1, 2, _word(rng), '[0.1]'])}"],
        lambda: [f"seeds={data(['[]', '[1,1]', '[a]', '[-1]', '5', '[0.5]'])}"],
        lambda: [f"noises={data(['[]', '[2]', '[0.2,0.2]', _word(rng), '[-1]'])}"],
        lambda: [f"aggs={data([f'[{_word(rng)}]', '[ls,ls]', '[]', '[ls,' + _word(rng) + ']'])}"],
        lambda: [f"{data(['agg', 'bench'])}={_word(rng)}"],
        lambda: ["agg=cagrad", data([f"agg.options.{_word(rng)}=1", f"+agg.options.{_word(rng)}=1",
                                     f"agg.options.c={_word(rng)}", "agg.options.c=-1"])],
        lambda: ["bench=multidigits", data(["bench.epochs=0", "bench.batch_size=-1", "bench.lr=0",
                                            "bench.weight_decay=-1", "bench.noisy_task=-1", "bench.epochs=2.5",
                                            f"bench.{_word(rng)}=1", "bench.data=5", "bench.steps=10"])],
        lambda: ["bench=toy", data(["bench.steps=0", "bench.scale=0", "bench.tolerance=-1", "bench.epochs=3",
                                    "bench.max_grad_norm.cagrad=0", "bench.record_every=1e99"])],
        lambda: ["bench=noisyregression", data(["bench.noisy_tasks=[0,0]", "bench.noisy_tasks=[]",
                                                "bench.noisy_tasks=3"])],
        lambda: [f"{data(['wrt', 'baseline', 'device'])}={_word(rng)}"],
        lambda: [f"{data(['sweep', 'tensorboard'])}={data([_word(rng), 2, 'null'])}"],
        lambda: [f"data_dir={data(['/nonexistent/' + _word(rng), str(fixtures['file'])])}"],
        lambda: [f"stl_file={data(['/nonexistent/x.json', str(fixtures['empty_dir']), str(fixtures['garbage']), str(fixtures['stl_text']), str(fixtures['stl_uneven'])])}"],
        lambda: ["bench=multidigits", "baseline=stl", f"cache_dir={fixtures['file'] / 'cache'}"],
        lambda: [data(["", "+", "++"]) + f"{_word(rng)}=1"],
        lambda: [data(SYNTAX)],
    ]
    return [rng.choice(kinds)() for _ in range(count)]


def test_supervised_fuzz_in_process(fixtures: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtrl.supervised.config import COMMAND

    cases = malformed_supervised(60, fixtures)
    _refused_in_process(COMMAND, cases, tmp_path / "cwd", monkeypatch)


@pytest.mark.parametrize(("argv", "message"), [
    (["agg=cagrad", "agg.options.cc=0.9"], "Unknown option(s) ['cc'] for aggregator `cagrad`. Valid options: c, rescale"),
    (["agg=pivgr"], "agg=pivgr: no such option. Valid options for `agg`: cagrad,"),
    (["bench=foo"], "bench=foo: no such option. Valid options for `bench`: "),
    (["noise=1.5"], "noise should be a number in [0, 1]"),
    (["seeds=[]"], "seeds should be a non-empty list"),
    (["bench=multidigits", "bench.epochs=1e99"], "bench.epochs should be a positive integer"),
    (["stl_file=STL_UNEVEN"], "'val' lists 1 tasks, 'test' 2"),
])
def test_supervised_messages_name_the_problem(argv: list[str], message: str, fixtures: dict[str, Path]) -> None:
    from mtrl.supervised.config import COMMAND

    argv = [arg.replace("STL_UNEVEN", str(fixtures["stl_uneven"])) for arg in argv]
    with pytest.raises(validation.ConfigError) as error:
        validation.check_command_line(COMMAND, argv)
    assert message in str(error.value)


def test_every_benchmark_file_passes_its_own_checks(tmp_path: Path) -> None:
    """The keys and types of each configs/bench/<name>.yaml are what the checks hold the command line to (a
    paper benchmark also needs an existing data_dir; its contents are the loader's to judge)."""
    from mtrl.supervised.config import BENCH_DIR, COMMAND

    for path in sorted(BENCH_DIR.glob("*.yaml")):
        argv = [f"bench={path.stem}", "baseline=none", f"data_dir={tmp_path}"]
        assert validation.check_command_line(COMMAND, argv) is not None


# -------------------------------------------------------------------------------------------- mtrl.report
def _call(main: Callable[[list[str]], object], argv: list[str]) -> tuple[object, str]:
    """``main(argv)`` in this process: its exit code (returned or raised) and its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def malformed_report(count: int, fixtures: dict[str, Path], seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    damaged, empty, file = str(fixtures["damaged_run"]), str(fixtures["empty_dir"]), str(fixtures["file"])
    kinds: list[Callable[[], list[str]]] = [
        lambda: [],
        lambda: [f"/nonexistent/{_word(rng)}"],
        lambda: [f"{empty}/{_word(rng)}*"],                        # a glob that matches nothing
        lambda: [empty],                                         # a folder without runs
        lambda: [damaged],                                       # only damaged summaries / results
        lambda: [str(fixtures["foreign_run"])],                  # a summary.json of something else
        lambda: [file],                                          # a file that is no summary
        lambda: [rng.choice([damaged, empty]), f"--{_word(rng)}"],
        lambda: [empty, "--out"],
        lambda: [damaged, "--out", file],                        # --out is a file
        lambda: [damaged, "--out", f"{file}/{_word(rng)}"],      # a file in the way
        lambda: [f"-{rng.choice(string.ascii_lowercase)}"],
        lambda: [empty, "--no-plots=3"],
    ]
    return [rng.choice(kinds)() for _ in range(count)]


def test_report_fuzz_in_process(fixtures: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtrl.report import main

    monkeypatch.chdir(tmp_path / "cwd")
    before = snapshot(tmp_path)
    for argv in malformed_report(50, fixtures):
        code, stderr = _call(main, argv)
        assert code == 2, (argv, stderr)
        assert_one_line(stderr, argv)
    assert snapshot(tmp_path) == before, "something was written for bad input"


def test_report_damaged_summary_is_named_once(fixtures: dict[str, Path]) -> None:
    from mtrl.report import main

    code, stderr = _call(main, [str(fixtures["damaged_run"] / "run")])
    assert code == 2 and stderr.count("summary.json: unreadable (JSONDecodeError") == 1
    assert stderr.startswith("mtrl.report: error: no usable run under ")


# --------------------------------------------------------------------------------------------- mtrl.bench
def malformed_bench(count: int, fixtures: dict[str, Path], seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    numeric = {"env": ["--steps", "--repeats"], "jacobian": ["--tasks", "--batch-per-task", "--hidden", "--repeats"],
               "update": ["--tasks", "--batch-size", "--hidden-dim", "--repeats"], "aggregators": ["--n", "--repeats"],
               "train": ["--warmup", "--window", "--chunk", "--eval-every"],
               "learn": ["--seeds", "--steps", "--hidden", "--layers", "--batch-size", "--workers", "--eval-episodes"],
               "gpu-check": ["--budget-s", "--eval-every"]}
    file = str(fixtures["file"])
    kinds: list[Callable[[], list[str]]] = [
        lambda: [(what := rng.choice(list(numeric))), rng.choice(numeric[what]),
                 str(rng.choice([0, -rng.randint(1, 99), 2.5, _word(rng)]))],
        lambda: [rng.choice(list(numeric)), f"--{_word(rng)}"],
        lambda: [_word(rng)],
        lambda: [],
        lambda: [rng.choice(list(numeric)), "--device", rng.choice([_word(rng), "cuda:99", "tpu"])],
        lambda: [rng.choice(list(numeric)), "--out", rng.choice([str(fixtures["empty_dir"]), f"{file}/r.json"])],
        lambda: [rng.choice(list(numeric)), "--torch-threads", str(rng.choice([0, -2, _word(rng)]))],
        lambda: ["env", rng.choice(["--benchmark", "--task", "--protocol"]), _word(rng)],
        lambda: ["env", "--benchmark", rng.choice(["mt1", "mt10 --task reach-v3"])],
        lambda: [rng.choice(["update", "launches"]), "--aggregators", rng.choice([_word(rng), "pivrg"])],
        lambda: ["update", "--modes", _word(rng)],
        lambda: ["aggregators", rng.choice(["--ks", "--methods"]), rng.choice(["0", _word(rng), "10,-5"])],
        lambda: ["train", rng.choice(["--env", "--backend", "--orders", "--aggs"]), _word(rng)],
        lambda: ["train", "--quick", "--override", rng.choice([f"{_word(rng)}=1", "agent.lr=-1", "agg.options.x=1"])],
        lambda: ["learn", rng.choice(["--tasks", "--multitask --aggs", "--protocol", "--agents"]), _word(rng)],
        lambda: ["learn", "--run-dir", f"{file}/{_word(rng)}"],
        lambda: ["gpu-check", "--phases", _word(rng)],
        lambda: ["gpu-check", "--out-dir", f"{file}/{_word(rng)}"],
    ]
    return [" ".join(rng.choice(kinds)()).split() for _ in range(count)]


def _no_benchmark_runs(signum: int, frame: object) -> None:
    raise TimeoutError("a bad input was accepted: the benchmark started")


def test_bench_fuzz_in_process(fixtures: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from mtrl.bench.__main__ import main

    monkeypatch.chdir(tmp_path / "cwd")
    previous = signal.signal(signal.SIGALRM, _no_benchmark_runs)
    before = snapshot(tmp_path)
    for argv in malformed_bench(60, fixtures):
        signal.alarm(60)   # a refusal takes well under a second; an accepted input would run for minutes
        try:
            code, stderr = _call(main, argv)
        finally:
            signal.alarm(0)
        assert code == 2, (argv, stderr)
        assert_one_line(stderr, argv)
    signal.signal(signal.SIGALRM, previous)
    assert snapshot(tmp_path) == before, "something was written for bad input"


# ------------------------------------------------------------------------------- the real entries (sample)
@pytest.mark.parametrize(("module", "argv"), [
    ("mtrl.stl", ["tasks=[reach-v3,reach-v3]"]),
    ("mtrl.supervised", ["agg=pivgr"]),
    ("mtrl.report", ["--out"]),
    ("mtrl.bench", ["learn", "--quick", "--steps", "-5"]),
])
def test_the_entry_exits_2_with_one_line_and_leaves_nothing(module: str, argv: list[str], tmp_path: Path) -> None:
    assert_refused_by_the_entry(module, argv, tmp_path)


@pytest.mark.parametrize(("argv", "message"), [
    (["bench=multidigits", "bench.data.n_trian=5"], "bench.data: multidigits() got an unexpected keyword argument 'n_trian'"),
    (["bench=multimnist", "data_dir=runs"], "MultiMNIST needs the four MNIST IDX files"),
])
def test_a_late_refusal_keeps_what_was_there(argv: list[str], message: str, tmp_path: Path) -> None:
    """A refusal found by the run itself (the data loader) removes the run directory it made, and only that."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("the user's")
    assert message in assert_refused_by_the_entry("mtrl.supervised", [*argv, "baseline=none"], tmp_path)
