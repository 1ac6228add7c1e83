"""A mesh job with a bfloat16 backbone (technique setting ``backbone_dtype``): the stages
hand bf16 backbone states to each other (with float32 side states for parallel adapters, bf16
gradients for LoRA), and training on the mesh still equals training on one device."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pac.cache.key import CacheKey
from pac.cache.store import ActivationCache
from pac.data.batches import batches
from pac.data.collate import collate
from pac.engine.dataset import DataFields, load_samples, pad_id, resolve_task
from pac.engine.ladder_cache import LadderCache
from pac.engine.loading import load_model
from pac.engine.schedule import make_optimizer
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.pipeline.local import InProcessMesh
from pac.tasks import TaskSpec
from pac.techniques import build_technique
from pac.techniques.backbone_dtype import backbone_dtype_of
from pac.techniques.base import TunedModel
from pac.techniques.parallel_adapters import ParallelAdaptersModel

SETTINGS = {"reduction": 4, "backbone_dtype": "bf16"}
STEPS = 3


def optimizer_for(
    model: TunedModel,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    return make_optimizer(model.trainable_parameters(), 1e-2, total_steps=STEPS, warmup_ratio=0.0)


@pytest.mark.parametrize("technique", ["parallel-adapters", "lora"])
@pytest.mark.parametrize(
    ("family", "task"), [("t5", TaskSpec("seq2seq")), ("gpt2", TaskSpec("classification"))]
)
def test_a_bf16_backbone_on_two_stages_equals_one_device(
    family: str,
    task: TaskSpec,
    technique: str,
    tiny_model_dir: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    loaded = load_model(tiny_model_dir(family), dtype=backbone_dtype_of(SETTINGS))
    assert loaded.family.model.dtype == torch.bfloat16
    data = tmp_path / "data.jsonl"
    rows = [
        {"text": f"sample {i} is {'good' if i % 2 else 'bad'}", "label": "good" if i % 2 else "bad"}
        for i in range(24)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = resolve_task(task, data, DataFields())
    samples = load_samples(data, loaded, task, DataFields())
    order = batches(samples, 8, shuffle=True, seed=3, epoch=1)[:STEPS]

    def new_model() -> TunedModel:
        # A backbone per replica: LoRA injects its weights into the backbone's modules.
        backbone = load_model(tiny_model_dir(family), dtype=backbone_dtype_of(SETTINGS))
        torch.manual_seed(3)
        return build_technique(technique, backbone.family, task, SETTINGS)

    reference = new_model()
    optimizer, scheduler = optimizer_for(reference)
    reference_losses = []
    for group in order:
        batch = collate(group, pad_id(loaded), task=task)
        loss = reference.loss(reference(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        reference_losses.append(loss.item())

    def make_cache(device: str, model: TunedModel) -> LadderCache | None:
        if not isinstance(model, ParallelAdaptersModel):
            return None
        key = CacheKey("m", "t", model.cache_ladder, "fp16")
        store = ActivationCache(tmp_path / "cache" / device, key)
        return LadderCache(store, loaded.family, model.points)

    cut = len(loaded.family.blocks()) // 2
    end = len(loaded.family.blocks())
    layout = PipelineLayout(
        (StageSpec(0, cut, ("a",), (1.0,)), StageSpec(cut, end, ("b",), (1.0,))), micro_batches=2
    )
    mesh = InProcessMesh(layout, new_model, optimizer_for, make_cache)
    mesh_losses = [
        mesh.step(step, collate(group, pad_id(loaded), task=task), group)
        for step, group in enumerate(order)
    ]
    # What trains is float32 on both, the backbone bf16 on both; only the order of adding
    # the micro-batches' gradients differs (float32 rounding, ~1e-7 relative).
    assert mesh_losses == pytest.approx(reference_losses, rel=1e-5)
    trained = {n: p for n, p in reference.named_parameters() if p.requires_grad}
    initial = {n: p for n, p in new_model().named_parameters() if p.requires_grad}
    checked = set()
    for worker in mesh.workers.values():
        for name, param in worker.model.named_parameters():
            if name in trained and not torch.equal(param, initial[name]):
                assert param.dtype == torch.float32
                error = float((param.detach() - trained[name].detach()).abs().max())
                assert error < 1e-5, f"{name} differs by {error:.3g}"
                checked.add(name)
    assert len(checked) > 0.9 * len(trained)
