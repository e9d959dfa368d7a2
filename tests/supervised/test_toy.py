"""The two-objective toy problem (PIVRG App. B.1): values, gradients, Pareto set, and the vectorised runner."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import mtrl.aggregation as agg
from mtrl.aggregation import mtl_backward
from mtrl.supervised.toy import (
    SCALE, STARTS, distance_to_pareto_set, pareto_set, run_toy, single_task_optima, toy_losses, toy_losses_and_jacobian,
)

POINTS = [(-8.5, 7.5), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0), (1.0, 2.0), (-3.0, -5.0), (0.5, -8.4)]


def hand_losses(t1: float, t2: float, scale: float = 1.0) -> tuple[float, float]:
    """The paper's formulas (with the authors' code's `+ tanh(-θ2)` in g2), scalar math only; ``scale`` on L1."""
    f1 = max(math.tanh(0.5 * t2), 0.0)
    f2 = max(math.tanh(-0.5 * t2), 0.0)
    g1 = math.log(max(abs(0.5 * (-t1 - 7) - math.tanh(-t2)), 0.000005)) + 6
    g2 = math.log(max(abs(0.5 * (-t1 + 3) + math.tanh(-t2) + 2), 0.000005)) + 6
    h1 = ((-t1 + 7) ** 2 + 0.1 * (-t2 - 8) ** 2) / 10 - 20
    h2 = ((-t1 - 7) ** 2 + 0.1 * (-t2 - 8) ** 2) / 10 - 20
    return scale * (f1 * g1 + f2 * h1), f1 * g2 + f2 * h2


def finite_difference_jacobian(t1: float, t2: float, scale: float = 1.0, h: float = 1e-6) -> np.ndarray:
    jac = np.empty((2, 2))
    for j, (d1, d2) in enumerate(((h, 0.0), (0.0, h))):
        plus = hand_losses(t1 + d1, t2 + d2, scale)
        minus = hand_losses(t1 - d1, t2 - d2, scale)
        jac[:, j] = [(plus[i] - minus[i]) / (2 * h) for i in range(2)]
    return jac


@pytest.mark.parametrize("point", POINTS)
def test_losses_match_the_formulas(point) -> None:
    """The default is PIVRG App. B.1 as stated (no factor on L1); ``scale=0.1`` is Nash-MTL's variant."""
    assert SCALE == 1.0
    theta = torch.tensor(point, dtype=torch.float64)
    for scale in (1.0, 0.1):
        expected = torch.tensor(hand_losses(*point, scale), dtype=torch.float64)
        torch.testing.assert_close(toy_losses(theta, scale), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(toy_losses_and_jacobian(theta[None], scale)[0][0], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(toy_losses(theta), torch.tensor(hand_losses(*point), dtype=torch.float64))


def test_hand_values_at_two_points() -> None:
    # (9, -1): θ2 < 0 so only the quadratic parts count, c2 = tanh(0.5).
    c2 = math.tanh(0.5)
    expected = (c2 * ((4 + 0.1 * 49) / 10 - 20), c2 * ((256 + 0.1 * 49) / 10 - 20))
    torch.testing.assert_close(toy_losses(torch.tensor([9.0, -1.0], dtype=torch.float64)),
                               torch.tensor(expected, dtype=torch.float64))
    # (0, 0): tanh(0) = 0, both gates closed: L = (0, 0).
    torch.testing.assert_close(toy_losses(torch.zeros(2, dtype=torch.float64)), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("point", POINTS)
def test_gradients_match_finite_differences(point) -> None:
    theta = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    losses = toy_losses(theta)
    autograd = torch.stack([torch.autograd.grad(losses[i], theta, retain_graph=True)[0] for i in range(2)])
    expected = torch.from_numpy(finite_difference_jacobian(*point))
    torch.testing.assert_close(autograd, expected, rtol=1e-6, atol=1e-7)
    closed = toy_losses_and_jacobian(theta.detach()[None])[1][0]
    torch.testing.assert_close(closed, expected, rtol=1e-6, atol=1e-7)
    closed = toy_losses_and_jacobian(theta.detach()[None], 0.1)[1][0]
    torch.testing.assert_close(closed, torch.from_numpy(finite_difference_jacobian(*point, 0.1)), rtol=1e-6, atol=1e-7)


def test_closed_form_jacobian_equals_autograd_everywhere_including_the_kinks() -> None:
    g = torch.Generator().manual_seed(0)
    theta = torch.cat([torch.tensor(STARTS, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                       torch.randn(500, 2, generator=g, dtype=torch.float64) * 8]).requires_grad_(True)
    losses = toy_losses(theta)
    rows = [torch.autograd.grad(losses[:, i].sum(), theta, retain_graph=True)[0] for i in range(2)]
    closed_losses, closed = toy_losses_and_jacobian(theta.detach())
    torch.testing.assert_close(closed_losses, losses.detach())
    torch.testing.assert_close(closed, torch.stack(rows, dim=1))


def test_pareto_set_and_single_task_optima() -> None:
    # The authors' plots draw θ2 = -8.3552; that is the exact Pareto set at θ1 = 0.
    middle = pareto_set(3)[1]
    assert middle[0] == 0.0 and abs(middle[1] - (-8.3552)) < 1e-4
    # Single-task optima against a brute-force grid.
    optima = single_task_optima()
    grid = np.stack(np.meshgrid(np.linspace(-10, 10, 801), np.linspace(-10, 10, 801)), -1).reshape(-1, 2)
    values = toy_losses(torch.from_numpy(grid)).numpy()
    assert optima[0] <= values[:, 0].min() + 1e-6 and optima[1] <= values[:, 1].min() + 1e-6
    assert optima[0] == pytest.approx(values[:, 0].min(), abs=1e-3)
    # On the Pareto set the two gradients point in opposite directions (Pareto stationarity).
    points = torch.from_numpy(pareto_set(9)[1:-1])
    _, jac = toy_losses_and_jacobian(points)
    cos = torch.nn.functional.cosine_similarity(jac[:, 0], jac[:, 1], dim=-1)
    assert torch.all(cos < -1 + 1e-6)
    assert distance_to_pareto_set(np.array([[0.0, -8.3552], [0.0, 0.0]]))[0] < 1e-3


def _sequential(name: str, options: dict, steps: int, start) -> np.ndarray:
    """Reference: one start, one aggregator, torch Adam on a leaf θ, .grad written by mtl_backward."""
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=1e-3)
    aggregator = agg.make(name, **options)
    for _ in range(steps):
        optimizer.zero_grad()
        mtl_backward(toy_losses(theta), [theta], aggregator)
        optimizer.step()
    return theta.detach().numpy()


@pytest.mark.parametrize("name,options", [("ls", {}), ("rlw", {"seed": 7}), ("mgda", {}), ("nashmtl", {})])
def test_vectorised_runner_equals_one_optimizer_per_start(name, options) -> None:
    steps = 60
    run = run_toy(lambda: agg.make(name, **options), steps=steps, record_every=20)
    assert run.theta.shape == (steps // 20 + 1, 5, 2)
    for s, start in enumerate(STARTS):
        # At (0, 0) both gates are closed and ∂L/∂θ1 is 0 up to round-off, which Adam's normalisation
        # turns into steps of ±lr: the closed-form and autograd round-offs may differ there (θ1 stays
        # within a few lr of 0 either way).
        atol = 3e-4 if start == (0.0, 0.0) else 1e-10
        np.testing.assert_allclose(run.theta[-1, s], _sequential(name, options, steps, start), rtol=1e-9, atol=atol)


def test_famo_after_step_and_clipping_run() -> None:
    run = run_toy(lambda: agg.make("famo", weight_decay=0.0, min_losses=[-21.0, -21.0]), steps=30, record_every=10,
                  max_grad_norm=1.0)
    assert np.isfinite(run.theta).all() and np.isfinite(run.weights[-1]).all()
    summary = run.summary()
    assert summary["starts_on_front"] == 0 and len(summary["per_start"]) == 5


def test_report_gives_end_points_balance_and_variance_per_method(tmp_path) -> None:
    """Issue 9 item 4: per start the end point, on-front, Δm per task vs the single-task optima,
    |Δm1 − Δm2|, and per method the mean Var[Δm] — in results.json, final_losses.md's table and the PNG."""
    from mtrl.supervised.toy import plot_toy, save_toy_results, toy_table

    front = pareto_set(5)[1:4]  # three starts on the front, two off it
    starts = [tuple(p) for p in front] + [(9.0, 9.0), (-7.5, -0.5)]
    runs = [run_toy(lambda: agg.make(name), steps=5, starts=starts, record_every=5) for name in ("ls", "pivrg")]
    results = save_toy_results(runs, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["scale"] == 1.0
    optima = single_task_optima()
    for run in runs:
        summary = results["aggregators"][run.name]
        assert summary["starts_on_front"] == 3 and not summary["all_on_front"]
        for row, end in zip(summary["per_start"], run.losses[-1]):
            expected = 100 * (end - optima) / np.abs(optima)  # PIVRG Eq. 3, lower is better
            np.testing.assert_allclose(row["delta_m"], expected, rtol=1e-12)
            assert row["delta_m_gap"] == pytest.approx(abs(expected[0] - expected[1]), rel=1e-12)
            assert row["delta_m_var"] == pytest.approx(float(np.var(expected)), rel=1e-12)
        assert summary["mean_var_delta_m"] == pytest.approx(np.mean([r["delta_m_var"] for r in summary["per_start"]]))
        assert summary["mean_delta_m_gap"] == pytest.approx(np.mean([r["delta_m_gap"] for r in summary["per_start"]]))
    table = toy_table(runs)
    assert table.count("| pivrg |") == 6 and "| pivrg | 3/5 |" in table  # 5 end points + the summary row
    assert plot_toy(runs, tmp_path / "toy.png").stat().st_size > 10_000
