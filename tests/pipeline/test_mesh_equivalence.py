"""The mesh invariant: training across stages and device groups equals training on one
device (same seed, data order and global batch), whatever the layout."""

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
from pac.data.encoding import EncodedSample
from pac.engine.dataset import DataFields, load_samples, pad_id, resolve_task
from pac.engine.ladder_cache import LadderCache
from pac.engine.loading import LoadedModel, load_model
from pac.engine.schedule import make_optimizer
from pac.pipeline.batch_part import BatchPart
from pac.pipeline.entries import split_part_id
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.pipeline.local import InProcessMesh
from pac.tasks import TaskSpec
from pac.techniques import build_technique
from pac.techniques.base import TunedModel

STEPS = 3
BATCH = 8
SEED = 7


def layouts(num_blocks: int) -> dict[str, PipelineLayout]:
    cut = num_blocks // 2
    return {
        "1x1": PipelineLayout((StageSpec(0, num_blocks, ("a",), (1.0,)),), micro_batches=2),
        "2x1": PipelineLayout(
            (StageSpec(0, cut, ("a",), (1.0,)), StageSpec(cut, num_blocks, ("b",), (1.0,))),
            micro_batches=4,
        ),
        "2x2": PipelineLayout(
            (
                StageSpec(0, cut, ("a", "b"), (2.0, 1.0)),
                StageSpec(cut, num_blocks, ("c", "d"), (1.0, 1.0)),
            ),
            micro_batches=2,
        ),
        # One stage on two devices: each cuts its rows to their own columns.
        "1x2": PipelineLayout((StageSpec(0, num_blocks, ("a", "b"), (1.0, 1.0)),), micro_batches=2),
    }


def cuts_columns(layout: PipelineLayout, batch: dict[str, torch.Tensor]) -> bool:
    """Whether some micro-batch of ``batch`` computes fewer columns than the mini-batch's
    (:mod:`pac.pipeline.micro_columns`)."""
    cut = BatchPart.whole(batch, None, 1).by_micro_batch(layout.micro_batches)
    return any(int(width.min()) < batch[mask].shape[1] for mask, width in cut.columns.items())


def write_rows(path: Path, kind: str) -> Path:
    words = ["good", "bad", "film", "story", "very", "the", "a", "day", "dull", "fine"]
    rows = []
    for i in range(STEPS * BATCH):
        # Unique texts: equal samples would share one cache entry.
        text = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(2 + i % 5))
        text += " " + words[i // len(words)]
        row: dict[str, object] = {"text": text}
        if kind == "seq2seq":
            row["label"] = words[i % len(words)]
        elif kind == "classification":
            row["label"] = "pos" if i % 3 else "neg"
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def new_model(loaded: LoadedModel, task: TaskSpec, technique: str) -> TunedModel:
    """A replica; in float64, so that what remains of rounding (the mesh adds the
    micro-batches' gradients in another order) stays far below what the test checks, even
    after Adam has divided every gradient by its own running size."""
    torch.manual_seed(SEED)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return build_technique(technique, loaded.family, task, {"reduction": 4})
    finally:
        torch.set_default_dtype(default)


def optimizer_for(
    model: TunedModel,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    return make_optimizer(model.trainable_parameters(), 1e-2, total_steps=STEPS, warmup_ratio=0.0)


def train_one_device(
    model: TunedModel, loaded: LoadedModel, task: TaskSpec, order: list[list[EncodedSample]]
) -> list[float]:
    """The reference: the same mini-batches, in order, on one device; the losses."""
    optimizer, scheduler = optimizer_for(model)
    losses = []
    for group in order:
        batch = collate(group, pad_id(loaded), task=task)
        loss = model.loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


CASES = [
    ("t5", "seq2seq"),
    ("t5", "classification"),
    ("llama", "causal-lm"),
    ("gpt2", "classification"),
    ("bert", "classification"),
]


@pytest.mark.parametrize("layout_name", ["1x1", "2x1", "2x2", "1x2"])
@pytest.mark.parametrize(("family", "kind"), CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_side_network_on_the_mesh_equals_one_device(
    family: str, kind: str, layout_name: str, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    loaded = load_model(tiny_model_dir(family), dtype=torch.float64)
    data = write_rows(tmp_path / "data.jsonl", kind)
    task = resolve_task(TaskSpec(kind), data, DataFields())
    samples = load_samples(data, loaded, task, DataFields())
    order = batches(samples, BATCH, shuffle=True, seed=SEED, epoch=1)
    layout = layouts(len(loaded.family.blocks()))[layout_name]
    # The mesh cuts micro-batches to their own longest rows; the equality holds for that.
    assert any(cuts_columns(layout, collate(g, pad_id(loaded), task=task)) for g in order)

    reference = new_model(loaded, task, "parallel-adapters")
    initial = {n: p.detach().clone() for n, p in reference.named_parameters() if p.requires_grad}
    reference_losses = train_one_device(reference, loaded, task, order)

    def make_cache(device: str, model: TunedModel) -> LadderCache:
        key = CacheKey("m", "t", "ladder", "fp32")
        points = model.points  # type: ignore[attr-defined]
        return LadderCache(ActivationCache(tmp_path / "cache" / device, key), loaded.family, points)

    mesh = InProcessMesh(
        layout, lambda: new_model(loaded, task, "parallel-adapters"), optimizer_for, make_cache
    )
    mesh_losses = [
        mesh.step(step, collate(group, pad_id(loaded), task=task), group)
        for step, group in enumerate(order)
    ]
    assert mesh_losses == pytest.approx(reference_losses, rel=1e-9, abs=1e-12)

    trained = {n: p for n, p in reference.named_parameters() if p.requires_grad}
    changed = {n for n, p in trained.items() if not torch.equal(p, initial[n])}
    assert len(changed) > 0.9 * len(trained)
    owners: dict[str, list[str]] = {n: [] for n in trained}
    for device, worker in mesh.workers.items():
        for name, param in worker.model.named_parameters():
            if name in trained and not torch.equal(param, initial[name]):
                error = float((param.detach() - trained[name].detach()).abs().max())
                assert error < 1e-9, f"{device}: {name} differs by {error:.3g}"
                owners[name].append(device)
    for name in changed:
        assert owners[name], f"{name} trained on one device but on no device of the mesh"
    # Data parallelism inside a group: both replicas of a stage hold the same parameters.
    for stage in layout.stages:
        for name in changed:
            copies = [dict(mesh.workers[d].model.named_parameters())[name] for d in stage.devices]
            for copy in copies[1:]:
                assert torch.equal(copy, copies[0]), name

    # The cache across the devices holds every (sample, ladder point) exactly once.
    held: dict[tuple[str, str], int] = {}
    for worker in mesh.workers.values():
        assert worker.cache is not None
        store = worker.cache.cache
        for entry in store.sample_ids():
            fingerprint, _stage = split_part_id(entry)
            for point in store.shapes(entry):
                held[(fingerprint, point)] = held.get((fingerprint, point), 0) + 1
    points = mesh.workers[layout.devices[0]].model.points  # type: ignore[attr-defined]
    expected = {(s.fingerprint, p) for s in samples for p in points}
    assert len({s.fingerprint for s in samples}) == len(samples)
    assert set(held) == expected
    assert all(count == 1 for count in held.values())


def without_dropout(model: TunedModel) -> TunedModel:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


BASELINE_LAYOUTS = {
    "pipeline-2x1": lambda n: layouts(n)["2x1"],  # Eco-FL-like
    "data-parallel-1x2": lambda n: PipelineLayout(  # EDDL-like: every device holds it all
        (StageSpec(0, n, ("a", "b"), (1.0, 1.0)),), micro_batches=1
    ),
}


@pytest.mark.parametrize("layout_name", list(BASELINE_LAYOUTS))
@pytest.mark.parametrize("technique", ["full", "lora", "adapters"])
@pytest.mark.parametrize("family", ["t5", "gpt2"])
def test_baselines_on_the_mesh_equal_one_device(
    family: str,
    technique: str,
    layout_name: str,
    tiny_model_dir: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """The same machinery trains the baselines: the backbone's hidden-state gradients travel
    back between stages (pipeline), or whole replicas all-reduce (data parallel)."""
    loaded = load_model(tiny_model_dir(family), dtype=torch.float64)
    data = write_rows(tmp_path / "data.jsonl", "classification")
    task = resolve_task(TaskSpec("classification"), data, DataFields())
    samples = load_samples(data, loaded, task, DataFields())
    order = batches(samples, BATCH, shuffle=True, seed=SEED, epoch=1)
    layout = BASELINE_LAYOUTS[layout_name](len(loaded.family.blocks()))

    def replica() -> TunedModel:
        # Each replica injects its own LoRA/adapters into the backbone: a copy per device.
        copy = load_model(tiny_model_dir(family), dtype=torch.float64)
        return without_dropout(new_model(copy, task, technique))

    reference = replica()
    expected = train_one_device(reference, loaded, task, order)
    mesh = InProcessMesh(layout, replica, optimizer_for)
    got = [
        mesh.step(step, collate(group, pad_id(loaded), task=task))
        for step, group in enumerate(order)
    ]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    trained = dict(reference.named_parameters())
    # Every parameter a device trained equals the single-device result.
    for device, worker in mesh.workers.items():
        names = {id(p): n for n, p in worker.model.named_parameters()}
        for param in worker.optimizer.state:
            name = names[id(param)]
            error = float((param.detach() - trained[name].detach()).abs().max())
            assert error < 1e-9, f"{device}: {name} differs by {error:.3g}"
