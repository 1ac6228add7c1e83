"""A job's profiling hands its backbone to the same job's replica (agent/model_handoff.py):
the replica does not read the weight files again, and takes only a backbone that is what
it would have loaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel

from agent import profiling
from agent.model_handoff import ModelHandoff
from pac.families.bert import BertFamily
from pac.techniques.packed_backbone import PackedLinear, packing_supported
from tests.agent.test_training_session import mesh_session


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Backbone(torch.nn.Linear):
    """Stands for a float32 backbone."""

    dtype = torch.float32


def _model() -> PreTrainedModel:
    return _Backbone(2, 2)  # type: ignore[return-value]


def test_a_kept_backbone_is_taken_once_and_only_as_it_was_loaded(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    clock = Clock()
    handoff = ModelHandoff(keep_s=60, clock=clock)
    model = _model()

    def offered(packed: bool = False) -> ModelHandoff:
        handoff.offer(model_dir, model, packed)
        return handoff

    assert offered().take(model_dir, torch.float32, packed=True) is model
    assert handoff.take(model_dir, torch.float32, packed=True) is None  # taken once
    assert not handoff.holding
    assert offered().take(tmp_path / "other", torch.float32, packed=True) is None
    assert not handoff.holding  # a miss drops it too: nothing waits for a second ask
    assert offered().take(model_dir, torch.bfloat16, packed=True) is None
    # Blocks packed by profiling are no good to a job that runs its backbone unpacked.
    assert offered(packed=True).take(model_dir, torch.float32, packed=False) is None
    assert offered(packed=False).take(model_dir, torch.float32, packed=False) is model
    offered()
    (model_dir / "model.safetensors").write_bytes(b"new weights")  # the files changed
    assert handoff.take(model_dir, torch.float32, packed=True) is None
    offered()
    clock.now += 61
    assert handoff.take(model_dir, torch.float32, packed=True) is None  # too old
    offered()
    clock.now += 30
    assert not handoff.expire() and handoff.holding
    clock.now += 31
    assert handoff.expire() and not handoff.holding


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every BERT backbone read from its files."""
    calls: list[Path] = []
    real = BertFamily.load.__func__  # type: ignore[attr-defined]

    def counted(cls: type[BertFamily], model_dir: Path, *args: Any, **kwargs: Any) -> Any:
        calls.append(Path(model_dir))
        return real(cls, model_dir, *args, **kwargs)

    monkeypatch.setattr(BertFamily, "load", classmethod(counted))
    return calls


def handing_over(
    model_dir: Path,
) -> tuple[ModelHandoff, Callable[[PreTrainedModel, bool], None], list[PreTrainedModel]]:
    """A handoff, the ``keep`` that profiling calls to offer it a backbone, and the
    backbones offered."""
    handoff = ModelHandoff()
    offered: list[PreTrainedModel] = []

    def keep(model: PreTrainedModel, packed: bool) -> None:
        offered.append(model)
        handoff.offer(model_dir, model, packed)

    return handoff, keep, offered


def test_a_parallel_adapters_replica_takes_its_profiles_backbone(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, loads: list[Path]
) -> None:
    model_dir = tiny_model_dir("bert")
    handoff, keep, offered = handing_over(model_dir)
    profiling.profile_layers(
        model_dir,
        0,
        0,
        2,
        8,
        1,
        side_network=True,
        second_batch_size=1,
        packed_backbone=True,
        keep=keep,
    )
    assert handoff.holding and len(loads) == 1 and len(offered) == 1
    session = mesh_session(model_dir, tmp_path, technique="parallel-adapters", handoff=handoff)
    assert session.loaded.family.model is offered[0]
    assert len(loads) == 1  # not read again
    # The replica's own packing packed what profiling had left (block 1), and the frozen,
    # prepacked backbone runs.
    if packing_supported(torch.float32, torch.device("cpu")):
        for block in session.loaded.family.blocks():
            linears = [m for m in block.module.modules() if isinstance(m, torch.nn.Linear)]
            packed = [m for m in block.module.modules() if isinstance(m, PackedLinear)]
            assert not linears and packed, block.index
    assert not any(p.requires_grad for p in session.loaded.family.model.parameters())


def test_other_jobs_and_profiles_leave_the_backbone_alone(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, loads: list[Path]
) -> None:
    model_dir = tiny_model_dir("bert")
    handoff, keep, _ = handing_over(model_dir)
    # A baseline's profile times a backward: what it leaves is not kept.
    profiling.profile_layers(model_dir, 0, 0, 2, 8, 1, backward_technique="lora", keep=keep)
    assert not handoff.holding
    # A LoRA replica trains through the backbone: it loads its own.
    profiling.profile_layers(model_dir, 0, 0, 2, 8, 1, packed_backbone=True, keep=keep)
    session = mesh_session(model_dir, tmp_path, technique="lora", handoff=handoff)
    assert handoff.holding and len(loads) == 3
    assert any(p.requires_grad for p in session.model.parameters())
