"""The cache phase finds a sample's ladder points by name, whichever layout's stages cut
them into entries: a restarted job holds entries of its old layout beside new ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pac.cache.key import CacheKey
from pac.cache.store import ActivationCache
from pac.pipeline.entries import EntryIndex, part_id

POINTS = ["embed", "layer.0", "layer.1", "layer.2"]


def hidden(seed: int) -> torch.Tensor:
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def cache(tmp_path: Path) -> ActivationCache:
    store = ActivationCache(tmp_path, CacheKey("model", "tokenizer", "ladder", "fp32"))
    # "old": two stages cut after layer.0; "new": one stage; "short": a rebuild cut short.
    store.put(part_id("old", 0), {p: hidden(i) for i, p in enumerate(POINTS[:2])})
    store.put(part_id("old", 1), {p: hidden(i + 2) for i, p in enumerate(POINTS[2:])})
    store.put(part_id("new", 0), {p: hidden(10 + i) for i, p in enumerate(POINTS)})
    store.put(part_id("short", 1), {"layer.1": hidden(20)})
    store.flush()
    return store


def test_points_are_found_in_whichever_entry_holds_them(cache: ActivationCache) -> None:
    where = EntryIndex(cache).locate(["new", "old"], POINTS)
    assert where[0] == {p: "new@0" for p in POINTS}
    assert where[1] == {
        "embed": "old@0",
        "layer.0": "old@0",
        "layer.1": "old@1",
        "layer.2": "old@1",
    }
    # what they point at is what was stored
    assert torch.equal(cache.get(where[1]["layer.2"], ["layer.2"])["layer.2"], hidden(3))


def test_only_samples_with_every_point_are_complete(cache: ActivationCache) -> None:
    index = EntryIndex(cache)
    assert index.complete(POINTS) == {"old", "new"}
    assert index.complete(["layer.1"]) == {"old", "new", "short"}
    with pytest.raises(KeyError, match="lacks ladder points of sample short"):
        index.locate(["old", "short"], POINTS)
    with pytest.raises(KeyError, match="holds none"):
        index.locate(["absent"], POINTS)


def test_the_index_reads_the_cache_again_for_a_sample_it_has_not_seen(
    cache: ActivationCache,
) -> None:
    index = EntryIndex(cache)
    index.locate(["old"], POINTS)
    cache.put(part_id("late", 3), {p: hidden(30) for p in POINTS})  # arrived since
    assert index.locate(["late"], POINTS) == [{p: "late@3" for p in POINTS}]
