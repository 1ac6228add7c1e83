"""Entries move between caches byte for byte, and a moved entry has exactly one owner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from pac.cache import ActivationCache, CacheCorruptError, CacheKey

SampleMaker = Callable[[int, dict[str, int]], dict[str, Tensor]]


def _filled(root: Path, key: CacheKey, make_sample: SampleMaker, n: int) -> ActivationCache:
    cache = ActivationCache(root, key, shard_samples=3)
    for i in range(n):
        lengths = {"embed": 2 + i, "layer.0": 2 + i}
        if i % 2:
            lengths["embed.decoder"] = 1 + i // 2
        cache.put(f"s{i}", make_sample(i, lengths))
    return cache


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_export_import_preserves_bytes_and_crc(
    tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker, precision: str
) -> None:
    source = _filled(tmp_path / "a", key(precision), make_sample, 7)
    source.close()
    target = ActivationCache(tmp_path / "b", key(precision), shard_samples=4)
    for sid in source.sample_ids():
        stored, crc = source.export_entry(sid)
        if precision == "int8":
            assert stored["embed"].dtype == torch.int8 and "embed.scale" in stored
        assert target.import_entry(sid, stored, crc)
        assert not target.import_entry(sid, stored, crc)  # already there: a no-op
    target.close()

    reopened = ActivationCache(tmp_path / "b", key(precision))
    assert sorted(reopened.sample_ids()) == sorted(source.sample_ids())
    for sid in source.sample_ids():
        sent, sent_crc = source.export_entry(sid)
        got, got_crc = reopened.export_entry(sid)
        assert got_crc == sent_crc
        assert sorted(got) == sorted(sent)
        for name in sent:
            assert got[name].dtype == sent[name].dtype
            assert torch.equal(got[name].view(torch.uint8), sent[name].view(torch.uint8))
        decoded_a, decoded_b = source.get(sid), reopened.get(sid)
        assert all(torch.equal(decoded_a[p], decoded_b[p]) for p in decoded_a)


def test_import_checks_crc_and_form(
    tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker
) -> None:
    source = _filled(tmp_path / "a", key("int8"), make_sample, 2)
    stored, crc = source.export_entry("s1")  # from the write buffer: works the same
    target = ActivationCache(tmp_path / "b", key("int8"))

    damaged = {name: t.clone() for name, t in stored.items()}
    damaged["layer.0"][0, 0] += 1
    with pytest.raises(CacheCorruptError, match=r"'s1'.*checksum"):
        target.import_entry("s1", damaged, crc)
    missing_scale = {k: v for k, v in stored.items() if k != "embed.scale"}
    with pytest.raises(CacheCorruptError, match="parts"):
        target.import_entry("s1", missing_scale, crc)
    as_fp16 = {k: (v.half() if k == "embed" else v) for k, v in stored.items()}
    with pytest.raises(CacheCorruptError, match="same key"):
        target.import_entry("s1", as_fp16, crc)
    assert "s1" not in target

    # the import holds its own copy: the sender may reuse its buffer at once
    buffer = {name: t.clone() for name, t in stored.items()}
    assert target.import_entry("s1", buffer, crc)
    for t in buffer.values():
        t.zero_()
    target.verify("s1")


def test_remove_rewrites_shards_and_keeps_the_rest(
    tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker
) -> None:
    cache = _filled(tmp_path, key("fp16"), make_sample, 8)  # shards of 3,3 + 2 buffered
    before = {sid: cache.get(sid) for sid in cache.sample_ids()}
    cache.flush()
    bytes_before = cache.nbytes
    shard_names = sorted(p.name for p in cache.directory.glob("shard_*.safetensors"))
    assert len(shard_names) == 3
    # s0..s2 fill shard 0 entirely; s4 is one of three in shard 1; "nope" is not there
    assert cache.remove(["s0", "s1", "s2", "s4", "nope"]) == 4
    assert not (cache.directory / shard_names[0]).exists()
    assert cache.nbytes < bytes_before
    assert sorted(cache.sample_ids()) == ["s3", "s5", "s6", "s7"]
    for sid in ("s0", "s4"):
        assert sid not in cache

    reopened = ActivationCache(tmp_path, key("fp16"))
    assert sorted(reopened.sample_ids()) == ["s3", "s5", "s6", "s7"]
    reopened.verify_all()
    for sid in reopened.sample_ids():
        got = reopened.get(sid)
        assert all(torch.equal(got[p], before[sid][p]) for p in before[sid])
    assert cache.remove(["s7"]) == 1
    assert cache.stats().samples == 3
