"""The two-objective toy problem of CAGrad / Nash-MTL / FAMO / PIVRG (PIVRG paper App. B.1, Fig. 2).

``θ = (θ1, θ2) ∈ R²``; with ``c1 = max(tanh(θ2/2), 0)``, ``c2 = max(tanh(-θ2/2), 0)``::

    L1 = scale · (c1 · g1 + c2 · h1),      L2 = c1 · g2 + c2 · h2
    g1 = log(max(|0.5(-θ1 - 7) - tanh(-θ2)|, 5e-6)) + 6
    g2 = log(max(|0.5(-θ1 + 3) + tanh(-θ2) + 2|, 5e-6)) + 6
    h1 = ((-θ1 + 7)² + 0.1 (-θ2 - 8)²) / 10 - 20
    h2 = ((-θ1 - 7)² + 0.1 (-θ2 - 8)²) / 10 - 20

Protocol (Nash-MTL's ``experiments/toy``, which PIVRG says it follows): the five starting points
``(-8.5, 7.5), (0, 0), (9, 9), (-7.5, -0.5), (9, -1)``, Adam with lr 1e-3, 35 000 steps. The losses
are those PIVRG's App. B.1 states, ``scale = 1`` (:data:`SCALE`); ``scale = 0.1`` is Nash-MTL's
modification of CAGrad's toy (the first loss scaled by 0.1, so that the tasks' loss scales differ
by 10×), which the code of Nash-MTL and FAMO runs.

.. note:: Knowing differences.

   * ``g2``: the PIVRG paper prints ``- tanh(-θ2) + 2``; the code of CAGrad, Nash-MTL and FAMO (which
     produced every published figure of this problem) has ``+ tanh(-θ2) + 2``. We follow the code.
   * Pareto front: the authors' plots draw the segment ``θ2 = -8.3552, θ1 ∈ [-7, 7]``. For ``θ2 < 0``
     the losses are ``c2(θ2)·h_i``, and Pareto stationarity gives the exact Pareto set
     ``θ2 = t*(θ1) = argmin_t tanh(-t/2)·(0.01 (t+8)² - 20 + (49 - θ1²)/10)``, a slightly bent curve
     from -8.4345 at ``θ1 = ±7`` (the single-task optima) to -8.3552 at ``θ1 = 0`` (where the
     authors' line is exact). We draw and measure against the exact curve.
   * The five starts run side by side as one ``[5, 2]`` parameter under one Adam optimizer, which is
     elementwise and therefore identical to five separate optimizers; each start gets its own
     aggregator instance (stateful methods must not share state across starts).
   * PIVRG-style aggregators read Δm_i = 100·(L_i − L_i*)/|L_i*| (PIVRG Eq. 3, lower is better),
     with L_i* the single-task minimum of task ``i``; the paper does not say what reference it used.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregation import Aggregator, TaskStats
from mtrl.metrics import performance_drop
from mtrl.experiment.checkpoint import atomic_savefig, atomic_write_json

__all__ = [
    "STARTS", "LOWER", "SCALE", "toy_losses", "toy_losses_and_jacobian", "single_task_optima", "pareto_set", "pareto_front",
    "distance_to_pareto_set", "ToyRun", "run_toy", "plot_toy", "toy_table",
]

LOWER = 0.000005
#: The five starting points of Nash-MTL / FAMO / PIVRG.
STARTS: tuple[tuple[float, float], ...] = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
#: The factor on the first loss: 1 as PIVRG's App. B.1 states it (Nash-MTL's toy: 0.1).
SCALE = 1.0


def toy_losses(theta: Tensor, scale: float = SCALE) -> Tensor:
    """``[..., 2]`` losses ``(L1, L2)`` at ``theta`` of shape ``[..., 2]`` (same ops as the authors')."""
    x1, x2 = theta[..., 0], theta[..., 1]
    g1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    g2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), 0)
    h1 = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    h2 = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    l1 = (g1 * c1 + h1 * c2) * scale
    l2 = g2 * c1 + h2 * c2
    return torch.stack([l1, l2], dim=-1)


def _losses_and_jacobian_np(theta: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    x1, x2 = theta[..., 0], theta[..., 1]
    t2 = np.tanh(x2)
    dt2 = 1 - t2 * t2
    th = np.tanh(0.5 * x2)
    dth = 0.5 * (1 - th * th)
    u1 = -0.5 * x1 - 3.5 + t2              # 0.5(-x1 - 7) - tanh(-x2)
    u2 = -0.5 * x1 + 3.5 - t2              # 0.5(-x1 + 3) + tanh(-x2) + 2
    a1, a2 = np.abs(u1), np.abs(u2)
    m1, m2 = np.maximum(a1, LOWER), np.maximum(a2, LOWER)
    g1, g2 = np.log(m1) + 6, np.log(m2) + 6
    k1 = (a1 >= LOWER) * np.sign(u1) / m1    # d g1 / d u1
    k2 = (a2 >= LOWER) * np.sign(u2) / m2
    c1, c2 = np.maximum(th, 0), np.maximum(-th, 0)
    dc1 = (th >= 0) * dth
    dc2 = -((-th >= 0) * dth)
    q = 0.1 * (-x2 - 8) ** 2
    h1 = ((-x1 + 7) ** 2 + q) / 10 - 20
    h2 = ((-x1 - 7) ** 2 + q) / 10 - 20
    dq = 0.02 * (x2 + 8)
    losses = np.stack([(g1 * c1 + h1 * c2) * scale, g2 * c1 + h2 * c2], axis=-1)
    d11 = (c1 * k1 * -0.5 + c2 * (x1 - 7) / 5) * scale
    d12 = (dc1 * g1 + c1 * k1 * dt2 + dc2 * h1 + c2 * dq) * scale
    d21 = c1 * k2 * -0.5 + c2 * (x1 + 7) / 5
    d22 = dc1 * g2 - c1 * k2 * dt2 + dc2 * h2 + c2 * dq
    jacobian = np.stack([np.stack([d11, d12], axis=-1), np.stack([d21, d22], axis=-1)], axis=-2)
    return losses, jacobian


def toy_losses_and_jacobian(theta: Tensor, scale: float = SCALE) -> tuple[Tensor, Tensor]:
    """Losses ``[..., 2]`` and Jacobians ``[..., 2 (task), 2 (θ)]`` at ``theta`` ``[..., 2]``, in closed form.

    The derivatives follow autograd's conventions at the kinks of :func:`toy_losses` (``clamp``
    passes the gradient where ``x >= min``, ``|x|`` has derivative 0 at 0), so they equal what
    ``torch.autograd`` gives on :func:`toy_losses`. Computed in float64 NumPy: on 5 points, ops cost
    microseconds there against tens of microseconds for small torch ops, and the toy is all overhead.
    """
    losses, jacobian = _losses_and_jacobian_np(theta.detach().cpu().numpy().astype(np.float64), scale)
    return torch.from_numpy(losses), torch.from_numpy(jacobian)


def _front_theta2(theta1: np.ndarray) -> np.ndarray:
    """``t*(θ1)``: the Pareto set's θ2 for each θ1 in [-7, 7] (see the module note)."""
    from scipy.optimize import minimize_scalar

    out = np.empty_like(np.asarray(theta1, dtype=np.float64))
    for i, t1 in enumerate(np.asarray(theta1, dtype=np.float64).ravel()):
        offset = (49.0 - t1 * t1) / 10.0 - 20.0
        result = minimize_scalar(lambda t: math.tanh(-t / 2) * (0.01 * (t + 8) ** 2 + offset),
                                 bounds=(-12.0, -4.0), method="bounded", options={"xatol": 1e-10})
        out.flat[i] = result.x
    return out


def pareto_set(n: int = 201) -> np.ndarray:
    """``[n, 2]`` points θ of the exact Pareto set, θ1 from -7 to 7."""
    return _pareto_set(n).copy()


@functools.lru_cache(maxsize=8)
def _pareto_set(n: int) -> np.ndarray:
    # n scalar minimisations: cached, since every report and plot measures distances to the same set
    theta1 = np.linspace(-7.0, 7.0, n)
    return np.stack([theta1, _front_theta2(theta1)], axis=1)


def pareto_front(n: int = 201, scale: float = SCALE) -> np.ndarray:
    """``[n, 2]`` loss pairs (L1, L2) on the Pareto front."""
    return toy_losses(torch.from_numpy(pareto_set(n)), scale).numpy()


def single_task_optima(scale: float = SCALE) -> np.ndarray:
    """``[2]`` single-task minima ``(min L1, min L2)``, at θ = (7, t*) and (-7, t*)."""
    ends = np.array([[7.0, _front_theta2(np.array([7.0]))[0]], [-7.0, _front_theta2(np.array([-7.0]))[0]]])
    losses = toy_losses(torch.from_numpy(ends), scale).numpy()
    return np.array([losses[0, 0], losses[1, 1]])


def distance_to_pareto_set(theta: np.ndarray, n: int = 2001) -> np.ndarray:
    """Euclidean distance in parameter space from each θ (``[..., 2]``) to the Pareto set."""
    points = _pareto_set(n)
    theta = np.asarray(theta, dtype=np.float64)
    d = np.linalg.norm(theta[..., None, :] - points, axis=-1)
    return d.min(axis=-1)


@dataclass
class ToyRun:
    """One aggregator from all starts. Arrays are ``[T, S, ...]`` recorded every ``record_every`` steps
    (plus the final point); ``weights`` row ``t`` is the weighting used at recorded step ``t``."""

    name: str
    steps: int
    scale: float
    starts: np.ndarray
    theta: np.ndarray
    losses: np.ndarray
    weights: np.ndarray
    seconds: float
    fallbacks: list[int] = field(default_factory=list)

    def final(self, tolerance: float = 0.05) -> list[dict[str, Any]]:
        """Per start: final θ and losses, Δm vs the single-task optima, whether it reached the front."""
        optima = single_task_optima(self.scale)
        theta = self.theta[-1]
        losses = self.losses[-1]
        distance = distance_to_pareto_set(theta)
        rows = []
        for s in range(theta.shape[0]):
            dm = performance_drop(torch.from_numpy(losses[s]), torch.from_numpy(optima), higher_is_better=False).numpy()
            rows.append({
                "start": self.starts[s].tolist(), "theta": theta[s].tolist(), "L1": float(losses[s, 0]),
                "L2": float(losses[s, 1]), "distance_to_front": float(distance[s]),
                "on_front": bool(distance[s] <= tolerance), "delta_m": dm.tolist(),
                "delta_m_mean": float(dm.mean()), "delta_m_var": float(dm.var()),
                # balance: the paper's claim is that PIVRG ends where the tasks' drops are equal
                "delta_m_gap": float(abs(dm[0] - dm[1])),
                "final_weights": self.weights[-1, s].tolist(),
            })
        return rows

    def summary(self, tolerance: float = 0.05) -> dict[str, Any]:
        rows = self.final(tolerance)
        on_front = [r["on_front"] for r in rows]
        front_rows = [r for r in rows if r["on_front"]]
        return {
            "aggregator": self.name, "steps": self.steps, "seconds": self.seconds,
            "starts_on_front": int(sum(on_front)), "all_on_front": all(on_front),
            # balance of the end points: |θ1| = 0 is the equal-Δm middle of the front, 7 an end.
            "mean_abs_theta1_on_front": float(np.mean([abs(r["theta"][0]) for r in front_rows])) if front_rows else None,
            "mean_var_delta_m": float(np.mean([r["delta_m_var"] for r in rows])),
            "mean_delta_m_gap": float(np.mean([r["delta_m_gap"] for r in rows])),
            "fallbacks": self.fallbacks, "per_start": rows,
        }


def run_toy(
    make_aggregator: Callable[[], Aggregator],
    *,
    name: str | None = None,
    steps: int = 35_000,
    lr: float = 1e-3,
    scale: float = SCALE,
    starts: Sequence[Sequence[float]] = STARTS,
    record_every: int = 10,
    max_grad_norm: float | None = None,
    on_record: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> ToyRun:
    """Optimise the toy problem from every start with one fresh aggregator per start.

    Each step: losses and the ``[2, 2]`` Jacobian per start, ``w = agg(J, stats)`` (``J = None`` for
    methods that do not need it), update direction ``wᵀJ`` (what :func:`mtrl.aggregation.mtl_backward`
    writes into ``.grad`` for a model with no heads), Adam step, then ``agg.after_step`` with the
    re-evaluated losses for methods that define it (FAMO). ``max_grad_norm`` clips each start's
    direction as ``torch.nn.utils.clip_grad_norm_`` would (the authors' toy scripts clip Nash-MTL,
    CAGrad and FAMO at 1.0 inside those methods).
    """
    from mtrl.supervised.adapter import overrides_after_step

    starts_t = torch.tensor(starts, dtype=torch.float64)
    num = starts_t.shape[0]
    aggregators = [make_aggregator() for _ in range(num)]
    agg_name = name or aggregators[0].name
    needs_jacobian = aggregators[0].needs_jacobian
    uses_performance = getattr(aggregators[0], "uses_performance", False)
    after = overrides_after_step(aggregators[0])
    optima = torch.from_numpy(single_task_optima(scale))
    theta = starts_t.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    recorded = steps // record_every + 2
    thetas = np.empty((recorded, num, 2))
    lossess = np.empty((recorded, num, 2))
    weightss = np.full((recorded, num, 2), np.nan)
    count = 0
    t0 = time.perf_counter()
    direction = np.empty((num, 2))
    weights_now = np.full((num, 2), np.nan)
    for step in range(steps + 1):
        theta_np = theta.detach().numpy().copy()
        losses_np, jacobian_np = _losses_and_jacobian_np(theta_np, scale)  # [S, 2], [S, task, param]
        if step == steps:  # the end point: record, no update
            break
        losses, jacobian = torch.from_numpy(losses_np), torch.from_numpy(jacobian_np)
        for s in range(num):
            performance = None
            if uses_performance:
                performance = performance_drop(losses[s], optima, higher_is_better=False)
            stats = TaskStats(losses[s], performance=performance, step=step)
            w = aggregators[s](jacobian[s] if needs_jacobian else None, stats).detach().to(torch.float64).numpy()
            weights_now[s] = w
            # wᵀJ: what mtl_backward writes into .grad (for loss-weighting methods it gets the same
            # vector from one backward of Σ w_i L_i).
            direction[s] = w @ jacobian_np[s]
            if max_grad_norm is not None:  # clip_grad_norm_ on this start's parameters
                norm = float(np.linalg.norm(direction[s]))
                if norm > max_grad_norm:
                    direction[s] *= max_grad_norm / (norm + 1e-6)
        if step % record_every == 0:
            thetas[count], lossess[count], weightss[count] = theta_np, losses_np, weights_now
            if on_record is not None:
                on_record(step, thetas[count], lossess[count], weightss[count])
            count += 1
        theta.grad = torch.from_numpy(direction.copy())
        optimizer.step()
        if after:
            new_losses = torch.from_numpy(_losses_and_jacobian_np(theta.detach().numpy(), scale)[0])
            for s in range(num):
                aggregators[s].after_step(TaskStats(new_losses[s], step=step))
    thetas[count], lossess[count], weightss[count] = theta_np, losses_np, weights_now
    count += 1
    seconds = time.perf_counter() - t0
    return ToyRun(name=agg_name, steps=steps, scale=scale, starts=starts_t.numpy(), theta=thetas[:count].copy(),
                  losses=lossess[:count].copy(), weights=weightss[:count].copy(), seconds=seconds,
                  fallbacks=[int(a.fallbacks) for a in aggregators])


def plot_toy(runs: Sequence[ToyRun], path: str | Path, titles: Mapping[str, str] | None = None,
             max_columns: int = 6, tolerance: float = 0.05) -> Path:
    """PIVRG Fig. 2 layout: one column per aggregator; top: trajectories in loss space with the Pareto
    front, bottom: trajectories in parameter space over the contours of ``L1 + L2``; end points as
    stars (filled when within ``tolerance`` of the front), the title gives the starts on the front and
    the mean Var[Δm]. More than ``max_columns`` aggregators wrap onto further pairs of rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    scale = runs[0].scale
    front = pareto_front(301, scale)
    front_theta = pareto_set(301)
    grid = np.linspace(-10.0, 10.0, 241)
    mesh_x, mesh_y = np.meshgrid(grid, grid)
    mesh = torch.from_numpy(np.stack([mesh_x, mesh_y], axis=-1))
    total = toy_losses(mesh, scale).sum(-1).numpy()
    columns = min(len(runs), max_columns)
    bands = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(2 * bands, columns, figsize=(3.6 * columns, 7.0 * bands), squeeze=False)
    for index in range(len(runs), bands * columns):
        band, col = divmod(index, columns)
        axes[2 * band, col].set_visible(False)
        axes[2 * band + 1, col].set_visible(False)
    for index, run in enumerate(runs):
        band, col = divmod(index, columns)
        top, bottom = axes[2 * band, col], axes[2 * band + 1, col]
        top.plot(front[:, 0], front[:, 1], "-", color="#72727A", linewidth=6, label="Pareto front", zorder=1)
        bottom.contour(mesh_x, mesh_y, total, levels=20, cmap="viridis", linewidths=0.8, zorder=0)
        bottom.plot(front_theta[:, 0], front_theta[:, 1], "-", color="#72727A", linewidth=5, zorder=1)
        for s in range(run.theta.shape[1]):
            colors = matplotlib.colormaps["magma_r"](np.linspace(0.15, 0.65, run.theta.shape[0]))
            top.scatter(run.losses[:, s, 0], run.losses[:, s, 1], color=colors, s=2, zorder=2)
            bottom.scatter(run.theta[:, s, 0], run.theta[:, s, 1], color=colors, s=2, zorder=2)
            top.scatter(run.losses[0, s, 0], run.losses[0, s, 1], color="k", s=30, zorder=3,
                        label="start" if s == 0 else None)
            bottom.scatter(run.theta[0, s, 0], run.theta[0, s, 1], color="k", s=30, zorder=3)
            # end points: filled on the front, hollow off it
            on_front = bool(distance_to_pareto_set(run.theta[-1, s]) <= tolerance)
            marker = {"color": "#D62728"} if on_front else {"facecolors": "none", "edgecolors": "#D62728"}
            top.scatter(run.losses[-1, s, 0], run.losses[-1, s, 1], marker="*", s=90, zorder=4,
                        label=("end (filled: on front)" if s == 0 else None), **marker)
            bottom.scatter(run.theta[-1, s, 0], run.theta[-1, s, 1], marker="*", s=90, zorder=4, **marker)
        summary = run.summary(tolerance)
        title = (titles or {}).get(run.name, run.name)
        top.set_title(f"{title}\non front {summary['starts_on_front']}/{run.theta.shape[1]}, "
                      f"mean Var[Δm] {summary['mean_var_delta_m']:.0f}", fontsize=9)
        top.set_xlabel(r"$L_1$")
        top.set_ylabel(r"$L_2$")
        bottom.set_xlabel(r"$\theta_1$")
        bottom.set_ylabel(r"$\theta_2$")
        bottom.set_xlim(-10, 10)
        bottom.set_ylim(-10, 10)
        if index == 0:
            top.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110, facecolor="white")
    plt.close(fig)
    return path


def toy_table(runs: Sequence[ToyRun], tolerance: float = 0.05) -> str:
    """Final losses per aggregator and start, as a Markdown table."""
    lines = ["| aggregator | start | θ final | L1 | L2 | dist. to front | on front | Δm1 % | Δm2 % | abs(Δm1 − Δm2) | Var[Δm] |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    summaries = []
    for run in runs:
        summary = run.summary(tolerance)
        summaries.append(summary)
        for row in summary["per_start"]:
            lines.append(
                f"| {run.name} | ({row['start'][0]:g}, {row['start'][1]:g}) | ({row['theta'][0]:.3f}, {row['theta'][1]:.3f}) "
                f"| {row['L1']:.4f} | {row['L2']:.4f} | {row['distance_to_front']:.3g} | {'yes' if row['on_front'] else 'no'} "
                f"| {row['delta_m'][0]:.1f} | {row['delta_m'][1]:.1f} | {row['delta_m_gap']:.1f} | {row['delta_m_var']:.1f} |")
    lines += ["", "| aggregator | starts on front | mean abs(Δm1 − Δm2) | mean Var[Δm] over starts | fallbacks | seconds |",
              "| --- | --- | --- | --- | --- | --- |"]
    for summary in summaries:
        lines.append(f"| {summary['aggregator']} | {summary['starts_on_front']}/{len(summary['per_start'])} "
                     f"| {summary['mean_delta_m_gap']:.1f} | {summary['mean_var_delta_m']:.1f} "
                     f"| {sum(summary['fallbacks'])} | {summary['seconds']:.1f} |")
    return "\n".join(lines)


def save_toy_results(runs: Sequence[ToyRun], out_dir: str | Path, tolerance: float = 0.05) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "bench": "toy", "scale": runs[0].scale, "tolerance": tolerance,
        "pareto_front_ends": single_task_optima(runs[0].scale).tolist(),
        "aggregators": {run.name: run.summary(tolerance) for run in runs},
    }
    atomic_write_json(results, out_dir / "results.json")
    np.savez_compressed(out_dir / "trajectories.npz",
                        **{f"{run.name}_theta": run.theta for run in runs},
                        **{f"{run.name}_losses": run.losses for run in runs},
                        **{f"{run.name}_weights": run.weights for run in runs})
    return results
