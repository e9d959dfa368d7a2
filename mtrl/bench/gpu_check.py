"""The one prepared device check: everything a session with the GPU machine should run, in one call.

On the GPU machine (README, "GPU check", for the exact ``run`` call)::

    python3 -m mtrl.bench.gpu_check --device cuda --out-dir $OUT

Phases, each with its own time budget (a share of ``--budget-s``) and each isolated (a subprocess with a
timeout, its failure recorded, the next phase run):

1. ``install``: the MuJoCo / Meta-World / Hydra stack from ``.whl/*.whl`` into ``/tmp/site`` and the
   trimmed EnvPool from ``.whl/envpool-metaworld.tar.xz`` into ``/tmp/ep`` (as
   ``../shared/tools/device-wheels.sh --envpool`` prepares them), skipped when already importable;
2. ``tests``: the CUDA-only tests (``pytest -k test_cuda_``) of ``agent.compile`` (captured updates agree
   with eager and never sync with the host; actions through pinned buffers), of the aggregators (each call
   captured in a CUDA graph, replays like eager calls) and of ``bench update``, which CI cannot run;
3. ``update``: ``python -m mtrl.bench update`` for the aggregators (``ls``, ``pivrg``) per compile mode;
4. ``train``: ``python -m mtrl.bench train`` (skipped with a message while that benchmark does not exist);
5. ``learn``: an MT10 ``python -m mtrl.train`` run per aggregator, side by side, stopped by ctrl-C
   (which saves its summary) when the phase's time is up; their evaluations are the success curves.

Everything lands in ``--out-dir`` as two files: ``gpu_check.json`` (every phase's status, time and
result, the learning curves, the machine) and ``gpu_check.log`` (every phase's output). The defaults
finish within 8 minutes, so that a rerun fits a 15-minute lease.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mtrl.bench._common import names, positive_int, print_table, usage_error, write_json
from mtrl.validation import writable_dir_type

HELP = "the prepared GPU-machine check: install, bench update, bench train, MT10 learning runs (one output dir)"

PHASES = ("install", "tests", "update", "train", "learn")
#: Share of --budget-s per phase; what a phase leaves unused goes to the later ones.
SHARES = {"install": 0.04, "tests": 0.12, "update": 0.2, "train": 0.16, "learn": 0.48}
#: Seconds a learning run gets after ctrl-C to write its checkpoint and summary.
STOP_GRACE_S = 20
#: What the learning phase needs; the install phase is skipped when all of these import.
STACK = ("metaworld", "mujoco", "gymnasium", "hydra", "stable_baselines3")
SITE, ENVPOOL_SITE = Path("/tmp/site"), Path("/tmp/ep")
ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", type=writable_dir_type, default=os.environ.get("OUT") or "runs/gpu-check",
                        help="where gpu_check.json and gpu_check.log go (default: $OUT, else runs/gpu-check)")
    parser.add_argument("--budget-s", type=positive_int, default=420, help="wall time for all phases together")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--aggs", default="ls,pivrg", help="aggregators of every phase (ls first: the reference)")
    parser.add_argument("--modes", default=None, help="agent.compile modes of the update phase (default: bench update's)")
    parser.add_argument("--wheels", default=str(ROOT / ".whl"), help="the wheel folder of device-wheels.sh")
    parser.add_argument("--train-args", default="", help="extra options of `python -m mtrl.bench train`")
    parser.add_argument("--eval-every", type=positive_int, default=5000, help="learning runs: vector steps between evaluations")
    parser.add_argument("--eval-episodes", type=positive_int, default=2, help="learning runs: episodes per task and evaluation")
    parser.add_argument("--learn-overrides", default="",
                        help="extra Hydra overrides of the learning runs (e.g. 'vector_strategy=envpool')")


# ----------------------------------------------------------------------------------------- install
def _importable(modules: tuple[str, ...]) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in modules)


def _extend_path(path: Path) -> None:
    """Make ``path`` importable here and in every phase's subprocess."""
    sys.path.insert(0, str(path))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(path), *filter(None, [os.environ.get("PYTHONPATH")])])
    importlib.invalidate_caches()


def install(wheels: Path, log: Any) -> dict[str, Any]:
    """Install the stack and the trimmed EnvPool from ``wheels`` where they do not import yet."""
    done: dict[str, Any] = {}
    if _importable(STACK):
        done["stack"] = "already importable"
    else:
        files = sorted(str(path) for path in wheels.glob("*.whl"))
        if not files:
            raise RuntimeError(f"{STACK} do not import and {wheels} holds no wheels; run "
                               f"../shared/tools/device-wheels.sh --envpool here and carry .whl")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *files],
                       check=True, stdout=log, stderr=subprocess.STDOUT)
        _extend_path(SITE)
        done["stack"] = f"installed {len(files)} wheels into {SITE}"
    bundle = wheels / "envpool-metaworld.tar.xz"
    if _importable(("envpool",)):
        done["envpool"] = "already importable"
    elif bundle.exists():
        ENVPOOL_SITE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "xJf", str(bundle), "-C", str(ENVPOOL_SITE)], check=True, stdout=log,
                       stderr=subprocess.STDOUT)
        _extend_path(ENVPOOL_SITE)
        done["envpool"] = f"unpacked into {ENVPOOL_SITE}"
    else:
        done["envpool"] = f"absent: no {bundle} (run device-wheels.sh with --envpool)"
    return done


# ------------------------------------------------------------------------------------------ phases
def _bench(what: str, options: list[str], args: argparse.Namespace, work: Path, log: Any, timeout: float) -> dict:
    """``python -m mtrl.bench <what>`` in a subprocess; its JSON result."""
    out = work / f"{what}.json"
    command = [sys.executable, "-m", "mtrl.bench", what, "--device", args.device, "--out", str(out), *options]
    if args.quick:
        command.append("--quick")
    if args.torch_threads:
        command += ["--torch-threads", str(args.torch_threads)]
    _run_logged(command, log, timeout)
    return json.loads(out.read_text())


def _run_logged(command: list[str], log: Any, timeout: float) -> None:
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)


def cuda_tests(log: Any, timeout: float) -> dict[str, Any]:
    """``pytest -k test_cuda_`` on the agent's tests; the summary line (a failure raises, with the log)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_cuda_", "-rs",
               "tests/agents/test_execution.py", "tests/aggregation/test_no_host_sync.py", "tests/bench/test_update.py"]
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    log.write(done.stdout + done.stderr)
    lines = done.stdout.strip().splitlines() or [f"exit code {done.returncode}"]
    if done.returncode not in (0, 5):   # 5: nothing collected
        raise RuntimeError("CUDA tests failed: " + " | ".join(lines[-15:]))   # the assertion, in the bundle
    return {"summary": lines[-1]}


def update(args: argparse.Namespace, aggs: list[str], work: Path, log: Any, timeout: float) -> dict[str, Any]:
    """``bench update`` once per compile mode (a slow compilation must not lose the other modes' numbers)."""
    modes = args.modes.split(",") if args.modes else (["none", "cudagraphs"] if args.device.startswith("cuda")
                                                     else ["none"])
    started, results = time.monotonic(), {}
    for index, mode in enumerate(modes):
        budget = (timeout - (time.monotonic() - started)) / (len(modes) - index)
        options = ["--aggregators", ",".join(dict.fromkeys(["ls", *aggs])), "--modes", mode]
        try:
            results[mode] = _bench("update", options, args, work, log, budget)["results"][mode]
        except subprocess.TimeoutExpired:
            results[mode] = {"error": f"stopped after {budget:.0f} s"}
        except Exception as error:  # noqa: BLE001 - the next mode still runs
            results[mode] = {"error": f"{type(error).__name__}: {error}"}
    for rows in results.values():   # the speed-up of each mode, measured in this one call
        if "error" in rows:
            continue
        for agg, row in rows.items():
            eager = results.get("none", {}).get(agg, {}).get("ms")
            if "ms" in row and eager:
                row["ratio_to_eager"] = row["ms"] / eager
    return results


def _learn_command(agg: str, args: argparse.Namespace, run_dir: Path) -> list[str]:
    if args.quick:   # one task, tiny networks: the CPU test of this script
        settings = ["env=mt1", "env.task=reach-v3", "protocol=mtrl", "steps=40", "warmup_steps=20", "eval_every=20",
                    "agent.batch_size=16", "agent.hidden_dim=16", "eval_episodes=1"]
    else:            # MT10 until stopped; evaluations give the success curve
        settings = ["env=mt10", "steps=2000000", f"eval_every={args.eval_every}", f"eval_episodes={args.eval_episodes}"]
    if args.torch_threads:
        settings.append(f"torch_threads={args.torch_threads}")
    return [sys.executable, "-m", "mtrl.train", f"agg={agg}", f"device={args.device}", "progress=false",
            "checkpoint_every=1000000", f"hydra.run.dir={run_dir}", *settings, *shlex.split(args.learn_overrides)]


def learn(args: argparse.Namespace, aggs: list[str], work: Path, log: Any, timeout: float) -> dict[str, Any]:
    """One training run per aggregator, side by side, stopped by ctrl-C before ``timeout`` runs out."""
    started = time.monotonic()
    runs = {}
    for agg in aggs:
        command = _learn_command(agg, args, work / f"learn_{agg}")
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        runs[agg] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    stop_at = started + max(1.0, timeout - STOP_GRACE_S)
    while time.monotonic() < stop_at and any(run.poll() is None for run in runs.values()):
        time.sleep(1.0)
    for run in runs.values():
        if run.poll() is None:
            run.send_signal(signal.SIGINT)      # the trainer saves and writes summary.json
    for run in runs.values():
        try:
            run.wait(timeout=max(1.0, started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
    result: dict[str, Any] = {}
    for agg, run in runs.items():
        summary_path = work / f"learn_{agg}" / "summary.json"
        if not summary_path.exists():
            result[agg] = {"error": f"no summary.json (exit code {run.returncode}); see gpu_check.log"}
            continue
        summary = json.loads(summary_path.read_text())
        wall = summary.get("wall_time_s") or float("nan")
        result[agg] = {
            "exit_code": run.returncode, "finished": summary.get("finished"), "steps": summary.get("steps"),
            "updates": summary.get("updates"), "wall_time_s": wall,
            "steps_per_s": summary.get("steps", 0) / wall if wall == wall and wall > 0 else None,
            "success_curve": [{"step": e["step"], "mean": e["mean"], "per_task": e.get("per_task")}
                              for e in summary.get("evaluations", [])],
            "best_mean_success": summary.get("best_mean_success"),
        }
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    phases = names(args.phases)
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        usage_error(f"gpu-check: unknown phase(s) {unknown}; choose from {', '.join(PHASES)}.")
    aggs = names(args.aggs)
    if not aggs:
        usage_error("gpu-check: --aggs should name at least one aggregator, e.g. ls,pivrg.")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    report: dict[str, Any] = {"device": args.device, "budget_s": args.budget_s, "aggs": aggs, "phases": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, open(out_dir / "gpu_check.log", "a") as log:
        work = Path(tmp)
        for index, phase in enumerate(phases):
            left = deadline - time.monotonic()
            later = sum(SHARES[name] for name in phases[index:])
            budget = max(1.0, left * SHARES[phase] / later)
            started = time.monotonic()
            entry: dict[str, Any] = {"budget_s": round(budget, 1)}
            log.write(f"\n===== {phase} (budget {budget:.0f} s) =====\n")
            log.flush()
            print(f"gpu-check: {phase} (budget {budget:.0f} s) ...", flush=True)
            try:
                if phase == "install":
                    entry["result"] = install(Path(args.wheels), log)
                elif phase == "tests":
                    entry["result"] = cuda_tests(log, budget)
                elif phase == "update":
                    entry["result"] = update(args, aggs, work, log, budget)
                elif phase == "train":
                    if importlib.util.find_spec("mtrl.bench.train") is None:
                        entry.update(status="skipped", reason="mtrl.bench.train does not exist in this checkout")
                    else:
                        entry["result"] = _bench("train", shlex.split(args.train_args), args, work, log, budget)
                else:
                    entry["result"] = learn(args, aggs, work, log, budget)
                entry.setdefault("status", "ok")
            except subprocess.TimeoutExpired:
                entry.update(status="timeout", error=f"stopped after its budget of {budget:.0f} s")
            except Exception as error:  # noqa: BLE001 - one failing phase must not lose the others
                entry.update(status="failed", error=f"{type(error).__name__}: {error}")
            entry["seconds"] = round(time.monotonic() - started, 1)
            report["phases"][phase] = entry
            print(f"gpu-check: {phase}: {entry['status']} in {entry['seconds']} s"
                  + (f" ({entry.get('error') or entry.get('reason')})" if entry["status"] != "ok" else ""), flush=True)
            write_json(report, out_dir / "gpu_check.json")   # what is done so far survives a kill
    _print_summary(report)
    return report


def _print_summary(report: dict[str, Any]) -> None:
    """The last lines of the output (what a device call returns first): phases, update times, learning."""
    print_table([{"phase": name, "status": entry["status"], "seconds": entry["seconds"],
                  "note": entry.get("error") or entry.get("reason")} for name, entry in report["phases"].items()],
                title="gpu-check phases")
    rows = [{"mode": mode, "aggregator": agg, **row} for mode, by_agg in
            report["phases"].get("update", {}).get("result", {}).items() for agg, row in by_agg.items()
            if isinstance(row, dict)]
    if rows:
        print_table(rows, ["mode", "aggregator", "ms", "ratio_to_ls", "ratio_to_eager", "kernel_ms", "warmup_s",
                           "captured", "error"], title="One SAC update")
    learned = report["phases"].get("learn", {}).get("result", {})
    if learned:
        print_table([{"aggregator": agg, "steps": run.get("steps"), "steps_per_s": run.get("steps_per_s"),
                      "evaluations": len(run.get("success_curve", [])),
                      "last_success": (run.get("success_curve") or [{}])[-1].get("mean"), "error": run.get("error")}
                     for agg, run in learned.items()], title="Learning runs")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The entry on a bare machine: install first, so that the harness can import everything."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wheels = Path(argv[argv.index("--wheels") + 1]) if "--wheels" in argv else ROOT / ".whl"
    try:
        install(wheels, sys.stdout)
    except Exception as error:  # noqa: BLE001 - the install phase reports it again, in the bundle
        print(f"gpu-check: install failed: {error}", file=sys.stderr)
    from mtrl.bench.__main__ import main as bench_main

    return bench_main(["gpu-check", *argv])


if __name__ == "__main__":
    main()
