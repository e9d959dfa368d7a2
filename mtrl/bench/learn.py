"""Does our SAC learn, and as well as stable-baselines3? Many seeds in one command, in parallel processes.

    python -m mtrl.bench learn --tasks reach-v3 push-v3 --seeds 6 --steps 50000 --workers 2
    python -m mtrl.bench learn --hidden 256 --layers 2 --steps 20000 --seeds 6     # small networks (CPU)
    python -m mtrl.bench learn --multitask --aggs ls pivrg --steps 30000 --seeds 1  # MT4 of easy tasks
    python -m mtrl.bench learn --multitask --tasks mt10 --aggs ls pivrg nashmtl:1 famo:1 --seeds 3 --steps 200000
    python -m mtrl.bench learn ... --resume       # the same command again: keeps the runs already finished

**Parity** (default): for every task and seed, our multi-task SAC with one task (``k = 1``, ``agg=ls``,
which for one task is plain SAC) and SB3's SAC train on the same Meta-World task (MT1: the same goals and
environment seeds) with the same hyperparameters: ``--layers`` × ``--hidden`` ReLU networks (the paper's
3 × 400 by default), Adam 3e-4, γ 0.99, τ 0.005, initial temperature 1, target entropy −|A|, batch
``--batch-size`` (128), replay 1M, ``--warmup-steps`` uniform random actions, one update per step. Every
``--eval-every`` steps both are evaluated with their deterministic policy (tanh μ) and then with their
stochastic one, on the evaluation environment. With each evaluation: α and the policy entropy (−mean log π over
replay observations). The summary gives mean ± standard error over seeds and the gap ours − SB3 with its
95 % confidence interval (Welch's t: unequal variances, Welch–Satterthwaite degrees of freedom).

**Multi-task** (``--multitask``): ``mtrl.train`` itself (``--tasks mt10``: the whole benchmark, ``env=mt10``;
or a subset, ``env.tasks=[...]``) with each aggregator of ``--aggs`` (``name:n`` runs seeds ``0 .. n-1`` of it
only), the CPU preset ``agent=sac_small`` by default (``--agent``), plus the success of a uniformly random
policy on the same evaluation episodes (the level to beat), written as a ``summary.json`` (``"policy":
"random"``) beside the training runs': ``python -m mtrl.report <run dir>`` makes the tables and curves of the
whole study. Curves as JSON and PNG.

Each run is a worker process with one torch thread and writes its own JSON under ``--run-dir`` when it
ends, so an interrupted sweep keeps its finished runs; ``--resume`` reuses them (refused if their settings
differ). What still differs between the two SACs by design (see ``agents/``): our log σ is squashed into
[−20, 2] by tanh (mtrl; SB3 clamps), the tanh log-determinant is exact (SB3 adds 1e-6), layers start
Xavier-uniform (SB3: PyTorch's default), the temperature loss is in α (SB3: log α), and our observation
carries the 1-dim task one-hot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from mtrl.bench._common import non_negative_int_type, positive_int, print_table, write_json
from mtrl.validation import writable_dir_type

HELP = "our SAC beside SB3 on MT1 tasks (seeds in parallel, gap with 95% CI); --multitask: mtrl.train on a task subset"

LR, GAMMA, TAU, REPLAY = 3e-4, 0.99, 0.005, 1_000_000
#: Four MT10 tasks that single-task SAC learns within ~10-20k steps (the multi-task CPU check's default).
EASY_MT10 = ["reach-v3", "button-press-topdown-v3", "drawer-close-v3", "window-open-v3"]
AGENTS = ("ours", "sb3")
#: Evaluations averaged in the ``late_*`` statistics. One evaluation of 10-20 episodes is noisy (a success
#: rate of 0.5 has a standard error of 0.11-0.16 from the episodes alone); the mean of the last few is the
#: steadier reading of where a run ended, beside the final one that the parity target names.
LATE_EVALUATIONS = 3
#: The success statistics of the parity summary, each with its gap ours − SB3.
SUCCESS_KEYS = ("final_deterministic", "final_stochastic", "late_deterministic", "late_stochastic")
_QUICK = dict(steps=60, warmup_steps=20, eval_every=30, eval_episodes=1, max_episode_steps=20, hidden=32, layers=1,
              batch_size=16, seeds=2)


class LearnError(ValueError):
    """Bad input to the learn benchmark (printed as one line, exit code 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--multitask", action="store_true", help="mtrl.train on a task subset with --aggs")
    parser.add_argument("--tasks", nargs="+", default=None,
                        help="Meta-World v3 tasks (parity: each alone, default reach-v3; --multitask: the subset, "
                             f"default {' '.join(EASY_MT10)}, or mt10 / mt50 for the whole benchmark)")
    parser.add_argument("--seeds", type=positive_int, default=6, help="seeds 0 .. N-1 (default 6)")
    parser.add_argument("--steps", type=positive_int, default=20_000, help="environment (vector) steps per run")
    parser.add_argument("--agent", default=None, choices=["sac", "sac_small"],
                        help="--multitask: the agent preset (configs/agent/; default sac_small)")
    parser.add_argument("--hidden", type=positive_int, default=None,
                        help="layer width (default: 400 parity; --multitask: the preset's)")
    parser.add_argument("--layers", type=positive_int, default=None,
                        help="hidden layers (default: 3 parity; --multitask: the preset's)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="batch per task (default: 128 parity, the paper's; --multitask: the preset's)")
    parser.add_argument("--warmup-steps", type=non_negative_int_type, default=1500, help="uniformly random actions first")
    parser.add_argument("--eval-every", type=positive_int, default=None, help="default: steps / 10")
    parser.add_argument("--eval-episodes", type=positive_int, default=None,
                        help="per task and evaluation; default: the protocol's")
    parser.add_argument("--protocol", default="metaworld", choices=["metaworld", "mtrl"])
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS, help="parity: who trains")
    parser.add_argument("--aggs", nargs="+", default=["ls", "pivrg"],
                        help="--multitask: the aggregators; name:n runs only seeds 0 .. n-1 of it (e.g. nashmtl:1)")
    parser.add_argument("--temperature-loss", default="alpha", choices=["alpha", "log_alpha"],
                        help="our SAC's temperature loss (agent.temperature_loss; parity A/B against SB3's log_alpha)")
    parser.add_argument("--workers", type=positive_int, default=2, help="parallel processes, one torch thread each")
    parser.add_argument("--run-dir", type=writable_dir_type, default=None,
                        help="per-run JSON files (default: runs/bench/learn/<settings>)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished runs found in --run-dir (and continue interrupted --multitask ones)")
    parser.add_argument("--summarize", action="store_true",
                        help="train nothing: the table of what --run-dir holds (unfinished --multitask runs: so far)")


# ----------------------------------------------------------------------------------------- the runs
def _eval_points(steps: int, eval_every: int) -> list[int]:
    return sorted({*range(eval_every, steps, eval_every), steps})


def _protocol(spec: dict[str, Any]) -> Any:
    from envs import make_protocol

    return make_protocol(spec["protocol"], max_episode_steps=spec.get("max_episode_steps"))


def _evaluation(success_of: Any, step: int, task: str, alpha: float, entropy: float) -> dict[str, float]:
    """One point of the curve: deterministic then stochastic success of the same policy, α, entropy."""
    return {"step": step, "deterministic": success_of(True)[task], "stochastic": success_of(False)[task],
            "alpha": alpha, "entropy": entropy}


def _final(curve: list[dict[str, float]], **extra: Any) -> dict[str, Any]:
    last = curve[-1]
    return {"final_deterministic": last["deterministic"], "final_stochastic": last["stochastic"],
            "alpha": last["alpha"], "entropy": last["entropy"], "curve": curve, **extra}


def train_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Our :class:`agents.MultiTaskSAC` with one task and ``ls`` on MT1 ``spec["task"]``."""
    import torch

    from agents import MultiTaskSAC, ReplayBuffer, SACConfig
    from envs import evaluate, make_eval_env, make_multitask_env
    from mtrl.aggregation import make

    task, seed, protocol = spec["task"], spec["seed"], _protocol(spec)
    env = make_multitask_env("mt1", protocol, seed, task=task, vector_strategy="sync")
    eval_env = make_eval_env("mt1", protocol, seed, task=task, vector_strategy="sync")
    torch.manual_seed(seed)
    config = SACConfig(hidden_dim=spec["hidden"], trunk_layers=spec["layers"], head_layers=1, gamma=GAMMA, tau=TAU,
                       lr=LR, init_temperature=1.0, batch_size=spec["batch_size"],
                       temperature_loss=spec.get("temperature_loss", "alpha"))
    agent = MultiTaskSAC(env.obs_dim, env.action_dim, 1, config, make("ls"), make("ls"), device="cpu", seed=seed)
    buffer = ReplayBuffer(1, env.obs_dim, env.action_dim, min(REPLAY, spec["steps"]), device="cpu", seed=seed)
    rng = np.random.default_rng(seed)
    points = set(_eval_points(spec["steps"], spec["eval_every"]))
    success_of = lambda deterministic: evaluate(  # noqa: E731
        lambda obs: agent.act(obs, deterministic=deterministic), eval_env, spec["eval_episodes"])

    @torch.no_grad()
    def entropy() -> float:   # −mean log π(a|s), a ~ π, over replay observations
        observations = buffer.sample(min(1024, len(buffer))).obs                          # [1, b, obs_dim]
        noise = torch.randn((*observations.shape[:-1], env.action_dim))
        return float(-agent.actor(observations, noise)[1].mean())

    curve, train_success = [], []
    start = time.perf_counter()
    obs = env.reset()
    for step in range(1, spec["steps"] + 1):
        if step <= spec["warmup_steps"]:
            action = rng.uniform(env.action_low, env.action_high, size=(1, env.action_dim)).astype(np.float32)
        else:
            action = agent.act(obs)
        result = env.step(action)
        buffer.add(obs, action, result.reward, result.next_obs, result.terminated)
        obs = result.obs
        train_success += [float(record.success) for record in result.finished]
        if step > spec["warmup_steps"]:
            agent.update(buffer.sample(agent.batch_per_task))
        if step in points:
            curve.append(_evaluation(success_of, step, task, float(agent.alpha[0]), entropy()))
    wall = time.perf_counter() - start
    env.close()
    eval_env.close()
    return _final(curve, wall_time_s=wall, train_episode_success=train_success)


def train_sb3(spec: dict[str, Any]) -> dict[str, Any]:
    """stable-baselines3's SAC on the same task, goals and seeds (the environment of ``mtrl.stl``)."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from envs import evaluate, make_eval_env, make_single_task_env

    class EpisodeSuccess(gym.Wrapper):
        """Records each finished episode's success (``info["success"]`` at any step)."""

        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            self.episodes: list[float] = []
            self._success = False

        def reset(self, **kwargs: Any) -> Any:
            self._success = False
            return self.env.reset(**kwargs)

        def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = self.env.step(action)
            self._success |= bool(info.get("success", False))
            if terminated or truncated:
                self.episodes.append(float(self._success))
            return obs, reward, terminated, truncated, info

    task, seed, protocol = spec["task"], spec["seed"], _protocol(spec)
    env = EpisodeSuccess(make_single_task_env(task, protocol, seed))   # the goals of MT1's row
    eval_env = make_eval_env("mt1", protocol, seed, task=task, vector_strategy="sync", one_hot=False)
    model = SAC("MlpPolicy", env, learning_rate=LR, buffer_size=min(REPLAY, spec["steps"]),
                learning_starts=spec["warmup_steps"], batch_size=spec["batch_size"], tau=TAU, gamma=GAMMA,
                train_freq=1, gradient_steps=1, ent_coef="auto_1.0", target_entropy="auto",
                policy_kwargs=dict(net_arch=[spec["hidden"]] * spec["layers"], activation_fn=torch.nn.ReLU),
                seed=seed, device="cpu", verbose=0)
    points = set(_eval_points(spec["steps"], spec["eval_every"]))
    success_of = lambda deterministic: evaluate(  # noqa: E731
        lambda obs: model.predict(obs, deterministic=deterministic)[0], eval_env, spec["eval_episodes"])
    curve: list[dict[str, float]] = []

    @torch.no_grad()
    def entropy() -> float:
        observations = model.replay_buffer.sample(min(1024, model.replay_buffer.size())).observations
        return float(-model.actor.action_log_prob(observations)[1].mean())

    class Evaluation(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps in points:
                alpha = float(model.log_ent_coef.exp().item())
                curve.append(_evaluation(success_of, self.num_timesteps, task, alpha, entropy()))
            return True

    start = time.perf_counter()
    model.learn(total_timesteps=spec["steps"], callback=Evaluation())
    wall = time.perf_counter() - start
    env.close()
    eval_env.close()
    return _final(curve, wall_time_s=wall, train_episode_success=env.episodes)


def _subset_benchmark(tasks: list[str]) -> str:
    from envs import BENCHMARKS

    return "mt10" if all(task in BENCHMARKS["mt10"] for task in tasks) else "mt50"


def train_multitask(spec: dict[str, Any]) -> dict[str, Any]:
    """``python -m mtrl.train env=<mt10|mt50> env.tasks=[...] agg=<agg>`` with the spec's settings."""
    from hydra import compose, initialize_config_dir

    import mtrl.train  # noqa: F401  (registers the config's resolvers)
    from envs import BENCHMARKS
    from mtrl.experiment import run

    tasks, k = spec["tasks"], len(spec["tasks"])
    benchmark = _subset_benchmark(tasks)
    overrides = [
        f"env={benchmark}", f"agg={spec['agg']}", f"agent={spec.get('agent', 'sac')}",
        f"seed={spec['seed']}", f"steps={spec['steps']}", f"warmup_steps={spec['warmup_steps']}",
        f"eval_every={spec['eval_every']}", f"eval_episodes={spec['eval_episodes']}",
        f"log_every={min(1000, spec['eval_every'])}", f"checkpoint_every={spec['eval_every']}",
        f"buffer_size={min(REPLAY, spec['steps'] * k)}", f"protocol={spec['protocol']}",
        f"agent.temperature_loss={spec.get('temperature_loss', 'alpha')}",
        "device=cpu", "progress=false", "vector_strategy=sync", "torch_threads=1",
    ]
    if tasks != list(BENCHMARKS[benchmark]):
        overrides.append(f"env.tasks=[{','.join(tasks)}]")
    for key, override in (("hidden", "agent.hidden_dim"), ("layers", "agent.trunk_layers"),
                          ("batch_size", "agent.batch_per_task")):
        if spec.get(key) is not None:
            overrides.append(f"{override}={spec[key]}")
    if spec.get("max_episode_steps"):
        overrides.append(f"protocol.max_episode_steps={spec['max_episode_steps']}")
    resume = (Path(spec["train_dir"]) / "checkpoint.pt").is_file()
    if resume:   # an interrupted run: continue it (--resume)
        overrides.append(f"resume={spec['train_dir']}")
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    # A continued run changes only its steps in the saved config; the rest stays as it started.
    summary = run(cfg, run_dir=spec["train_dir"], overrides=[f"steps={spec['steps']}"] if resume else overrides)
    return _multitask_result(summary, spec)


def _multitask_result(summary: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The curve of ``mtrl.train``'s ``summary.json``; ``partial`` while the run has not reached its end."""
    curve = [{"step": e["step"], "mean": e["mean"], **e["per_task"]} for e in summary["evaluations"]]
    partial = not summary["finished"] or summary["steps"] < spec["steps"]
    return {"final_mean_success": summary["final_mean_success"], "curve": curve, "steps": summary["steps"],
            "partial": partial, "wall_time_s": summary["wall_time_s"], "train_dir": spec["train_dir"]}


def _partial_multitask(spec: dict[str, Any]) -> dict[str, Any] | None:
    """An unfinished multitask run's evaluations so far (its trainer rewrites summary.json at each one)."""
    path = Path(spec.get("train_dir", "")) / "summary.json"
    if spec["runner"] != "multitask" or not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return {"spec": spec, "result": _multitask_result(summary, spec)} if summary["evaluations"] else None


def random_policy(spec: dict[str, Any]) -> dict[str, Any]:
    """Success of uniformly random actions on the subset's evaluation environment: the level to beat."""
    from envs import evaluate, make_eval_env

    env = make_eval_env(_subset_benchmark(spec["tasks"]), _protocol(spec), spec["seed"], task=spec["tasks"],
                        vector_strategy="sync")
    rng = np.random.default_rng(spec["seed"])
    start = time.perf_counter()
    per_task = evaluate(lambda obs: rng.uniform(-1, 1, (env.num_tasks, env.action_dim)), env,
                        spec["eval_episodes"])
    env.close()
    result = {"final_mean_success": float(np.mean(list(per_task.values()))), "per_task": per_task,
              "wall_time_s": time.perf_counter() - start}
    if spec.get("train_dir"):   # beside the training runs, in their summary.json form, for mtrl.report
        write_json(_random_summary(spec, per_task, result["wall_time_s"]), Path(spec["train_dir"]) / "summary.json")
    return result


def _random_summary(spec: dict[str, Any], per_task: dict[str, float], wall_time_s: float) -> dict[str, Any]:
    """A uniformly random policy's evaluation as ``mtrl.train`` writes a run's ``summary.json``
    (``"policy": "random"``, one evaluation at step 0, no training)."""
    evaluation = {"step": 0, "mean": float(np.mean(list(per_task.values()))), "per_task": per_task}
    benchmark = _subset_benchmark(spec["tasks"])
    config = {"env": {"name": benchmark, "tasks": spec["tasks"]}, "agg": {"name": "random"}, "seed": spec["seed"],
              "protocol": {"name": spec["protocol"]}, "eval_episodes": spec["eval_episodes"], "steps": 0,
              "policy": "random"}
    return {"policy": "random", "env": benchmark, "agg": "random", "seed": spec["seed"], "tasks": spec["tasks"],
            "finished": True, "steps": 0, "wall_time_s": round(wall_time_s, 3), "final": evaluation,
            "best": evaluation, "best_mean_success": evaluation["mean"], "final_mean_success": evaluation["mean"],
            "best_per_task": per_task, "evaluations": [evaluation], "config": config}


RUNNERS = {"ours": train_ours, "sb3": train_sb3, "multitask": train_multitask, "random": random_policy}


def run_one(spec: dict[str, Any], path: str) -> dict[str, Any]:
    """Runs ``spec`` (in a worker process) and writes ``{"spec", "result"}`` to ``path``."""
    import torch

    torch.set_num_threads(1)   # one per process: the processes share the cores
    record = {"spec": spec, "result": RUNNERS[spec["runner"]](spec)}
    write_json(record, path)
    return record


# ---------------------------------------------------------------------------------------- statistics
def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample std / √n); the error is None for fewer than two values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size < 2:
        return float(array.mean()), None
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(array.size))


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> dict[str, float | None]:
    """``mean(a) − mean(b)`` with Welch's ``level`` confidence interval (unequal variances).

    Degrees of freedom by Welch–Satterthwaite; both samples constant gives a zero-width interval. Fewer than
    two values on a side gives no interval.
    """
    from scipy import stats

    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    difference = float(a_arr.mean() - b_arr.mean())
    if a_arr.size < 2 or b_arr.size < 2:
        return {"difference": difference, "low": None, "high": None, "df": None}
    va, vb = a_arr.var(ddof=1) / a_arr.size, b_arr.var(ddof=1) / b_arr.size
    se = math.sqrt(va + vb)
    if se == 0:
        return {"difference": difference, "low": difference, "high": difference, "df": None}
    df = (va + vb) ** 2 / (va ** 2 / (a_arr.size - 1) + vb ** 2 / (b_arr.size - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return {"difference": difference, "low": difference - half, "high": difference + half, "df": float(df)}


def _pm(mean: float, se: float | None) -> str:
    return f"{mean:.3f}" if se is None else f"{mean:.3f} ± {se:.3f}"


# -------------------------------------------------------------------------------------------- sweep
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The shared spec of every run, with the mode's defaults filled in; raises :class:`LearnError`."""
    from envs import BENCHMARKS, make_protocol

    if args.device != "cpu":   # batch 128 and small networks: one CPU thread per run beats a GPU launch per layer
        raise LearnError(f"--device {args.device}: learn trains on the CPU, one process per run; drop --device. "
                         f"For MT10 on a GPU use `python -m mtrl.train device=cuda`.")
    quick = _QUICK if args.quick else {}
    steps = quick.get("steps", args.steps)
    multitask = args.multitask
    # --multitask: the agent preset's sizes unless given; parity: the paper's 3 x 400, batch 128.
    settings = dict(
        steps=steps, warmup_steps=quick.get("warmup_steps", args.warmup_steps),
        eval_every=quick.get("eval_every", args.eval_every or max(1, steps // 10)),
        hidden=quick.get("hidden", args.hidden or (None if multitask else 400)),
        layers=quick.get("layers", args.layers or (None if multitask else 3)),
        batch_size=quick.get("batch_size", args.batch_size or (None if multitask else 128)), protocol=args.protocol,
        max_episode_steps=quick.get("max_episode_steps"), temperature_loss=args.temperature_loss,
    )
    if multitask:
        settings["agent"] = args.agent or "sac_small"
    for key in ("steps", "eval_every", "hidden", "layers", "batch_size"):
        if settings[key] is not None and settings[key] < 1:
            raise LearnError(f"--{key.replace('_', '-')} should be a positive integer, got {settings[key]}.")
    if settings["warmup_steps"] < 0:
        raise LearnError(f"--warmup-steps should be >= 0, got {settings['warmup_steps']}.")
    for key in ("seeds", "workers"):
        if getattr(args, key) < 1:
            raise LearnError(f"--{key} should be a positive integer, got {getattr(args, key)}.")
    if args.eval_episodes is not None and args.eval_episodes < 1:
        raise LearnError(f"--eval-episodes should be a positive integer, got {args.eval_episodes}.")
    settings["eval_episodes"] = quick.get("eval_episodes",
                                          args.eval_episodes or make_protocol(args.protocol).eval_episodes_per_task)
    tasks = args.tasks or (EASY_MT10 if multitask else ["reach-v3"])
    if multitask and len(tasks) == 1 and tasks[0] in ("mt10", "mt50"):
        tasks = list(BENCHMARKS[tasks[0]])
    unknown = [task for task in tasks if task not in BENCHMARKS["mt1"]]
    if unknown or len(set(tasks)) < len(tasks):
        raise LearnError(f"--tasks: {'unknown ' + ', '.join(unknown) if unknown else 'a task repeats'}. "
                         f"Valid: Meta-World v3 names such as {', '.join(EASY_MT10)}"
                         f"{', or mt10 / mt50 with --multitask' if multitask else ''}.")
    if multitask:
        settings["seeds_per_agg"] = _seeds_per_agg(args.aggs, args.seeds)
    return {**settings, "tasks": list(tasks)}


def _seeds_per_agg(aggs: list[str], seeds: int) -> dict[str, int]:
    """``--aggs ls pivrg nashmtl:1`` -> ``{"ls": seeds, "pivrg": seeds, "nashmtl": 1}``; raises :class:`LearnError`."""
    from mtrl.aggregation import available

    counts: dict[str, int] = {}
    for entry in aggs:
        name, _, count = entry.partition(":")
        if name not in available():
            raise LearnError(f"--aggs: unknown {name}. Valid: {', '.join(available())}.")
        if count and (not count.isdigit() or not 1 <= int(count) <= seeds):
            raise LearnError(f"--aggs {entry}: the seed count after ':' should be an integer in 1 .. --seeds ({seeds}).")
        if name in counts:
            raise LearnError(f"--aggs: {name} is given twice.")
        counts[name] = int(count) if count else seeds
    return counts


def _default_run_dir(args: argparse.Namespace, s: dict[str, Any]) -> Path:
    mode = "multitask" if args.multitask else "parity"
    quick = "-quick" if args.quick else ""
    tasks = f"{len(s['tasks'])}tasks" if len(s["tasks"]) > 3 else "+".join(s["tasks"])
    protocol = "" if s["protocol"] == "metaworld" else f"-{s['protocol']}"
    variant = "" if s["temperature_loss"] == "alpha" else f"-{s['temperature_loss']}"
    size = f"{s['layers']}x{s['hidden']}" if s["hidden"] else s["agent"]
    return Path("runs/bench/learn") / f"{mode}{quick}-{tasks}{protocol}-{s['steps']}steps-{size}{variant}"


def _specs(args: argparse.Namespace, s: dict[str, Any], run_dir: Path) -> list[tuple[dict[str, Any], Path]]:
    """Every run of the sweep and its JSON path; seeds outermost, so a partial sweep stays balanced."""
    seeds = range(min(args.seeds, _QUICK["seeds"]) if args.quick else args.seeds)
    common = {key: value for key, value in s.items() if key not in ("tasks", "seeds_per_agg")}
    specs = []
    for seed in seeds:
        if args.multitask:
            specs.append(({"runner": "random", **common, "tasks": s["tasks"], "seed": seed,
                           "train_dir": str(run_dir / "random" / f"seed{seed}")},
                          run_dir / "random" / f"seed{seed}.json"))
            for agg, count in s["seeds_per_agg"].items():
                if seed >= count:
                    continue
                train_dir = str(run_dir / agg / f"seed{seed}")
                specs.append(({"runner": "multitask", **common, "tasks": s["tasks"], "agg": agg, "seed": seed,
                               "train_dir": train_dir}, Path(train_dir + ".json")))
        else:
            for task in s["tasks"]:
                for agent in args.agents:
                    specs.append(({"runner": agent, **common, "task": task, "seed": seed},
                                  run_dir / agent / task / f"seed{seed}.json"))
    return specs


#: Settings added after runs had been written, with the value those runs had: a run from before the
#: setting still resumes and summarises with the runs that name it.
ADDED_SETTINGS = {"temperature_loss": "alpha"}


def _load_finished(specs: list[tuple[dict[str, Any], Path]], resume: bool) -> dict[Path, dict[str, Any]]:
    finished = {}
    for spec, path in specs:
        if not path.exists():
            continue
        if not resume:
            raise LearnError(f"{path} exists: add --resume to keep the finished runs, or choose another --run-dir.")
        record = json.loads(path.read_text())
        added = {key: value for key, value in ADDED_SETTINGS.items() if key in spec}
        record["spec"] = {**added, **record.get("spec", {})}
        if record["spec"] != json.loads(json.dumps(spec)):
            raise LearnError(f"{path} was made with other settings; use the same options or another --run-dir.")
        finished[path] = record
    return finished


def _execute(todo: list[tuple[dict[str, Any], Path]], workers: int) -> tuple[list[dict[str, Any]], list[str]]:
    records, failures = [], []
    if not todo:
        return records, failures
    if workers == 1:
        for spec, path in todo:
            records.append(run_one(spec, str(path)))
        return records, failures
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # inherited by the spawned workers before torch loads
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_one, spec, str(path)): path for spec, path in todo}
        for future in as_completed(futures):
            try:
                records.append(future.result())
                print(f"done: {futures[future]}", flush=True)
            except Exception as error:  # noqa: BLE001 - one failed run must not lose the others
                failures.append(f"{futures[future]}: {type(error).__name__}: {error}")
                print(f"FAILED: {failures[-1]}", file=sys.stderr, flush=True)
    return records, failures


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        s = _settings(args)
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args, s)
        specs = _specs(args, s, run_dir)
        finished = _load_finished(specs, args.resume or args.summarize)
    except LearnError as error:
        print(f"mtrl.bench learn: error: {error}", file=sys.stderr)
        sys.exit(2)
    todo = [(spec, path) for spec, path in specs if path not in finished]
    print(f"learn: {len(specs)} runs ({len(finished)} already finished) in {run_dir}, {args.workers} worker(s)",
          flush=True)
    records, failures = ([], []) if args.summarize else _execute(todo, args.workers)
    records += list(finished.values())
    done = {json.dumps(record["spec"], sort_keys=True) for record in records}
    partial = [_partial_multitask(spec) for spec, _ in todo if json.dumps(spec, sort_keys=True) not in done]
    records += [record for record in partial if record is not None]
    summary = summarize_multitask(records, s, run_dir) if args.multitask else summarize_parity(records, s)
    return {"mode": "multitask" if args.multitask else "parity", "settings": s, "run_dir": str(run_dir),
            **summary, "failures": failures, "runs": records}


# ------------------------------------------------------------------------------------------ summaries
def _curve_mean(curves: list[list[dict[str, float]]], key: str) -> list[list[float]]:
    """``[[step, mean over runs, s.e.], ...]`` at the steps every run has."""
    steps = sorted(set.intersection(*[{point["step"] for point in curve} for curve in curves])) if curves else []
    rows = []
    for step in steps:
        mean, se = mean_se([next(p[key] for p in curve if p["step"] == step) for curve in curves])
        rows.append([step, mean, se])
    return rows


def _late(curve: list[dict[str, float]], key: str) -> float:
    """The mean of ``key`` over a run's last ``LATE_EVALUATIONS`` evaluations."""
    return float(np.mean([point[key] for point in curve[-LATE_EVALUATIONS:]]))


def summarize_parity(records: list[dict[str, Any]], s: dict[str, Any]) -> dict[str, Any]:
    """Per task: each agent's mean ± s.e. over seeds, and the gap ours − SB3 with its Welch 95 % CI, for the
    final evaluation and for the mean of the last ``LATE_EVALUATIONS`` (``late_*``)."""
    per_task: dict[str, Any] = {}
    rows, gap_rows = [], []
    for task in s["tasks"]:
        by_agent = {agent: sorted((r for r in records if r["spec"]["runner"] == agent and r["spec"]["task"] == task),
                                  key=lambda r: r["spec"]["seed"]) for agent in AGENTS}
        entry: dict[str, Any] = {}
        for agent, runs in by_agent.items():
            if not runs:
                continue
            values = {key: [r["result"][key] for r in runs]
                      for key in ("final_deterministic", "final_stochastic", "alpha", "entropy", "wall_time_s")}
            for policy in ("deterministic", "stochastic"):
                values[f"late_{policy}"] = [_late(r["result"]["curve"], policy) for r in runs]
            stats = {key: dict(zip(("mean", "se"), mean_se(v))) for key, v in values.items()}
            curves = [r["result"]["curve"] for r in runs]
            entry[agent] = {"seeds": [r["spec"]["seed"] for r in runs], **values, "stats": stats,
                            **{f"curve_{key}": _curve_mean(curves, key)
                               for key in ("deterministic", "stochastic", "alpha", "entropy")}}
            rows.append({"task": task, "agent": agent, "seeds": len(runs),
                         **{key: _pm(stats[key]["mean"], stats[key]["se"]) for key in stats if key != "wall_time_s"},
                         "wall_time_s": stats["wall_time_s"]["mean"]})
        if "ours" in entry and "sb3" in entry:
            entry["gap"] = {key: welch_interval(entry["ours"][key], entry["sb3"][key]) for key in SUCCESS_KEYS}
            entry["wall_time_ratio_ours_over_sb3"] = (entry["ours"]["stats"]["wall_time_s"]["mean"]
                                                      / entry["sb3"]["stats"]["wall_time_s"]["mean"])
            for key, gap in entry["gap"].items():
                ci = "n/a" if gap["low"] is None else f"[{gap['low']:+.3f}, {gap['high']:+.3f}]"
                gap_rows.append({"task": task, "metric": key, "ours - sb3": f"{gap['difference']:+.3f}",
                                 "95% CI (Welch)": ci})
        per_task[task] = entry
    print_table(rows, title=f"success, mean ± s.e. over seeds ({s['steps']} steps, {s['layers']}x{s['hidden']}, "
                            f"{s['eval_episodes']} episodes per evaluation; late_*: the mean of the last "
                            f"{LATE_EVALUATIONS} evaluations)")
    print_table(gap_rows, title="gap ours - SB3")
    return {"per_task": per_task}


def summarize_multitask(records: list[dict[str, Any]], s: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Mean success curve of each aggregator over seeds, the random-policy level, a PNG of both."""
    random_runs = [r["result"]["final_mean_success"] for r in records if r["spec"]["runner"] == "random"]
    random_mean, random_se = mean_se(random_runs) if random_runs else (float("nan"), None)
    per_agg: dict[str, Any] = {}
    rows = [{"policy": "random", "seeds": len(random_runs), "final mean success": _pm(random_mean, random_se)}]
    for agg in sorted({r["spec"]["agg"] for r in records if r["spec"]["runner"] == "multitask"}):
        runs = [r for r in records if r["spec"]["runner"] == "multitask" and r["spec"]["agg"] == agg]
        finals = [r["result"]["final_mean_success"] for r in runs]
        partial = [r["spec"]["seed"] for r in runs if r["result"]["partial"]]
        per_agg[agg] = {"final_mean_success": finals, "steps": [r["result"]["steps"] for r in runs],
                        "unfinished_seeds": partial, "curve": _curve_mean([r["result"]["curve"] for r in runs], "mean"),
                        "per_task_curves": {task: _curve_mean([r["result"]["curve"] for r in runs], task)
                                            for task in s["tasks"]},
                        "wall_time_s": [r["result"]["wall_time_s"] for r in runs]}
        rows.append({"policy": agg, "seeds": len(runs), "final mean success": _pm(*mean_se(finals)),
                     "at step": "/".join(str(step) for step in per_agg[agg]["steps"]),
                     "unfinished": len(partial)})
    print_table(rows, columns=["policy", "seeds", "final mean success", "at step", "unfinished"],
                title=f"{len(s['tasks'])} tasks ({', '.join(s['tasks'])}), {s['steps']} vector steps, "
                            f"agent={s['agent']}{_size_overrides(s)}")
    random_per_task = {task: float(np.mean([r["result"]["per_task"][task] for r in records
                                            if r["spec"]["runner"] == "random"] or [np.nan])) for task in s["tasks"]}
    per_task_rows = [{"policy": "random", **random_per_task}]
    per_task_rows += [{"policy": agg, **{task: entry["per_task_curves"][task][-1][1] if entry["per_task_curves"][task]
                                         else None for task in s["tasks"]}} for agg, entry in per_agg.items()]
    print_table(per_task_rows, title="final success per task (mean over seeds)")
    for agg, entry in per_agg.items():
        print_table([{"step": step, "mean success": _pm(mean, se)} for step, mean, se in entry["curve"]],
                    title=f"{agg}: mean success over tasks")
    png = _plot_multitask(per_agg, random_mean, s, run_dir / "curves.png")
    return {"random_policy": {"mean": random_mean, "se": random_se, "per_seed": random_runs,
                              "per_task": random_per_task},
            "per_agg": per_agg, "png": None if png is None else str(png)}


def _size_overrides(s: dict[str, Any]) -> str:
    sizes = {"hidden": s["hidden"], "layers": s["layers"], "batch per task": s["batch_size"]}
    given = [f"{name} {value}" for name, value in sizes.items() if value is not None]
    return f" ({', '.join(given)})" if given else ""


def _plot_multitask(per_agg: dict[str, Any], random_mean: float, s: dict[str, Any], path: Path) -> Path | None:
    if not per_agg:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for agg, entry in per_agg.items():
        steps = [row[0] for row in entry["curve"]]
        means = np.asarray([row[1] for row in entry["curve"]])
        errors = np.asarray([row[2] or 0.0 for row in entry["curve"]])
        axis.plot(steps, means, marker="o", label=agg)
        axis.fill_between(steps, means - errors, means + errors, alpha=0.2)
    if not math.isnan(random_mean):
        axis.axhline(random_mean, color="gray", linestyle="--", label="random policy")
    axis.set(xlabel="vector steps", ylabel="mean success over tasks", ylim=(-0.02, 1.02),
             title=f"MT{len(s['tasks'])}: {', '.join(t.removesuffix('-v3') for t in s['tasks'])}")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
