"""Meta-World environments for multi-task RL: protocols, the multi-task vector environment, evaluation.

Typical use (what ``mtrl.train`` does)::

    protocol = make_protocol(**cfg.protocol)                       # or make_protocol("metaworld")
    env = make_multitask_env("mt10", protocol, seed=0, backend="auto")  # training env (EnvPool where it imports)
    eval_env = make_eval_env("mt10", protocol, seed=0)             # same goals, other random streams
    obs = env.reset()                                              # [10, 49] float32, one-hot last
    result = env.step(actions)                                     # store (obs, a, result.reward, result.next_obs,
    obs = result.obs                                               #        result.terminated); act on result.obs
    success = evaluate(lambda o: agent.act(o, deterministic=True), eval_env, protocol.eval_episodes_per_task)
"""

from envs.envpool_backend import EnvPoolVectorEnv, envpool_available
from envs.evaluation import EvaluationCancelled, evaluate, run_episodes
from envs.metaworld import (
    BENCHMARKS,
    MetaWorldTaskEnv,
    benchmark_tasks,
    make_single_task_env,
    make_task_env,
    task_goals,
)
from envs.multitask import (
    ASYNC_MIN_CPUS,
    BACKENDS,
    EVAL_SEED_OFFSET,
    EpisodeRecord,
    MultiTaskEnv,
    StepResult,
    make_eval_env,
    make_multitask_env,
    resolve_backend,
    resolve_vector_strategy,
)
from envs.normalization import NormalizeRewardWrapper, RewardNormalizer
from envs.protocols import PROTOCOLS, ProtocolConfig, make_protocol

__all__ = [
    "ASYNC_MIN_CPUS",
    "BACKENDS",
    "BENCHMARKS",
    "EVAL_SEED_OFFSET",
    "PROTOCOLS",
    "EnvPoolVectorEnv",
    "EpisodeRecord",
    "EvaluationCancelled",
    "MetaWorldTaskEnv",
    "MultiTaskEnv",
    "NormalizeRewardWrapper",
    "ProtocolConfig",
    "RewardNormalizer",
    "StepResult",
    "benchmark_tasks",
    "envpool_available",
    "evaluate",
    "make_eval_env",
    "make_multitask_env",
    "make_protocol",
    "make_single_task_env",
    "make_task_env",
    "resolve_backend",
    "resolve_vector_strategy",
    "run_episodes",
    "task_goals",
]
