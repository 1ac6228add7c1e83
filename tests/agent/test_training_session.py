"""An agent refuses a mesh job whose model differs from the coordinator's copy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from agent.errors import WeightsMismatch
from agent.model_handoff import ModelHandoff
from agent.training import TrainingSession, WireTransport
from pac.pipeline.job import MeshJobSettings
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.tasks import TaskSpec


def test_a_different_local_model_is_refused_before_loading(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    settings = MeshJobSettings(
        model_dir=str(tiny_model_dir("bert")),
        task=TaskSpec("classification", labels=("a", "b")),
        technique="parallel-adapters",
        technique_settings={},
        layout=PipelineLayout((StageSpec(0, 2, ("agent-0",), (1.0,)),), micro_batches=1),
        addresses={"agent-0": "127.0.0.1:1"},
        model_fingerprint="0" * 64,
    )
    assert MeshJobSettings.from_json(settings.to_json()) == settings
    transport = cast(WireTransport, cast(Any, None))
    with pytest.raises(WeightsMismatch, match="is not the job's"):
        TrainingSession("job", "agent-0", settings, tmp_path, transport)


def mesh_session(
    model_dir: Path,
    cache_root: Path,
    technique: str = "lora",
    attempt: str = "job",
    extra: dict[str, Any] | None = None,
    handoff: ModelHandoff | None = None,
) -> TrainingSession:
    """A one-device mesh job's session on ``model_dir`` (no transport: nothing is sent)."""
    settings = MeshJobSettings(
        model_dir=str(model_dir),
        task=TaskSpec("classification", labels=("a", "b")),
        technique=technique,
        technique_settings={},
        layout=PipelineLayout((StageSpec(0, 2, ("agent-0",), (1.0,)),), micro_batches=1),
        addresses={"agent-0": "127.0.0.1:1"},
        learning_rate=1e-2,
        total_steps=20,
        extra=extra or {},
    )
    return TrainingSession(attempt, "agent-0", settings, cache_root, cast(Any, None), handoff)


def lora_session(model_dir: Path, cache_root: Path) -> TrainingSession:
    return mesh_session(model_dir, cache_root)


def test_a_restored_state_sets_the_parameters_the_schedule_and_at_the_first_step_the_state(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    import torch

    from agent.errors import BadRequest

    session = lora_session(tiny_model_dir("bert"), tmp_path)
    optimizer = session.worker.optimizer
    trainable = {n: p for n, p in session.worker.model.named_parameters() if p.requires_grad}
    state: dict[str, torch.Tensor] = {}
    for name, param in trainable.items():
        state[name] = param.detach() + 1.0
        state[f"{name}::exp_avg"] = torch.full_like(param, 0.5)
        state[f"{name}::exp_avg_sq"] = torch.full_like(param, 4.0)
        state[f"{name}::step"] = torch.tensor(7.0)

    assert session.restore(state, step=7, rebuild_cache=True) == (len(trainable),) * 2
    assert session.restored_step == 0  # a LoRA job keeps no cache to rebuild
    for name, param in trainable.items():
        assert torch.equal(param, state[name]), name
    # The schedule continues at step 7 (as if it had stepped 7 times).
    fresh = lora_session(tiny_model_dir("bert"), tmp_path / "fresh")
    for _ in range(7):
        fresh.worker.optimizer.step()
        assert fresh.worker.scheduler is not None
        fresh.worker.scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        fresh.worker.optimizer.param_groups[0]["lr"]
    )
    assert session.worker.scheduler is not None
    assert session.worker.scheduler.get_last_lr() == fresh.worker.scheduler.get_last_lr()

    # The optimizer state waits for the parameters this device steps.
    assert not optimizer.state
    one_name, one = next(iter(trainable.items()))
    one.grad = torch.zeros_like(one)
    optimizer.step()
    assert set(optimizer.state) == {one}
    assert float(optimizer.state[one]["step"]) == 8.0
    torch.testing.assert_close(optimizer.state[one]["exp_avg"], torch.full_like(one, 0.45))
    # The others are other stages' (a pipeline stage steps its own): the cache phase's
    # gather would bring them, so they are dropped, and a later step takes nothing stale.
    assert session.pending_state == {}
    for param in trainable.values():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    assert float(optimizer.state[one]["step"]) == 9.0
    assert all(float(optimizer.state[p]["step"]) == 1.0 for p in trainable.values() if p is not one)

    with pytest.raises(BadRequest, match="lacks"):
        session.restore({"nope.weight": torch.zeros(2)}, 0, False)
    with pytest.raises(BadRequest, match="shape"):
        session.restore({one_name: torch.zeros(3, 3, 3)}, 0, False)
    with pytest.raises(BadRequest, match="without its parameter"):
        session.restore({f"{one_name}::exp_avg": torch.zeros_like(one)}, 0, False)


def test_closing_waits_for_the_step_in_flight_and_refuses_later_steps(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    import threading

    from agent.errors import JobClosed

    session = lora_session(tiny_model_dir("bert"), tmp_path)
    discarded: list[int] = []
    with session.step_lock:  # a step in flight (an agent woken after its job went on)
        closing = threading.Thread(target=lambda: discarded.append(session.discard_cache()))
        closing.start()
        closing.join(0.3)
        assert closing.is_alive() and not session.closed  # it waits for the step to end
    closing.join(10)
    assert discarded == [0] and session.closed  # (LoRA keeps no cache: nothing to delete)
    with pytest.raises(JobClosed, match="was closed"):
        session.run_step(0, cast(Any, None))


def pac_session(
    model_dir: Path, cache_root: Path, attempt: str, adopt_from: list[str] | None = None
) -> TrainingSession:
    extra = {"adopt_cache_from": adopt_from} if adopt_from else {}
    return mesh_session(model_dir, cache_root, "parallel-adapters", attempt, extra)


def test_a_restarted_attempt_takes_over_the_cache_its_earlier_attempt_kept(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """Closed with keep_cache, an attempt's cache goes to the next attempt that names it;
    only samples with every ladder point count as held, the rest is deleted."""
    import torch

    from pac.pipeline.entries import part_id
    from pac.techniques.parallel_adapters import ParallelAdaptersModel

    model_dir = tiny_model_dir("bert")
    first = pac_session(model_dir, tmp_path, "job")
    points: list[str] = list(cast(ParallelAdaptersModel, first.worker.model).points)
    assert len(points) > 1

    def states(seed: int, names: list[str]) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return {p: torch.randn(3, 8, generator=generator) for p in names}

    first.cache.put(part_id("whole", 0), states(1, points[:1]))
    first.cache.put(part_id("whole", 1), states(2, points[1:]))  # cut by the old layout
    first.cache.put(part_id("half", 0), states(3, points[:1]))  # its other stage was lost
    stored = first.cache.get("whole@1")  # (at the cache's precision, fp16)
    assert first.discard_cache(keep=True) == 0
    second = pac_session(model_dir, tmp_path, "job-r1", adopt_from=["job"])
    assert second.adopted_from == "job"
    assert not (tmp_path / "job" / first.cache.key.namespace).exists()
    assert (tmp_path / "job-r1" / first.cache.key.namespace).is_dir()
    assert second.complete_samples() == ["whole"]
    assert sorted(second.cache.sample_ids()) == ["whole@0", "whole@1"]  # "half" deleted
    assert stored.keys() == set(points[1:])
    for point, value in second.cache.get("whole@1").items():
        assert torch.equal(value, stored[point]), point
    # Closed without keep, the cache is deleted and a later attempt finds none.
    assert second.discard_cache() > 0
    third = pac_session(model_dir, tmp_path, "job-r2", adopt_from=["job-r1", "job"])
    assert third.adopted_from is None and third.complete_samples() == []
