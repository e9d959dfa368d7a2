"""EnvPool's C++ Meta-World as a gymnasium vector environment in ``SAME_STEP`` autoreset mode.

EnvPool 1.2 ports the 50 Meta-World v3 tasks to C++ (``MetaWorld/<CamelCase>-v3``); without the Python
around each MuJoCo step one sub-environment steps 3-5x faster, and ``send``/``recv`` step it on EnvPool's
own threads while the caller does other work (the gradient update). :class:`EnvPoolVectorEnv` hides those
pools behind the gymnasium vector API that :class:`envs.MultiTaskEnv` wraps, so every guarantee of
``MultiTaskEnv`` (row ``i`` = task ``i``, one-hot, float32, success at any step, truncation at the
protocol's horizon, true last observations, episode records, reward normalisation, ``state_dict``) has one
implementation for both backends.

Design, from EnvPool's behaviour (checked in ``tests/envs/test_envpool_backend.py``):

* **One pool per task.** A pool runs one task (its spec has one ``task_name``), so MT10 is ten pools of
  ``num_envs=1``, each with one thread. ``step_async`` sends to every pool, ``step_wait`` receives from
  every pool: the ten C++ steps run concurrently while Python does something else.
* **Autoreset.** EnvPool resets *on the step after* an episode ends (gymnasium's ``NEXT_STEP``: that step
  returns the reset observation, ``elapsed_step = 0``, and ignores its action). ``MultiTaskEnv`` promises
  ``SAME_STEP``: every vector step is a real transition. So ``step_wait`` resets each finished pool at once
  with an explicit ``reset(env_id)``, returns that reset observation, and hands the true last observation
  and ``success`` in ``info["final_obs"]`` / ``info["final_info"]`` as gymnasium's ``SAME_STEP`` does. The
  pool therefore never sees a step past its episode's end.
* **Time limit.** The pool's ``max_episode_steps`` is the protocol's horizon; EnvPool reports it as
  ``truncated`` (it never terminates a Meta-World episode), which is what bootstrapping needs.
* **Goals.** EnvPool draws a fresh goal from the task's goal space at every reset; its API has no way to
  set a goal (no ``set_task``). Meta-World's MT10 instead picks one of 50 goals sampled once per task, and
  the ``mtrl`` protocol keeps one goal. The training distribution of goals is the same (uniform on the
  task's goal space; the 50 goals are a sample of it) but not the same finite set. Evaluation therefore
  always runs on the official Meta-World environments (:func:`envs.make_eval_env`).
* **Generators.** EnvPool's generator state cannot be read. ``rng_state`` holds each pool's seed and its
  number of resets; restoring it rebuilds the pool with a seed derived from both, so two resumes of the
  same checkpoint step identically, but not like the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from envs.metaworld import OBS_DIM, benchmark_tasks, derive_seed

__all__ = ["EnvPoolVectorEnv", "envpool_available", "envpool_task_id"]

_INT32_MAX = 2**31 - 1   # EnvPool takes int32 seeds; ours are 32-bit unsigned


def envpool_available() -> bool:
    """True where EnvPool with its Meta-World tasks imports (Linux x86-64 wheels)."""
    try:
        import envpool  # noqa: F401
        from envpool.mujoco.metaworld import MetaWorldEnvSpec  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or a wheel that does not load here: use gymnasium
        return False
    return True


def envpool_task_id(task_name: str) -> str:
    """EnvPool's id of a Meta-World task: ``"pick-place-v3"`` -> ``"MetaWorld/PickPlace-v3"``."""
    name, version = task_name.rsplit("-", 1)
    return "MetaWorld/" + "".join(part[:1].upper() + part[1:] for part in name.split("-")) + f"-{version}"


class EnvPoolVectorEnv(gym.vector.VectorEnv):
    """One EnvPool pool per Meta-World task, stepped as a ``SAME_STEP`` gymnasium vector environment.

    Observations float32 ``[k, 39]``, actions ``[k, 4]`` in ``[-1, 1]``, ``info["success"]`` bool per row
    (with the ``_success`` mask gymnasium's vector envs add). See the module docstring for the design.

    Args:
        task_names: Meta-World v3 task names, one pool each, in row order.
        max_episode_steps: the episode horizon (truncation).
        seeds: one seed per task.
        partially_observable: hide the goal from the observation. Meta-World's multi-task benchmarks (MT1,
            MT10, MT50) show it (metaworld's ``_MT_OVERRIDE``: ``partially_observable=False``), so the
            training observations match the official evaluation environments'; only its meta-learning
            benchmarks hide it.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        max_episode_steps: int,
        seeds: Sequence[int],
        *,
        partially_observable: bool = False,
    ) -> None:
        import envpool

        self.task_names = [benchmark_tasks("mt1", name)[0] for name in task_names]
        if len(seeds) != len(self.task_names):
            raise ValueError(f"{len(seeds)} seeds for {len(self.task_names)} tasks.")
        self._envpool = envpool
        self._max_episode_steps = int(max_episode_steps)
        self._partially_observable = partially_observable
        self._seeds = [int(seed) for seed in seeds]
        self._resets = [0] * len(self.task_names)
        self.pools = [self._make_pool(i) for i in range(len(self.task_names))]
        self.num_envs = len(self.task_names)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._sent = False
        self._env_id = np.zeros(1, dtype=np.int32)

    def _make_pool(self, index: int) -> Any:
        return self._envpool.make(
            envpool_task_id(self.task_names[index]), env_type="gymnasium", num_envs=1, batch_size=1,
            num_threads=1, seed=self._seeds[index] % _INT32_MAX, max_episode_steps=self._max_episode_steps,
            partially_observable=self._partially_observable)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            raise ValueError("EnvPoolVectorEnv is seeded at construction (its pools cannot be re-seeded).")
        self._drain()
        obs = np.empty((self.num_envs, OBS_DIM), dtype=np.float32)
        for i, pool in enumerate(self.pools):
            obs[i] = pool.reset()[0][0]
            self._resets[i] += 1
        return obs, {}

    def step_async(self, actions: np.ndarray) -> None:
        """Starts one step of every pool; EnvPool's threads step while the caller works."""
        if self._sent:
            raise RuntimeError("step_async() called twice without step_wait().")
        actions = np.asarray(actions, dtype=np.float32)
        for i, pool in enumerate(self.pools):
            pool.send(actions[i:i + 1])
        self._sent = True

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Collects the step; finished pools are reset here (``SAME_STEP``), their last step in ``final_*``."""
        if not self._sent:
            raise RuntimeError("step_wait() without step_async().")
        self._sent = False
        k = self.num_envs
        obs = np.empty((k, OBS_DIM), dtype=np.float32)
        reward = np.empty(k, dtype=np.float64)
        terminated = np.empty(k, dtype=bool)
        truncated = np.empty(k, dtype=bool)
        success = np.empty(k, dtype=bool)
        for i, pool in enumerate(self.pools):
            pool_obs, pool_reward, pool_terminated, pool_truncated, pool_info = pool.recv()
            obs[i], reward[i] = pool_obs[0], pool_reward[0]
            terminated[i], truncated[i] = pool_terminated[0], pool_truncated[0]
            success[i] = pool_info["success"][0] > 0.5
        info: dict[str, Any] = {"success": success.copy(), "_success": np.ones(k, dtype=bool)}
        done = terminated | truncated
        if done.any():
            final_obs = np.full(k, None, dtype=object)
            final_success = np.zeros(k, dtype=bool)
            for i in np.flatnonzero(done):
                final_obs[i], final_success[i] = obs[i].copy(), success[i]
                obs[i] = self.pools[i].reset(self._env_id)[0][0]   # SAME_STEP: no step is spent on the reset
                self._resets[i] += 1
            success[done] = False  # the top-level info of a reset row belongs to the new episode
            info.update(final_obs=final_obs, _final_obs=done.copy(),
                        final_info={"success": final_success, "_success": done.copy()}, _final_info=done.copy())
            info["success"] = success
        return obs, reward, terminated, truncated, info

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        self.step_async(actions)
        return self.step_wait()

    def _drain(self) -> None:
        if self._sent:
            for pool in self.pools:
                pool.recv()
            self._sent = False

    # ``MultiTaskEnv.state_dict`` reads and writes ``rng_state`` through ``get_attr`` / ``set_attr``.
    def get_attr(self, name: str) -> tuple[Any, ...]:
        if name != "rng_state":
            raise AttributeError(f"EnvPoolVectorEnv has no per-environment attribute `{name}`.")
        return tuple({"envpool_seed": seed, "resets": resets} for seed, resets in zip(self._seeds, self._resets))

    def set_attr(self, name: str, values: Any) -> None:
        """``rng_state``: rebuild every pool with a seed derived from the saved seed and reset count."""
        if name != "rng_state":
            raise AttributeError(f"EnvPoolVectorEnv has no per-environment attribute `{name}`.")
        values = list(values)
        if len(values) != self.num_envs or not all(isinstance(v, dict) and "envpool_seed" in v for v in values):
            raise ValueError("This environment state is not an EnvPool backend's (was the run trained with "
                             "env.backend=gymnasium?).")
        self._drain()
        for i, state in enumerate(values):
            self.pools[i].close()
            self._seeds[i] = derive_seed(int(state["envpool_seed"]), "resume", int(state["resets"]))
            self._resets[i] = 0
            self.pools[i] = self._make_pool(i)

    def close_extras(self, **kwargs: Any) -> None:
        self._drain()
        for pool in self.pools:
            pool.close()
