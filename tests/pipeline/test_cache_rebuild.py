"""A restarted parallel-adapters job rebuilds its lost activation cache with forward-only
pipeline steps: they fill the cache exactly as training steps do (the cache depends on the
frozen backbone alone) and train nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from pac.cache.key import CacheKey
from pac.cache.store import ActivationCache
from pac.data.batches import batches
from pac.data.collate import collate
from pac.engine.dataset import DataFields, load_samples, pad_id, resolve_task
from pac.engine.ladder_cache import LadderCache
from pac.engine.loading import load_model
from pac.pipeline.local import InProcessMesh
from pac.tasks import TaskSpec
from pac.techniques.base import TunedModel
from tests.pipeline.test_mesh_equivalence import (
    BATCH,
    SEED,
    layouts,
    new_model,
    optimizer_for,
    write_rows,
)


def cached(mesh: InProcessMesh) -> dict[tuple[str, str], torch.Tensor]:
    """Every (entry, ladder point) the mesh's devices hold."""
    held = {}
    for worker in mesh.workers.values():
        assert worker.cache is not None
        store = worker.cache.cache
        for entry in store.sample_ids():
            for point, tensor in store.export_entry(entry)[0].items():
                held[(entry, point)] = tensor.clone()
    return held


def test_forward_only_steps_fill_the_cache_as_training_does_and_train_nothing(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    loaded = load_model(tiny_model_dir("t5"), dtype=torch.float64)
    data = write_rows(tmp_path / "data.jsonl", "classification")
    task = resolve_task(TaskSpec("classification"), data, DataFields())
    samples = load_samples(data, loaded, task, DataFields())
    order = batches(samples, BATCH, shuffle=True, seed=SEED, epoch=1)
    layout = layouts(len(loaded.family.blocks()))["2x2"]

    def mesh(name: str) -> InProcessMesh:
        def make_cache(device: str, model: TunedModel) -> LadderCache:
            key = CacheKey("m", "t", "ladder", "fp32")
            store = ActivationCache(tmp_path / name / device, key)
            return LadderCache(store, loaded.family, model.points)  # type: ignore[attr-defined]

        return InProcessMesh(
            layout, lambda: new_model(loaded, task, "parallel-adapters"), optimizer_for, make_cache
        )

    trained, rebuilt = mesh("trained"), mesh("rebuilt")
    before = {
        d: {n: p.detach().clone() for n, p in w.model.named_parameters()}
        for d, w in rebuilt.workers.items()
    }
    for step, group in enumerate(order):
        batch = collate(group, pad_id(loaded), task=task)
        trained_loss = trained.step(step, batch, group)
        rebuilt_loss = rebuilt.step(step, batch, group, train=False)
        assert rebuilt_loss > 0 and trained_loss > 0

    expected, got = cached(trained), cached(rebuilt)
    assert len(expected) >= len(samples) and got.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key
    for device, worker in rebuilt.workers.items():
        assert not worker.optimizer.state, device  # no optimizer step was taken
        for name, param in worker.model.named_parameters():
            assert param.grad is None, name
            assert torch.equal(param, before[device][name]), name
    # The training mesh did train (the comparison above is not between two idle meshes).
    moved = [
        n
        for n, p in trained.workers["a"].model.named_parameters()
        if p.requires_grad and not torch.equal(p, before["a"][n])
    ]
    assert moved
