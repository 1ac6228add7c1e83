"""A cache-phase step computes its rows in chunks (pac/pipeline/cache_phase.py): the same
gradients as all rows at once, with one chunk's hidden states in memory at a time."""

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
from pac.pipeline.cache_phase import DataParallelWorker
from pac.pipeline.entries import part_id
from pac.pipeline.row_chunks import (
    DEFAULT_CHUNK_BYTES,
    MIN_CHUNK_TOKENS,
    chunk_rows,
    default_chunk_bytes,
    rows_per_chunk,
    take_rows,
)
from pac.pipeline.transport import InProcessHub, InProcessTransport
from pac.tasks import TaskSpec
from pac.techniques.parallel_adapters import ParallelAdaptersModel

ROWS = 7


Job = tuple[Callable[[], ParallelAdaptersModel], LadderCache, dict[str, torch.Tensor], list[str]]


@pytest.fixture
def cached_job(
    tiny_model_dir: Callable[[str], Path], toy_data: Callable[..., Path], tmp_path: Path
) -> Job:
    """A tiny BERT's side network (a maker: each call gives the same fresh one), and a
    cache holding a padded batch's ladder points in stage 0's entries (as epoch 1 on a
    one-stage layout leaves them)."""
    data = toy_data("classification", ROWS)
    model_dir = tiny_model_dir("bert")
    loaded = load_model(model_dir)
    task = resolve_task(TaskSpec("classification"), data, DataFields())
    samples = load_samples(data, loaded, task, DataFields())
    batch = collate(samples, pad_id(loaded), task=task)
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # padded

    def make_model() -> ParallelAdaptersModel:
        torch.manual_seed(0)
        model = ParallelAdaptersModel(load_model(model_dir).family, task)
        torch.nn.init.normal_(model.side.up.weight, std=0.1)  # non-zero: gradients reach it
        return model

    model = make_model()
    key = CacheKey("model", "tokenizer", ",".join(model.points), "fp32")
    cache = LadderCache(ActivationCache(tmp_path / "cache", key), loaded.family, model.points)
    fingerprints = [s.fingerprint for s in samples]
    cache.store([part_id(f, 0) for f in fingerprints], batch, model.ladder(batch))
    cache.cache.flush()
    return make_model, cache, batch, fingerprints


def row_bytes(model: ParallelAdaptersModel, batch: dict[str, torch.Tensor]) -> int:
    """One padded row's ladder points in float32."""
    return len(model.points) * batch["attention_mask"].shape[1] * model.family.hidden_size * 4


def one_step(
    make_model: Callable[[], ParallelAdaptersModel],
    cache: LadderCache,
    batch: dict[str, torch.Tensor],
    fingerprints: list[str],
    chunk_bytes: int,
) -> tuple[ParallelAdaptersModel, float, int]:
    """A fresh model after one cache-phase step (on one device its gradients stay whole in
    their buckets), its loss sum and its terms."""
    model = make_model()
    trained = [p for p in model.parameters() if p.requires_grad]
    worker = DataParallelWorker(
        "x",
        ["x"],
        model,
        cache,
        InProcessTransport(InProcessHub(), "x"),
        torch.optim.AdamW(trained),
        None,
        dict.fromkeys(fingerprints, "x"),
        chunk_bytes=chunk_bytes,
    )
    loss_sum, terms, rows = worker.run_step(0, batch, fingerprints, loss_count=ROWS)
    assert rows == ROWS
    return model, loss_sum, terms


def test_rows_per_chunk_fit_the_bytes(cached_job: Job) -> None:
    make_model, cache, batch, _ = cached_job
    model = make_model()
    width, row = model.family.hidden_size, row_bytes(model, batch)
    assert rows_per_chunk(batch, cache, width, 3 * row) == 3
    assert rows_per_chunk(batch, cache, width, 3 * row - 1) == 2
    assert rows_per_chunk(batch, cache, width, 1) == 1  # a row too large still runs alone
    with pytest.raises(ValueError, match="at least 1"):
        rows_per_chunk(batch, cache, width, 0)


def test_a_chunk_counts_the_bytes_as_read_from_an_fp16_cache(
    cached_job: Job, tmp_path: Path
) -> None:
    make_model, cache, batch, _ = cached_job
    model = make_model()
    key = CacheKey("model", "tokenizer", ",".join(model.points), "fp16")
    half = LadderCache(ActivationCache(tmp_path / "fp16", key), model.family, model.points)
    assert half.dtype == torch.float16
    width, row = model.family.hidden_size, row_bytes(model, batch)  # (as float32)
    assert rows_per_chunk(batch, cache, width, 3 * row) == 3
    assert rows_per_chunk(batch, half, width, 3 * row) == 6  # half the bytes per row


@pytest.mark.parametrize("rows_at_once", [1, 3])
def test_a_chunked_step_equals_all_rows_at_once(cached_job: Job, rows_at_once: int) -> None:
    make_model, cache, batch, fingerprints = cached_job
    model = make_model()
    row = row_bytes(model, batch)
    whole, whole_loss, whole_terms = one_step(make_model, cache, batch, fingerprints, ROWS * row)
    chunked, loss, terms = one_step(make_model, cache, batch, fingerprints, rows_at_once * row)
    assert terms == whole_terms == ROWS
    assert loss == pytest.approx(whole_loss, rel=1e-6)
    nonzero = 0
    for (name, after), expected in zip(chunked.named_parameters(), whole.parameters(), strict=True):
        if not after.requires_grad:
            continue
        assert after.grad is not None and expected.grad is not None
        torch.testing.assert_close(after.grad, expected.grad, atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(after, expected, atol=1e-6, rtol=1e-5, msg=name)
        nonzero += int(bool(expected.grad.abs().max() > 0))
    assert nonzero > 10  # the step reached the side network


def test_a_worker_refuses_a_chunk_of_no_bytes(cached_job: Job) -> None:
    make_model, cache, batch, fingerprints = cached_job
    with pytest.raises(ValueError, match="chunk_bytes must be at least 1"):
        one_step(make_model, cache, batch, fingerprints, 0)


def test_rows_go_longest_first_in_chunks_of_their_own_length(cached_job: Job) -> None:
    make_model, cache, batch, _ = cached_job
    width = make_model().family.hidden_size
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) > 1  # rows of several lengths
    per_token = len(cache.points) * width * cache.dtype.itemsize
    budget = 2 * max(lengths) * per_token
    chunks = chunk_rows(batch, cache, width, budget)
    assert sorted(row for chunk in chunks for row in chunk) == list(range(ROWS))
    order = [row for chunk in chunks for row in chunk]
    assert [lengths[row] for row in order] == sorted(lengths, reverse=True)
    for chunk in chunks:
        longest = max(lengths[row] for row in chunk)
        assert len(chunk) * longest * per_token <= budget or len(chunk) == 1
        taken = take_rows(batch, chunk, ["attention_mask"], trim=True)
        assert taken["attention_mask"].shape == (len(chunk), longest)
        assert int(taken["attention_mask"].sum()) == sum(lengths[row] for row in chunk)
    # Shorter rows share a chunk: more rows fit than at the batch's padded length.
    assert max(len(chunk) for chunk in chunks) > 2


def test_rows_with_a_label_per_token_keep_their_order_and_length(cached_job: Job) -> None:
    make_model, cache, batch, _ = cached_job
    width = make_model().family.hidden_size
    tokens = dict(batch, labels=torch.zeros_like(batch["attention_mask"]))
    row = row_bytes(make_model(), batch)
    assert chunk_rows(tokens, cache, width, 3 * row) == [[0, 1, 2], [3, 4, 5], [6]]
    taken = take_rows(tokens, [3, 4, 5], ["attention_mask"], trim=False)
    assert taken["attention_mask"].shape[1] == batch["attention_mask"].shape[1]
    assert chunk_rows({k: v[:0] for k, v in batch.items()}, cache, width, 3 * row) == []


def test_the_default_chunk_holds_at_least_its_tokens_of_every_point(
    cached_job: Job, tmp_path: Path
) -> None:
    """3 MiB, or MIN_CHUNK_TOKENS tokens of every ladder point on a model wide enough that
    3 MiB holds fewer (BERT-large's 26 points of 1024 values in fp16: 59 tokens)."""
    make_model, cache, _, fingerprints = cached_job
    model = make_model()
    narrow = default_chunk_bytes(cache, model.family.hidden_size)
    assert narrow == DEFAULT_CHUNK_BYTES  # a tiny model's tokens are small
    wide = len(cache.points) * 1024 * cache.dtype.itemsize * MIN_CHUNK_TOKENS
    assert default_chunk_bytes(cache, 1024 * 64) > DEFAULT_CHUNK_BYTES
    assert default_chunk_bytes(cache, 1024) == max(DEFAULT_CHUNK_BYTES, wide)
    key = CacheKey("model", "tokenizer", ",".join(model.points), "fp16")
    half = LadderCache(ActivationCache(tmp_path / "fp16", key), model.family, model.points)
    width = DEFAULT_CHUNK_BYTES // (len(half.points) * 2 * MIN_CHUNK_TOKENS) + 1
    assert default_chunk_bytes(half, width) == len(half.points) * width * 2 * MIN_CHUNK_TOKENS
    # A worker without a chunk takes the default; one given a chunk keeps it.
    trained = [p for p in model.parameters() if p.requires_grad]

    def worker(chunk: int | None) -> DataParallelWorker:
        return DataParallelWorker(
            "x", ["x"], model, cache, InProcessTransport(InProcessHub(), "x"),
            torch.optim.AdamW(trained), None, dict.fromkeys(fingerprints, "x"),
            chunk_bytes=chunk,
        )

    assert worker(None).chunk_bytes == narrow
    assert worker(5).chunk_bytes == 5
