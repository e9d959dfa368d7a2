"""`agent.compile`: the modes, sampling inside the update, no host reads outside the aggregators, and the
rules that keep an aggregator out of a CUDA graph.

The CUDA-graph path itself needs a GPU (`python -m mtrl.bench gpu-check`); here we test what runs on the CPU.
"""

import logging
import sys

import numpy as np
import pytest
import torch

from agents import MultiTaskSAC, ReplayBuffer, SACConfig
from agents.execution import GraphedPhase, capture_blocker, resolve_compile_mode
from agent_helpers import ACT, B, HIDDEN, K, OBS, filled_buffer
from mtrl.aggregation import make


def _agent(mode: str = "none", critic: str = "ls", actor: str = "ls", **config) -> MultiTaskSAC:
    torch.manual_seed(0)
    config = SACConfig(**{"hidden_dim": HIDDEN, "batch_size": K * B, "compile": mode, **config})
    return MultiTaskSAC(OBS, ACT, K, config, make(critic), make(actor), seed=0)


def _state(agent: MultiTaskSAC) -> list[torch.Tensor]:
    return [*agent.actor.parameters(), *agent.critic.parameters(), *agent.critic_target.parameters(), agent.log_alpha]


def test_auto_is_eager_on_the_cpu_and_bad_modes_are_refused() -> None:
    assert _agent("auto").compile_mode == "none"
    assert resolve_compile_mode("auto", torch.device("cuda")) == "cudagraphs"
    with pytest.raises(ValueError, match="cudagraphs needs a CUDA device"):
        _agent("cudagraphs")
    with pytest.raises(ValueError, match="`compile` should be one of"):
        SACConfig(compile="compile")


def test_update_from_the_buffer_samples_what_the_buffer_would() -> None:
    first, second = _agent(), _agent()
    buffer_a, buffer_b = filled_buffer(), filled_buffer()
    for _ in range(2):
        out_a = first.update(buffer_a)
        out_b = second.update(buffer_b.sample(B))
    for a, b in zip(_state(first), _state(second)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(out_a["loss/critic"], out_b["loss/critic"], rtol=0, atol=0)


def test_the_update_outside_the_aggregators_reads_nothing_back_to_the_host(monkeypatch) -> None:
    """A host read in the update would stall a GPU and break a CUDA-graph capture.

    Adam's step counter is exempt: a host tensor on the CPU, a device tensor with ``capturable=True``
    (which the agent sets on CUDA)."""
    agent, buffer = _agent(critic="ls", actor="ls", aggregate=()), filled_buffer()
    reads = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if "torch/optim" not in sys._getframe(1).f_code.co_filename:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    out = agent.update(buffer, performance=torch.zeros(K))
    agent.update(buffer)
    monkeypatch.undo()
    assert reads == []
    assert all(value.device == agent.device for value in out.values())


def test_device_side_indices_cover_the_filled_slots_uniformly() -> None:
    buffer = ReplayBuffer(1, 1, 1, 100, seed=0)
    for step in range(7):
        buffer.add(np.full((1, 1), step), np.zeros((1, 1)), np.zeros(1), np.zeros((1, 1)), np.zeros(1))
    steps = buffer.sample(70_000).obs[0, :, 0].long()
    counts = torch.bincount(steps, minlength=7)
    assert counts.numel() == 7                               # never an unfilled slot
    assert (counts - 10_000).abs().max() < 500               # ~5 standard deviations
    restored = ReplayBuffer(1, 1, 1, 100)
    restored.load_state_dict(buffer.state_dict())
    assert int(restored._filled) == 7                        # the device-side count follows a restore


def test_stateful_aggregators_stay_out_of_cuda_graphs_unless_they_declare_otherwise() -> None:
    assert capture_blocker(make("ls")) is None
    assert capture_blocker(None) is None
    assert "keeps state" in capture_blocker(make("dwa"))      # Python-side history: stays eager
    assert capture_blocker(make("excessmtl")) is None          # device state updated in place: declares so
    assert capture_blocker(make("pivrg")) is None
    assert "declares capturable=False" in capture_blocker(make("nashmtl", update_weights_every=2))
    declared = make("dwa")
    declared.capturable = True
    assert capture_blocker(declared) is None


def test_a_blocked_phase_runs_eagerly_and_says_so_once(caplog) -> None:
    calls = []
    with caplog.at_level(logging.WARNING, logger="agents.execution"):
        phase = GraphedPhase(lambda x: calls.append(x) or x * 2, "critic", blocker="aggregator X keeps state")
        results = [phase(torch.tensor(float(i))) for i in range(5)]
    assert [float(r) for r in results] == [0.0, 2.0, 4.0, 6.0, 8.0] and len(calls) == 5
    assert not phase.captured
    assert sum("critic phase runs eagerly" in record.message for record in caplog.records) == 1


# ------------------------------------------------------------------ CUDA only (run by the GPU check)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (python -m mtrl.bench gpu-check runs these)")


def _cuda_agent(mode: str, aggregator: str | None = None, **config) -> MultiTaskSAC:
    torch.manual_seed(0)
    aggregate = {} if aggregator else {"aggregate": ()}   # no aggregator: plain mean losses
    config = SACConfig(**{"hidden_dim": HIDDEN, "batch_size": K * B, "compile": mode, **aggregate, **config})
    build = (lambda: make(aggregator)) if aggregator else (lambda: None)
    return MultiTaskSAC(OBS, ACT, K, config, build(), build(), device="cuda", seed=0)


@cuda
def test_cuda_graph_updates_agree_with_eager_and_never_sync() -> None:
    """Without aggregators every phase is captured: sample, critic, actor + temperatures, targets."""
    agents = {mode: _cuda_agent(mode, aggregate=()) for mode in ("none", "cudagraphs")}
    buffers = {mode: filled_buffer(device="cuda") for mode in agents}
    for _ in range(6):   # 3 warm-up calls, the capture, then replays
        outputs = {mode: agent.update(buffers[mode]) for mode, agent in agents.items()}
    assert agents["cudagraphs"].runner.captured() == \
        ["actor", "critic", "sample", "target"]
    torch.cuda.set_sync_debug_mode("error")
    try:
        outputs["cudagraphs"] = agents["cudagraphs"].update(buffers["cudagraphs"])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    outputs["none"] = agents["none"].update(buffers["none"])
    for eager, replayed in zip(_state(agents["none"]), _state(agents["cudagraphs"])):
        torch.testing.assert_close(replayed, eager, rtol=1e-5, atol=1e-5)
    for name, eager in outputs["none"].items():
        torch.testing.assert_close(outputs["cudagraphs"][name], eager, rtol=1e-5, atol=1e-5)


#: Aggregators whose calls read nothing back and keep their state in device tensors updated in place.
CAPTURED_AGGREGATORS = ["ls", "pivrg", "nashmtl", "fairgrad", "pi_nashmtl", "mgda", "cagrad", "imtlg", "excessmtl"]


@cuda
@pytest.mark.parametrize("name", CAPTURED_AGGREGATORS)
def test_cuda_graph_captures_the_aggregated_update(name: str) -> None:
    """With a Jacobian aggregator on both networks (and Δm for the performance-informed ones) every phase
    is captured, a replay never syncs, and replays follow the eager update (state included)."""
    agents = {mode: _cuda_agent(mode, name) for mode in ("none", "cudagraphs")}
    buffers = {mode: filled_buffer(device="cuda") for mode in agents}
    performance = torch.linspace(0.0, 60.0, K, device="cuda")
    for _ in range(6):
        outputs = {mode: agent.update(buffers[mode], performance) for mode, agent in agents.items()}
    assert agents["cudagraphs"].runner.captured() == \
        ["actor", "critic", "sample", "target"]
    torch.cuda.set_sync_debug_mode("error")
    try:
        outputs["cudagraphs"] = agents["cudagraphs"].update(buffers["cudagraphs"], performance)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    outputs["none"] = agents["none"].update(buffers["none"], performance)
    for eager, replayed in zip(_state(agents["none"]), _state(agents["cudagraphs"])):
        torch.testing.assert_close(replayed, eager, rtol=1e-4, atol=1e-4)
    for key, eager in outputs["none"].items():
        torch.testing.assert_close(outputs["cudagraphs"][key], eager, rtol=1e-4, atol=1e-4)
    for mode, agent in agents.items():
        agent.critic_aggregator.check()
        assert agent.critic_aggregator.fallbacks == 0, mode


@cuda
def test_cuda_act_through_pinned_buffers_matches_the_actor() -> None:
    agent = _cuda_agent("cudagraphs")
    obs = np.random.default_rng(0).normal(size=(K, OBS))
    action = agent.act(obs, deterministic=True)
    with torch.no_grad():
        expected = agent.actor(torch.as_tensor(obs, dtype=torch.float32, device="cuda").unsqueeze(1),
                               torch.zeros(K, 1, ACT, device="cuda"))[2].squeeze(1).cpu().numpy()
    np.testing.assert_allclose(action, expected, rtol=1e-6)
    assert isinstance(action, np.ndarray) and action.shape == (K, ACT)
