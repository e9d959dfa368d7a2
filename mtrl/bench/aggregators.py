"""Per-call time of every registered aggregator, beside an independent implementation where one exists.

For each ``k`` (default 10 and 50) a float32 ``[k, n]`` Jacobian (rows: a shared random component, a
task-specific one and a per-task scale between 0.1 and 10, so that tasks conflict and magnitudes
differ) is aggregated by every method of :func:`mtrl.aggregation.available`, timed per call (median).
``n`` defaults to the SAC critic's shared parameters at MT10 (two 3×400 trunks on 49 + 4 inputs:
684,800); for other ``k``, ``n · 10/k`` (the same Jacobian size, so the memory stays that of MT10).

References, run on the same Jacobian (their time includes the float64 Gramian they need) and
compared by the largest weight difference relative to the reference's largest weight:

* torchjd's weightings for LS (``MeanWeighting``), PCGrad, MGDA, IMTL-G, CAGrad (``rescale=0``
  weights ÷ (1 + c²)) and RLW/RGW (``RandomWeighting``, same seed); torchjd's MGDA runs plain
  Frank-Wolfe, so its weights differ by its tolerance, not ours;
* cvxpy for Nash-MTL and PI-Nash-MTL: ``max Σ ω_i log⟨g_i, d⟩`` s.t. ``‖d‖ ≤ 1`` in the Gramian's
  coordinates, rescaled to ``w_i (K w)_i = ω_i``;
* scipy ``least_squares`` (bounds ``w ≥ 0``, from ``1/k``, as the FairGrad/PIVRG authors) for FairGrad
  and PIVRG: the residual ``K w − ω^(1/α) w^(−1/α)``.

The plain update (``plain_update_s``): one step of a *plain* (mean-loss) twin critic of the SAC agent —
forward, backward and Adam, batch ``128·k`` — measured here as the yardstick of issue 11's CPU target
(each Jacobian aggregator's call at ``k = 10`` ≤ 10% of a plain SAC update); the full SAC update (critic,
actor, temperatures, targets) is ``bench update``'s, and is about three times this, so
``ratio_to_plain_update`` here is the conservative one.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

import mtrl.aggregation as agg
from mtrl.aggregation import TaskStats
from mtrl.aggregation._performance import performance_weights
from mtrl.bench._common import names, positive_int, print_table, timed_median

HELP = "per-call time of every aggregator at k = 10 and 50, beside torchjd / cvxpy / scipy references"

#: Shared parameters of the MT10 SAC critic: two trunks of 3 × Linear(·, 400) on 39 + 10 + 4 inputs.
CRITIC_TRUNK_PARAMETERS = 2 * ((53 * 400 + 400) + 2 * (400 * 400 + 400))
OBS_DIM, ACTION_DIM = 39, 4
SEED = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ks", default="10,50", help="numbers of tasks, comma-separated (default 10,50)")
    parser.add_argument("--n", type=positive_int, default=CRITIC_TRUNK_PARAMETERS,
                        help=f"Jacobian columns at k = 10 (default {CRITIC_TRUNK_PARAMETERS}); n·10/k at other k")
    parser.add_argument("--methods", default="all", help="aggregators, comma-separated (default: all registered)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed calls per method (median; default 5)")


def _fail(message: str) -> None:
    print(f"mtrl.bench aggregators: error: {message}", file=sys.stderr)
    sys.exit(2)


def _positive_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        _fail(f"{option} should be positive integers, e.g. 10,50; got {text!r}.")
    return values


def _methods(text: str) -> list[str]:
    if text == "all":
        return agg.available()
    methods = names(text)
    unknown = sorted(set(methods) - set(agg.available()))
    if unknown:
        _fail(f"unknown method(s) {unknown}; valid: {', '.join(agg.available())}.")
    return methods


def make_jacobian(k: int, n: int, device: str) -> Tensor:
    """Float32 ``[k, n]``: a shared component, a task-specific one, per-task scales 0.1–10."""
    generator = torch.Generator().manual_seed(SEED)
    shared = torch.randn(1, n, generator=generator)
    own = torch.randn(k, n, generator=generator)
    sign = torch.where(torch.rand(k, 1, generator=generator) < 0.3, -1.0, 1.0)  # some tasks conflict
    scale = 10.0 ** (2 * torch.rand(k, 1, generator=generator) - 1)
    return ((0.5 * sign * shared + own) * scale).to(device)


def make_stats(k: int, device: str) -> TaskStats:
    generator = torch.Generator().manual_seed(SEED + 1)
    losses = (torch.rand(k, generator=generator) + 0.1).to(device)
    return TaskStats(losses, performance=(30 * torch.randn(k, generator=generator)).to(device))


def build(name: str) -> agg.Aggregator:
    return agg.make(name, seed=SEED) if "seed" in agg.options(name) else agg.make(name)


# ------------------------------------------------------------------------------------ references
def _gramian64(jacobian: Tensor) -> Tensor:
    rows = jacobian.double()
    return rows @ rows.T


def _omega(stats: TaskStats) -> np.ndarray:
    return performance_weights(stats.performance.cpu()).numpy()


def _torchjd(weighting_name: str, factor: float = 1.0, **options: Any) -> Callable[[Tensor, TaskStats], np.ndarray]:
    def reference(jacobian: Tensor, stats: TaskStats) -> np.ndarray:
        import torchjd.aggregation as jd

        torch.manual_seed(SEED)  # torchjd draws (PCGrad's orders, RandomWeighting) from the global generator
        weighting = getattr(jd, weighting_name)(**options)
        return (weighting(_gramian64(jacobian)) * factor).cpu().numpy()
    return reference


def _nash_cvxpy(with_omega: bool) -> Callable[[Tensor, TaskStats], np.ndarray]:
    def reference(jacobian: Tensor, stats: TaskStats) -> np.ndarray:
        import cvxpy as cp

        K = _gramian64(jacobian).cpu().numpy()
        k = K.shape[0]
        omega = _omega(stats) if with_omega else np.ones(k)
        eigenvalues, eigenvectors = np.linalg.eigh(K)
        R = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))  # R Rᵀ = K: row i stands for g_i
        scale = math.sqrt(float(np.max(np.diag(K))))
        x = cp.Variable(k)
        cp.Problem(cp.Maximize(omega @ cp.log(R @ x / scale)), [cp.norm(x) <= 1]).solve()
        # Stationarity Σ ω_i g_i/⟨g_i, d⟩ = λ d, λ = Σ ω: w ∝ ω/⟨g, d⟩, scaled to w_i (Kw)_i = ω_i.
        return omega / (R @ x.value) / math.sqrt(float(omega.sum()))
    return reference


def _alpha_fair_least_squares(alpha: float, with_omega: bool) -> Callable[[Tensor, TaskStats], np.ndarray]:
    def reference(jacobian: Tensor, stats: TaskStats) -> np.ndarray:
        from scipy.optimize import least_squares

        K = _gramian64(jacobian).cpu().numpy()
        k = K.shape[0]
        constants = (_omega(stats) if with_omega else np.ones(k)) ** (1.0 / alpha)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = least_squares(lambda w: K @ w - constants * w ** (-1.0 / alpha), np.full(k, 1.0 / k),
                                   bounds=(1e-300, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15)
        return result.x
    return reference


def _ours_fresh(name: str, **options: Any) -> Callable[[Tensor, TaskStats], np.ndarray]:
    """The weights of a fresh instance (the first call, as the seeded references draw)."""
    def ours(jacobian: Tensor, stats: TaskStats) -> np.ndarray:
        method = agg.make(name, **options)
        return method(jacobian if method.needs_jacobian else None, stats).double().cpu().numpy()
    return ours


#: method -> (reference name, reference, what of ours it compares with)
Weights = Callable[[Tensor, TaskStats], np.ndarray]
REFERENCES: dict[str, tuple[str, Weights, Weights]] = {
    "ls": ("torchjd MeanWeighting", _torchjd("MeanWeighting"), _ours_fresh("ls")),
    "pcgrad": ("torchjd PCGradWeighting", _torchjd("PCGradWeighting"),
               _ours_fresh("pcgrad", reduction="sum", seed=SEED)),
    "mgda": ("torchjd MGDAWeighting", _torchjd("MGDAWeighting", epsilon=1e-12, max_iters=2000), _ours_fresh("mgda")),
    "imtlg": ("torchjd IMTLGWeighting", _torchjd("IMTLGWeighting"), _ours_fresh("imtlg")),
    "cagrad": ("torchjd CAGradWeighting", _torchjd("CAGradWeighting", factor=1 / 1.16, c=0.4), _ours_fresh("cagrad")),
    "rlw": ("torchjd RandomWeighting", _torchjd("RandomWeighting"), _ours_fresh("rlw", seed=SEED)),
    "rgw": ("torchjd RandomWeighting", _torchjd("RandomWeighting"), _ours_fresh("rgw", seed=SEED)),
    "nashmtl": ("cvxpy log-utility", _nash_cvxpy(with_omega=False), _ours_fresh("nashmtl")),
    "pi_nashmtl": ("cvxpy ω-log-utility", _nash_cvxpy(with_omega=True), _ours_fresh("pi_nashmtl")),
    "fairgrad": ("scipy least_squares", _alpha_fair_least_squares(1.0, with_omega=False), _ours_fresh("fairgrad")),
    "pivrg": ("scipy least_squares", _alpha_fair_least_squares(2.0, with_omega=True), _ours_fresh("pivrg")),
}


# ---------------------------------------------------------------------------------- plain update
def plain_update_seconds(k: int, device: str, repeats: int, quick: bool) -> float:
    """One plain (mean-loss) twin-critic step of the SAC agent: forward, backward, Adam; batch 128·k."""
    from agents.networks import TwinCritic

    generator = torch.Generator().manual_seed(SEED)
    per_task = 8 if quick else 128
    critic = TwinCritic(k, OBS_DIM + k, ACTION_DIM, hidden_dim=32 if quick else 400).to(device)
    optimizer = torch.optim.Adam(critic.parameters(), lr=3e-4)
    obs = torch.randn(k, per_task, OBS_DIM + k, generator=generator).to(device)
    action = torch.rand(k, per_task, ACTION_DIM, generator=generator).to(device) * 2 - 1
    target = torch.randn(k, per_task, generator=generator).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        q1, q2 = critic(obs, action)
        ((q1 - target).pow(2).mean() + (q2 - target).pow(2).mean()).backward()
        optimizer.step()

    return timed_median(step, repeats, warmup=2, device=device)


# ------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
    ks = _positive_ints(args.ks, "--ks") if not args.quick or args.ks != "10,50" else [3, 10]
    methods = _methods(args.methods)
    n10 = 2000 if args.quick and args.n == CRITIC_TRUNK_PARAMETERS else args.n
    if n10 < 1 or args.repeats < 1:
        _fail("--n and --repeats should be positive integers.")
    repeats = 1 if args.quick else args.repeats
    device = args.device
    rows: list[dict[str, Any]] = []
    plain: dict[str, float] = {}
    for k in ks:
        n = max(1, round(n10 * 10 / k))
        jacobian, stats = make_jacobian(k, n, device), make_stats(k, device)
        plain_seconds = plain_update_seconds(k, device, repeats, args.quick)
        plain[str(k)] = plain_seconds
        for name in methods:
            method = build(name)
            call = lambda: method(jacobian if method.needs_jacobian else None, stats)  # noqa: E731
            seconds = timed_median(call, repeats, warmup=1, device=device)
            row: dict[str, Any] = {"method": name, "k": k, "n": n, "call_ms": 1e3 * seconds,
                                   "plain_update_ms": 1e3 * plain_seconds,
                                   "ratio_to_plain_update": seconds / plain_seconds,
                                   "fallbacks": method.fallbacks}
            if name in REFERENCES:
                label, reference, ours = REFERENCES[name]
                reference_seconds = timed_median(lambda: reference(jacobian, stats), repeats, warmup=1, device=device)
                expected, got = reference(jacobian, stats), ours(jacobian, stats)
                row.update({"reference": label, "reference_ms": 1e3 * reference_seconds,
                            "ratio_to_reference": seconds / reference_seconds,
                            "max_weight_diff": float(np.abs(got - expected).max() / np.abs(expected).max())})
            rows.append(row)
    columns = ["method", "k", "n", "call_ms", "ratio_to_plain_update", "reference", "reference_ms",
               "ratio_to_reference", "max_weight_diff", "fallbacks"]
    print_table(rows, columns, title=f"aggregator call times on {device} (plain twin-critic update: "
                + ", ".join(f"k={k}: {1e3 * s:.3g} ms" for k, s in plain.items()) + ")")
    return {"settings": {"ks": ks, "n_at_k10": n10, "repeats": repeats, "device": device},
            "plain_update_s": plain, "rows": rows}
