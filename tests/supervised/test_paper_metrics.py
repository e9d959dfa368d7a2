"""The paper benchmarks' metrics against independent computations, and Δm / Var[Δm] against PIVRG's tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score

from mtrl.supervised.benchmarks import get
from mtrl.supervised.benchmarks.delta import delta_m, delta_m_variance, metric_deltas, task_scores
from mtrl.supervised.benchmarks.dense import DenseMetrics

NYU = get("nyuv2")
STL_TABLE_1 = dict(zip([c.name for c in NYU.columns], [38.30, 63.76, 0.6754, 0.2780, 25.01, 19.21, 30.14, 57.20, 69.15]))


@pytest.mark.parametrize("row, expected_dm, expected_var", [
    # PIVRG Table 5: LS and PI-LS on NYUv2 (Δm %, Var[Δm_i]).
    ([39.29, 65.33, 0.5493, 0.2263, 28.15, 23.96, 22.09, 47.50, 61.08], 5.59, 259.1),
    ([40.59, 66.24, 0.5330, 0.2191, 26.66, 21.80, 25.19, 51.94, 65.05], -0.06, 173.2),
])
def test_delta_m_and_its_variance_reproduce_pivrg_table_5(row, expected_dm, expected_var) -> None:
    deltas = metric_deltas(dict(zip(STL_TABLE_1, row)), STL_TABLE_1, NYU.columns)
    assert delta_m(deltas) == pytest.approx(expected_dm, abs=0.006)
    assert delta_m_variance(deltas) == pytest.approx(expected_var, abs=0.06)


def test_delta_signs_follow_each_columns_direction_and_task_scores_average_a_tasks_columns() -> None:
    better = {name: value * (1.1 if column.higher_is_better else 0.9)
              for (name, value), column in zip(STL_TABLE_1.items(), NYU.columns)}
    deltas = metric_deltas(better, STL_TABLE_1, NYU.columns)
    assert all(d == pytest.approx(-10.0) for d in deltas.values())       # 10 % better everywhere: Δm_i = −10
    deltas["mIoU"], deltas["within_30"] = 4.0, 1.0
    seg, depth, normal = task_scores(deltas, NYU.columns, NYU.tasks)
    assert (seg, depth, normal) == pytest.approx(((4 - 10) / 2, -10.0, (-10 * 4 + 1) / 5))
    with pytest.raises(ValueError, match="abs_err"):
        metric_deltas(better, {**STL_TABLE_1, "abs_err": 0.0}, NYU.columns)


def _planted_batches(seed: int, num_classes: int = 13, batches: int = 3, size=(2, 8, 12)):
    """Predictions that are right on ~60 % of the pixels, with every class present; depth and normals with
    invalid (0) pixels."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        label = torch.randint(-1, num_classes, size, generator=g)
        wrong = torch.randint(0, num_classes, size, generator=g)
        pred = torch.where(torch.rand(size, generator=g) < 0.6, label.clamp(min=0), wrong)
        logits = torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float()
        depth = torch.rand(size[0], 1, *size[1:], generator=g) + 0.5
        depth[torch.rand(depth.shape, generator=g) < 0.2] = 0
        depth_pred = depth + 0.3 * torch.randn(depth.shape, generator=g)
        normal = torch.nn.functional.normalize(torch.randn(size[0], 3, *size[1:], generator=g), dim=1)
        normal = normal * (torch.rand(size[0], 1, *size[1:], generator=g) > 0.2)
        normal_pred = torch.nn.functional.normalize(normal + 0.5 * torch.randn(normal.shape, generator=g), dim=1)
        yield [logits.log_softmax(1), depth_pred, normal_pred], {"label": label, "depth": depth, "normal": normal}


def _reference_segmentation(batches, num_classes: int):
    true = np.concatenate([b["label"].flatten().numpy() for _, b in batches])
    pred = np.concatenate([o[0].argmax(1).flatten().numpy() for o, _ in batches])
    valid = true >= 0
    matrix = confusion_matrix(true[valid], pred[valid], labels=list(range(num_classes)))
    iou = jaccard_score(true[valid], pred[valid], labels=list(range(num_classes)), average=None)
    return matrix, 100 * iou.mean(), 100 * np.trace(matrix) / matrix.sum()


def _reference_dense(outputs, batch):
    """Depth and normal statistics of one batch in NumPy, from the definitions (Nash-MTL utils)."""
    depth, depth_pred = batch["depth"].numpy(), outputs[1].numpy()
    valid = depth != 0
    err = np.abs(depth_pred - depth)[valid]
    normal, normal_pred = batch["normal"].numpy(), outputs[2].numpy()
    mask = normal.sum(1) != 0
    angles = np.degrees(np.arccos(np.clip((normal * normal_pred).sum(1)[mask], -1, 1)))
    return ({"abs_err": err.mean(), "rel_err": (err / depth[valid]).mean()}, angles)


@pytest.mark.parametrize("reduction", ["batch", "pixel"])
def test_dense_metrics_match_sklearn_and_numpy_on_planted_predictions(reduction: str) -> None:
    batches = list(_planted_batches(seed=1))
    metrics = DenseMetrics(13, normals=True, reduction=reduction)
    for outputs, batch in batches:
        metrics.update(outputs, batch)
    got = metrics.compute()
    matrix, miou, pixacc = _reference_segmentation(batches, 13)
    assert torch.equal(metrics.confusion, torch.as_tensor(matrix))
    assert got["mIoU"] == pytest.approx(miou, rel=1e-12) and got["pix_acc"] == pytest.approx(pixacc, rel=1e-12)

    per_batch = [_reference_dense(o, b) for o, b in batches]
    if reduction == "batch":       # the authors' reduction: the mean of per-batch values
        expected = {key: np.mean([d[key] for d, _ in per_batch]) for key in ("abs_err", "rel_err")}
        expected["angle_mean"] = np.mean([a.mean() for _, a in per_batch])
        expected["angle_median"] = np.mean([np.median(a) for _, a in per_batch])
        for t in (11.25, 22.5, 30):
            expected[f"within_{t:g}"] = np.mean([100 * (a < t).mean() for _, a in per_batch])
        tolerance = {"angle_median": 1e-9}
    else:                          # every valid pixel of the split pooled
        depth = np.concatenate([b["depth"].numpy()[b["depth"].numpy() != 0] for _, b in batches])
        depth_pred = np.concatenate([o[1].numpy()[b["depth"].numpy() != 0] for o, b in batches])
        angles = np.concatenate([a for _, a in per_batch])
        expected = {"abs_err": np.abs(depth_pred - depth).mean(), "rel_err": (np.abs(depth_pred - depth) / depth).mean(),
                    "angle_mean": angles.mean(), "angle_median": np.median(angles)}
        for t in (11.25, 22.5, 30):
            expected[f"within_{t:g}"] = 100 * (angles < t).mean()
        tolerance = {"angle_median": 1e-3}                      # the 0.001° histogram
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=tolerance.get(key, 1e-9)), key


def test_perfect_predictions_score_100_and_0_and_absent_classes_leave_the_miou() -> None:
    label = torch.tensor([[[0, 1, -1], [1, 2, 2]]])
    logits = torch.nn.functional.one_hot(label.clamp(min=0), 13).permute(0, 3, 1, 2).float()
    depth = torch.tensor([[[[1.0, 0.0, 2.0], [3.0, 4.0, 0.0]]]])
    normal = torch.nn.functional.normalize(torch.randn(1, 3, 2, 3), dim=1)
    metrics = DenseMetrics(13, normals=True, reduction="pixel")
    metrics.update([logits.log_softmax(1), depth.clone(), normal.clone()], {"label": label, "depth": depth, "normal": normal})
    got = metrics.compute()
    # The −1 pixel is ignored; classes 3–12 occur nowhere and are left out of the mean (not NaN).
    assert got["mIoU"] == 100 and got["pix_acc"] == 100 and got["abs_err"] == 0 and got["rel_err"] == 0
    assert got["angle_mean"] == pytest.approx(0, abs=1e-2) and got["within_11.25"] == 100


def test_qm9_mae_undoes_the_normalisation_and_reports_energies_in_mev() -> None:
    pytest.importorskip("torch_geometric")
    qm9 = get("qm9")()
    qm9.std = torch.linspace(1, 11, 11)[None]
    metrics = qm9.new_metrics()

    class Batch:
        y = torch.zeros(4, 11)

    outputs = torch.arange(44, dtype=torch.float32).reshape(4, 11) / 10
    metrics.update(outputs, Batch())
    got = metrics.compute()
    milli = {"homo", "lumo", "zpve", "U0", "U", "H", "G"}
    for t, column in enumerate(qm9.columns):
        expected = outputs[:, t].abs().mean().item() * (t + 1) * (1000 if column.name in milli else 1)
        assert got[column.name] == pytest.approx(expected, rel=1e-6)
    assert not any(math.isnan(v) for v in got.values())
