"""Can the SAC itself be trusted? Our multi-task SAC with one task beside stable-baselines3's SAC.

    python -m mtrl.benchmarks.mt1_sac_vs_sb3 --task reach-v3 --steps 20000 --seed 0

Both agents train for ``--steps`` environment steps on the same Meta-World task (MT1, the same goals
and environment seeds, ``protocol=metaworld`` by default), with the same hyperparameters: 3 × 400
ReLU layers for the actor and each of the twin critics, Adam 3e-4, γ 0.99, τ 0.005, initial
temperature 1 and target entropy −|A|, batch 128, replay 1M, ``--warmup-steps`` uniform random
actions before the first update, then one update per environment step. Ours runs with ``k = 1`` and
``agg=ls`` (which for one task is plain SAC). Both are evaluated with their deterministic policy on
the evaluation environment every ``--eval-every`` steps and at the end (and once more with the
stochastic policy at the end). Prints and writes a JSON with the success rates, the training
episodes' success and the wall time (training plus evaluations) of each.

What still differs (by design, see ``agents/``): our log σ is squashed into [−20, 2] with tanh
(mtrl codebase; SB3 clamps), our layers start Xavier-uniform (mtrl; SB3 uses PyTorch's default), our
temperature loss is ``α (−log π − H̄)`` (mtrl; SB3 uses ``log α``), and our observation carries the
1-dim task one-hot.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents import MultiTaskSAC, ReplayBuffer, SACConfig
from envs import evaluate, make_eval_env, make_multitask_env, make_protocol, make_single_task_env
from mtrl.aggregation import make

HIDDEN_DIM, LAYERS, LR, GAMMA, TAU, REPLAY = 400, 3, 3e-4, 0.99, 0.005, 1_000_000


def _eval_points(steps: int, eval_every: int) -> list[int]:
    return sorted({*range(eval_every, steps, eval_every), steps})


def train_ours(task: str, protocol_name: str, steps: int, seed: int, warmup_steps: int, batch_size: int,
               eval_every: int, eval_episodes: int, log: bool = True,
               log_std_bounds: tuple[float, float] = SACConfig.log_std_bounds) -> dict[str, Any]:
    protocol = make_protocol(protocol_name)
    env = make_multitask_env("mt1", protocol, seed, task=task, vector_strategy="sync")
    eval_env = make_eval_env("mt1", protocol, seed, task=task, vector_strategy="sync")
    torch.manual_seed(seed)
    config = SACConfig(hidden_dim=HIDDEN_DIM, trunk_layers=LAYERS, head_layers=1, gamma=GAMMA, tau=TAU, lr=LR,
                       init_temperature=1.0, batch_size=batch_size, log_std_bounds=log_std_bounds)
    agent = MultiTaskSAC(env.obs_dim, env.action_dim, 1, config, make("ls"), make("ls"), device="cpu", seed=seed)
    buffer = ReplayBuffer(1, env.obs_dim, env.action_dim, REPLAY, device="cpu", seed=seed)
    rng = np.random.default_rng(seed)
    policy = lambda o: agent.act(o, deterministic=True)  # noqa: E731

    curve, train_success = [], []
    points = _eval_points(steps, eval_every)
    start = time.perf_counter()
    obs = env.reset()
    for step in range(1, steps + 1):
        if step <= warmup_steps:
            action = rng.uniform(env.action_low, env.action_high, size=(1, env.action_dim)).astype(np.float32)
        else:
            action = agent.act(obs)
        result = env.step(action)
        buffer.add(obs, action, result.reward, result.next_obs, result.terminated)
        obs = result.obs
        train_success += [float(record.success) for record in result.finished]
        if step > warmup_steps:
            agent.update(buffer.sample(agent.batch_per_task))
        if step in points:
            success = evaluate(policy, eval_env, eval_episodes)[task]
            curve.append([step, success])
            if log:
                print(f"[ours] step {step}: eval success {success:.2f}, "
                      f"last 10 training episodes {np.mean(train_success[-10:] or [0]):.2f}, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
    wall = time.perf_counter() - start
    stochastic = evaluate(lambda o: agent.act(o), eval_env, eval_episodes)[task]
    env.close()
    eval_env.close()
    return {"final_success": curve[-1][1], "final_success_stochastic_policy": stochastic, "curve": curve,
            "train_episode_success": train_success, "wall_time_s": wall, "alpha": float(agent.alpha[0])}


class _EpisodeSuccess(gym.Wrapper):
    """Records each finished episode's success (``info["success"]`` at any step) for the SB3 run."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.episodes: list[float] = []
        self._success = False

    def reset(self, **kwargs):
        self._success = False
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._success |= bool(info.get("success", False))
        if terminated or truncated:
            self.episodes.append(float(self._success))
        return obs, reward, terminated, truncated, info


def train_sb3(task: str, protocol_name: str, steps: int, seed: int, warmup_steps: int, batch_size: int,
              eval_every: int, eval_episodes: int, log: bool = True) -> dict[str, Any]:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    protocol = make_protocol(protocol_name)
    env = _EpisodeSuccess(make_single_task_env(task, protocol, seed))  # same goals and seeds as MT1's row
    eval_env = make_eval_env("mt1", protocol, seed, task=task, vector_strategy="sync", one_hot=False)
    model = SAC(
        "MlpPolicy", env, learning_rate=LR, buffer_size=REPLAY, learning_starts=warmup_steps, batch_size=batch_size,
        tau=TAU, gamma=GAMMA, train_freq=1, gradient_steps=1, ent_coef="auto_1.0", target_entropy="auto",
        policy_kwargs=dict(net_arch=[HIDDEN_DIM] * LAYERS), seed=seed, device="cpu", verbose=0,
    )
    policy = lambda o: model.predict(o, deterministic=True)[0]  # noqa: E731
    points = _eval_points(steps, eval_every)
    curve: list[list[float]] = []
    start = time.perf_counter()

    class Evaluation(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps in points:
                success = evaluate(policy, eval_env, eval_episodes)[task]
                curve.append([self.num_timesteps, success])
                if log:
                    print(f"[sb3]  step {self.num_timesteps}: eval success {success:.2f}, "
                          f"last 10 training episodes {np.mean(env.episodes[-10:] or [0]):.2f}, "
                          f"{time.perf_counter() - start:.0f} s", flush=True)
            return True

    model.learn(total_timesteps=steps, callback=Evaluation())
    wall = time.perf_counter() - start
    stochastic = evaluate(lambda o: model.predict(o, deterministic=False)[0], eval_env, eval_episodes)[task]
    env.close()
    eval_env.close()
    return {"final_success": curve[-1][1], "final_success_stochastic_policy": stochastic, "curve": curve,
            "train_episode_success": env.episodes, "wall_time_s": wall,
            "alpha": float(model.log_ent_coef.exp().item())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="reach-v3")
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps per agent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", default="metaworld", choices=["metaworld", "mtrl"])
    parser.add_argument("--warmup-steps", type=int, default=1500, help="random actions first (mtrl init_steps)")
    parser.add_argument("--batch-size", type=int, default=128, help="the paper's 128 per task")
    parser.add_argument("--eval-every", type=int, default=None, help="default: steps / 4")
    parser.add_argument("--eval-episodes", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--agents", nargs="+", default=["ours", "sb3"], choices=["ours", "sb3"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for each agent")
    parser.add_argument("--log-std-bounds", type=float, nargs=2, default=list(SACConfig.log_std_bounds),
                        help="our actor's log σ range (default: mtrl's -20 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default runs/benchmarks/mt1_sac_vs_sb3_<task>_seed<seed>.json)")
    args = parser.parse_args(argv)
    for name in ("steps", "warmup_steps", "batch_size", "threads"):
        if getattr(args, name) < (0 if name == "warmup_steps" else 1):
            parser.error(f"--{name.replace('_', '-')} should be positive, got {getattr(args, name)}")
    eval_every = args.eval_every or max(1, args.steps // 4)
    eval_episodes = args.eval_episodes or make_protocol(args.protocol).eval_episodes_per_task
    torch.set_num_threads(args.threads)

    runners = {"ours": train_ours, "sb3": train_sb3}
    report: dict[str, Any] = {
        "task": args.task, "steps": args.steps, "seed": args.seed, "protocol": args.protocol,
        "warmup_steps": args.warmup_steps, "batch_size": args.batch_size, "eval_episodes": eval_episodes,
        "threads": args.threads,
        "hyperparameters": {"hidden": [HIDDEN_DIM] * LAYERS, "lr": LR, "gamma": GAMMA, "tau": TAU,
                            "init_temperature": 1.0, "target_entropy": "-|A|", "replay": REPLAY},
    }
    report["hyperparameters"]["ours_log_std_bounds"] = list(args.log_std_bounds)
    for name in args.agents:
        extra = {"log_std_bounds": tuple(args.log_std_bounds)} if name == "ours" else {}
        report[name] = runners[name](args.task, args.protocol, args.steps, args.seed, args.warmup_steps,
                                     args.batch_size, eval_every, eval_episodes, **extra)
    summary = {name: {"final_success": report[name]["final_success"],
                      "final_success_stochastic_policy": report[name]["final_success_stochastic_policy"],
                      "wall_time_s": round(report[name]["wall_time_s"], 1)} for name in args.agents}
    print(json.dumps({"task": args.task, "steps": args.steps, "seed": args.seed, **summary}))
    out = args.out or Path("runs/benchmarks") / f"mt1_sac_vs_sb3_{args.task}_seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
