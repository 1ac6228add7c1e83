"""Training from the cache equals training with the live backbone (the cache invariant)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pac.cache.key import CacheKey
from pac.cache.store import ActivationCache
from pac.data.collate import collate
from pac.engine.dataset import DataFields, load_samples, pad_id, resolve_task
from pac.engine.ladder_cache import LadderCache
from pac.engine.loading import load_model
from pac.tasks import TaskSpec
from pac.techniques.parallel_adapters import ParallelAdaptersModel


def side_gradients(
    model: ParallelAdaptersModel, ladder: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model.loss(model.forward_from_ladder(ladder, batch), batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CASES = [
    ("bert", TaskSpec("classification")),
    ("t5", TaskSpec("classification", head="text")),
    ("t5", TaskSpec("seq2seq")),
    ("bart", TaskSpec("classification")),
    ("gpt2", TaskSpec("classification")),
    ("llama", TaskSpec("causal-lm")),
]


def data_kind(task: TaskSpec) -> str:
    return task.kind


@pytest.mark.parametrize(
    ("family", "task"), CASES, ids=[f"{f}-{t.kind}-{t.head}" for f, t in CASES]
)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_cache_gradients_equal_live(
    family: str,
    task: TaskSpec,
    precision: str,
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
) -> None:
    model_dir = tiny_model_dir(family)
    data = toy_data(data_kind(task), 12)
    loaded = load_model(model_dir)
    task = resolve_task(task, data, DataFields())
    samples = load_samples(data, loaded, task, DataFields())
    batch = collate(samples, pad_id(loaded), task=task)
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # padded
    torch.manual_seed(0)
    model = ParallelAdaptersModel(loaded.family, task)
    torch.nn.init.normal_(model.side.up.weight, std=0.1)  # non-zero: gradients reach the side

    live_ladder = model.ladder(batch)
    live = side_gradients(model, live_ladder, batch)

    key = CacheKey("model", "tokenizer", ",".join(model.points), precision)
    cache = LadderCache(ActivationCache(tmp_path / "cache", key), loaded.family, model.points)
    cache.store([s.fingerprint for s in samples], batch, live_ladder)
    cache.cache.flush()
    cached = side_gradients(model, cache.load(samples), batch)

    assert live.keys() == cached.keys() and len(live) > 10
    if precision == "fp32":
        for name, grad in live.items():
            torch.testing.assert_close(cached[name], grad, atol=1e-6, rtol=1e-5, msg=name)
        return
    # Lossy storage moves the gradient, but by little next to its size (measured over the
    # whole gradient: a single scalar such as a gate's can be a near-cancelling sum).
    flat_live = torch.cat([g.flatten() for g in live.values()])
    flat_cached = torch.cat([cached[name].flatten() for name in live])
    error = float((flat_cached - flat_live).norm() / flat_live.norm())
    # int8 keeps ~7 bits per token row: a row with one large value loses the small ones.
    bound = {"fp16": 0.01, "bf16": 0.05, "int8": 0.25}[precision]
    assert 0 < error < bound, f"relative gradient error {error:.3g} (bound {bound})"
