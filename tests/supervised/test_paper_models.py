"""The paper benchmarks' models: parameter counts against the reference implementations, structure, one step."""

from __future__ import annotations

import pytest
import torch

from mtrl.supervised import MultiTaskTrainer
from mtrl.supervised.benchmarks import get
from mtrl.supervised.benchmarks.segnet import MTANSegNet


def _count(params) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("name, total, shared", [
    # Reference: AvivNavon/nash-mtl experiments/nyuv2/models.py SegNetMtan() (the PIVRG code's is the same):
    # 44,229,073 parameters, 44,117,184 of them in shared_parameters() (every name without "pred").
    ("nyuv2", 44_229_073, 44_117_184),
    # Reference: jianke0604/MTLlib experiments/cityscapes/models.py SegNetMtan() (7 classes, 2 tasks):
    # 41,206,984 parameters, 41,132,608 shared.
    ("cityscapes", 41_206_984, 41_132_608),
])
def test_mtan_segnet_has_the_reference_parameter_counts(name: str, total: int, shared: int) -> None:
    benchmark = get(name)()
    model = benchmark.build_model()
    assert _count(model.parameters()) == total
    assert _count(benchmark.shared_parameters(model)) == shared
    assert _count(model.heads.parameters()) == total - shared


def test_qm9_mpnn_has_the_reference_parameter_count() -> None:
    pytest.importorskip("torch_geometric")
    # Reference: AvivNavon/nash-mtl experiments/quantum_chemistry/models.py Net(n_tasks=11): 617,675
    # parameters, 616,960 in shared_parameters() (lin0, conv, gru, set2set, lin1).
    benchmark = get("qm9")()
    model = benchmark.build_model()
    assert _count(model.parameters()) == 617_675
    assert _count(benchmark.shared_parameters(model)) == 616_960


def test_each_task_head_reads_only_its_own_attention_branch() -> None:
    """Changing task 1's attention masks changes task 1's output only (MTAN's per-task attention). In train
    mode: at initialisation the eval-mode activations shrink to ~1e-7 by the last stage."""
    model = MTANSegNet((4, 1, 3)).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for p in model.encoder_masks[1].parameters():
            p.add_(0.5)
        after = model(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert (before[1] - after[1]).abs().max() > 1e-3 * before[1].abs().max()
    assert [tuple(o.shape) for o in after] == [(2, 4, 32, 32), (2, 1, 32, 32), (2, 3, 32, 32)]
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 3, 48, 40))


@pytest.mark.parametrize("name, batch_size", [("cityscapes", 2), ("qm9", 4)])
def test_one_aggregated_step_on_a_synthetic_batch_moves_shared_and_head_parameters(name: str, batch_size: int) -> None:
    if name == "qm9":
        pytest.importorskip("torch_geometric")
    benchmark = get(name)(get(name).quick_options)      # Cityscapes at 32×64 (the real size is 128×256)
    model = benchmark.build_model()
    batch = benchmark.synthetic_batch(batch_size, torch.Generator().manual_seed(0))
    trainer = MultiTaskTrainer(model, lambda b: benchmark.losses(benchmark.forward(model, b), b), "pcgrad",
                               torch.optim.Adam(model.parameters(), lr=1e-3), shared=benchmark.shared_parameters(model))
    shared_before = [p.detach().clone() for p in benchmark.shared_parameters(model)]
    heads_before = [p.detach().clone() for p in model.heads.parameters()]
    out = trainer.step(batch)
    assert out.losses.shape == (benchmark.num_tasks,) and torch.isfinite(out.losses).all()
    assert any(not torch.equal(a, p) for a, p in zip(shared_before, benchmark.shared_parameters(model)))
    assert all(not torch.equal(a, p) for a, p in zip(heads_before, model.heads.parameters()))
