"""Writing, memory-mapped reading, batching and checksums of the ActivationCache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

import pac.cache.store as store_module
from pac.cache import ActivationCache, CacheCorruptError, CacheKey

SampleMaker = Callable[[int, dict[str, int]], dict[str, Tensor]]

# Different points per sample (an encoder-decoder sample has decoder points of its own length)
LENGTHS = [
    {"embed": 7, "layer.0": 7, "layer.1": 7},
    {"embed": 3, "layer.0": 3, "layer.1": 3, "embed.decoder": 2},
    {"embed": 12, "layer.0": 12, "layer.1": 12, "embed.decoder": 5},
    {"embed": 1, "layer.0": 1, "layer.1": 1},
    {"embed": 9, "layer.0": 9, "layer.1": 9, "embed.decoder": 9},
]


def _tolerance(precision: str, x: Tensor) -> Tensor:
    """The codec's documented per-element bound (broadcast to x's shape)."""
    if precision == "fp32":
        return torch.zeros_like(x)
    if precision == "fp16":
        return x.abs() * 2.0**-11 + 2.0**-25
    if precision == "bf16":
        return x.abs() * 2.0**-8
    peak = x.abs().amax(dim=1, keepdim=True)
    return (peak / 254 + peak * 1e-6).expand_as(x)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_round_trip_through_shards_in_a_new_instance(
    tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker, precision: str
) -> None:
    samples = {f"s{i}": make_sample(i, lengths) for i, lengths in enumerate(LENGTHS)}
    with ActivationCache(tmp_path, key(precision), shard_samples=2) as writer:
        for sid, tensors in samples.items():
            assert writer.put(sid, tensors)
    shards = sorted(p.name for p in writer.directory.glob("shard_*.safetensors"))
    assert shards == [f"shard_0000{i}.safetensors" for i in range(3)]
    assert not list(writer.directory.glob("*.tmp"))

    reader = ActivationCache(tmp_path, key(precision))  # a fresh instance: index + mmap
    assert len(reader) == len(samples) and sorted(reader.sample_ids()) == sorted(samples)
    for sid, tensors in samples.items():
        got = reader.get(sid)
        assert sorted(got) == sorted(tensors)
        for point, x in tensors.items():
            assert got[point].dtype == torch.float32 and got[point].shape == x.shape
            assert bool(((got[point] - x).abs() <= _tolerance(precision, x)).all()), point
        assert reader.shapes(sid) == {p: tuple(x.shape) for p, x in tensors.items()}
    if precision == "fp32":
        assert torch.equal(reader.get("s2")["embed.decoder"], samples["s2"]["embed.decoder"])


def test_one_mapped_handle_per_shard(
    tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ActivationCache(tmp_path, key(), shard_samples=4) as writer:
        for i in range(12):
            writer.put(f"s{i}", make_sample(i, {"embed": 4, "layer.0": 4}))
    opened: list[str] = []
    real_open = store_module.safe_open

    def counting_open(path: str, framework: str) -> object:
        opened.append(path)
        return real_open(path, framework=framework)

    monkeypatch.setattr(store_module, "safe_open", counting_open)
    reader = ActivationCache(tmp_path, key())
    for _ in range(3):
        for i in range(12):
            reader.get(f"s{i}")
    assert len(opened) == 3 and len(set(opened)) == 3
    # A batch read uses the open handles, then unmaps its shards; the next one maps each
    # of them once again, whatever its samples and points.
    reader.get_batch([f"s{i}" for i in range(12)])
    assert len(opened) == 3
    reader.get_batch([f"s{i}" for i in range(12)])
    assert len(opened) == 6 and len(set(opened)) == 3
    assert reader.stats().hits == 3 * 12 + 2 * 12


def mapped_files() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if "/" in line}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_a_batch_read_unmaps_its_shards(
    tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker
) -> None:
    """A cached epoch reads the whole cache; mappings kept open would hold all of it in
    the process's resident memory."""
    with ActivationCache(tmp_path, key(), shard_samples=4) as writer:
        for i in range(8):
            writer.put(f"s{i}", make_sample(i, {"embed": 4, "layer.0": 4}))
    reader = ActivationCache(tmp_path, key())
    shards = {str(path) for path in reader.directory.glob("shard_*.safetensors")}
    assert len(shards) == 2
    reader.get("s0")
    reader.get("s5")
    assert shards <= mapped_files()  # single reads keep their shard mapped for reuse
    batch = reader.get_batch([f"s{i}" for i in range(8)])
    assert not shards & mapped_files()
    torch.testing.assert_close(batch.hidden["embed"][5, :4], reader.get("s5")["embed"])


def test_get_batch_pads_with_zeros_and_reports_lengths(
    tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_empty = torch.empty

    def nan_empty(*args: object, **kwargs: object) -> Tensor:
        # Fresh buffers full of NaN: padding must be written, not inherited from the allocator.
        return real_empty(*args, **kwargs).fill_(float("nan"))  # type: ignore[call-overload]

    monkeypatch.setattr(torch, "empty", nan_empty)
    cache = ActivationCache(tmp_path, key("int8"), shard_samples=2)
    for i, lengths in enumerate(LENGTHS):
        cache.put(f"s{i}", make_sample(i, lengths))
    # s4 is still in the write buffer: batches mix written and buffered entries
    ids = ["s2", "s1", "s4"]
    batch = cache.get_batch(ids, points=["embed", "embed.decoder"])
    assert sorted(batch.hidden) == ["embed", "embed.decoder"]
    assert batch.hidden["embed"].shape == (3, 12, 16)
    assert batch.lengths["embed"].tolist() == [12, 3, 9]
    assert batch.lengths["embed.decoder"].tolist() == [5, 2, 9]
    assert batch.lengths["embed"].dtype == torch.int64
    for row, sid in enumerate(ids):
        single = cache.get(sid)
        for point in ("embed", "embed.decoder"):
            t = int(batch.lengths[point][row])
            assert torch.equal(batch.hidden[point][row, :t], single[point])
            assert not batch.hidden[point][row, t:].any()
    as_tuple = tuple(batch)  # also unpacks as (hidden, lengths)
    assert as_tuple[0] is batch.hidden and as_tuple[1] is batch.lengths

    default = cache.get_batch(["s0", "s3"])  # all points of the first sample
    assert sorted(default.hidden) == ["embed", "layer.0", "layer.1"]
    with pytest.raises(KeyError, match=r"embed\.decoder"):
        cache.get_batch(["s0", "s1"], points=["embed.decoder"])
    with pytest.raises(KeyError, match="nope"):
        cache.get_batch(["s0", "nope"])


@pytest.mark.parametrize(
    ("precision", "exact"),
    [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16), ("int8", None)],
)
def test_get_batch_in_the_exact_dtype_holds_the_float32_values(
    tmp_path: Path,
    key: Callable[..., CacheKey],
    make_sample: SampleMaker,
    precision: str,
    exact: torch.dtype | None,
) -> None:
    cache = ActivationCache(tmp_path, key(precision), shard_samples=2)
    for i, lengths in enumerate(LENGTHS):
        cache.put(f"s{i}", make_sample(i, lengths))
    ids = ["s2", "s0", "s4"]
    wide = cache.get_batch(ids, points=["embed", "layer.1"])
    assert cache.codec.exact_dtype == (exact or torch.float32)
    if exact is None:  # int8's values times their scales need float32
        with pytest.raises(ValueError, match="the int8 cache decodes into float32, not float16"):
            cache.get_batch(ids, points=["embed"], dtype=torch.float16)
        return
    narrow = cache.get_batch(ids, points=["embed", "layer.1"], dtype=exact)
    for point, value in narrow.hidden.items():
        assert value.dtype == exact
        assert torch.equal(value.float(), wide.hidden[point])
    assert torch.equal(narrow.lengths["embed"], wide.lengths["embed"])


def test_a_flipped_byte_is_detected(
    tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker,
    flip_byte: Callable[[Path, str], None],
) -> None:
    with ActivationCache(tmp_path, key(), shard_samples=3) as writer:
        for i in range(3):
            writer.put(f"s{i}", make_sample(i, {"embed": 6, "layer.0": 6}))
    shard = writer.directory / "shard_00000.safetensors"
    flip_byte(shard, "s1/layer.0")

    reader = ActivationCache(tmp_path, key())
    with pytest.raises(CacheCorruptError, match=r"'s1'.*shard_00000\.safetensors"):
        reader.verify("s1")
    reader.verify("s0")  # its neighbours in the shard are intact
    reader.verify("s2")
    reader.get("s1")  # without verify_reads a read does not pay for the checksum
    checked = ActivationCache(tmp_path, key(), verify_reads=True)
    assert checked.get("s0")
    with pytest.raises(CacheCorruptError, match="checksum"):
        checked.get("s1")
    with pytest.raises(CacheCorruptError, match="checksum"):
        checked.get_batch(["s0", "s1"])
    with pytest.raises(CacheCorruptError):
        reader.verify_all()


def test_a_damaged_shard_header_is_a_clear_error(
    tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker
) -> None:
    with ActivationCache(tmp_path, key()) as writer:
        writer.put("s0", make_sample(0, {"embed": 4}))
    shard = writer.directory / "shard_00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:20])  # truncated
    (writer.directory / "index.json").unlink()  # force the rebuild from shard headers
    with pytest.raises(CacheCorruptError, match=r"shard_00000\.safetensors.*delete it"):
        ActivationCache(tmp_path, key())


def test_index_is_rebuilt_from_shards_after_a_crash(
    tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker
) -> None:
    writer = ActivationCache(tmp_path, key(), shard_samples=2)
    for i in range(5):
        writer.put(f"s{i}", make_sample(i, {"embed": i + 1}))
    # Two shards are on disk, no index yet, s4 is buffered: a crash now loses only s4.
    assert not (writer.directory / "index.json").exists()
    survivor = ActivationCache(tmp_path, key())
    assert sorted(survivor.sample_ids()) == ["s0", "s1", "s2", "s3"]
    survivor.verify_all()
    assert torch.equal(survivor.get("s3")["embed"], writer.get("s3")["embed"])
    # the next shard continues the numbering instead of overwriting, and the crashed
    # writer's half-written file is cleaned up
    (survivor.directory / "shard_00002.safetensors.tmp").write_bytes(b"half")
    survivor.put("s9", make_sample(9, {"embed": 2}))
    survivor.close()
    assert not list(survivor.directory.glob("*.tmp"))
    assert (survivor.directory / "shard_00002.safetensors").is_file()
    assert len(ActivationCache(tmp_path, key())) == 5


def test_put_rules(tmp_path: Path, key: Callable[..., CacheKey], make_sample: SampleMaker) -> None:
    cache = ActivationCache(tmp_path, key())
    assert not cache.directory.exists()  # nothing is created before the first write
    assert cache.put("s0", make_sample(0, {"embed": 3}))
    assert "s0" in cache and len(cache) == 1
    assert not cache.put("s0", make_sample(1, {"embed": 3}))  # already cached: a no-op
    assert torch.allclose(cache.get("s0")["embed"], make_sample(0, {"embed": 3})["embed"],
                          rtol=1e-3)
    for bad in ("a/b", "layer.0.scale", ""):
        with pytest.raises(ValueError, match="point name"):
            cache.put("s1", {bad: torch.ones(2, 16)})
    with pytest.raises(ValueError, match="no hidden states"):
        cache.put("s1", {})
    with pytest.raises(ValueError, match=r"\[seq_len, d\]"):
        cache.put("s1", {"embed": torch.ones(16)})
    assert "s1" not in cache
    cache.close()
    stats = cache.stats()
    assert (stats.samples, stats.pending, stats.shards) == (1, 0, 1)
    assert stats.bytes == cache.nbytes > 0


def test_delete_removes_the_cache_from_disk_and_it_can_be_written_again(tmp_path: Path) -> None:
    key = CacheKey("m" * 64, "t" * 64, "layer.0", "fp16")
    cache = ActivationCache(tmp_path, key, shard_samples=2)
    for i in range(5):
        cache.put(f"s{i}", {"layer.0": torch.randn(3 + i, 8)})
    cache.flush()
    shards = sum(p.stat().st_size for p in cache.directory.glob("shard_*"))
    assert shards > 0
    assert cache.delete() == shards
    assert not cache.directory.exists() and len(cache) == 0 and "s0" not in cache
    assert len(ActivationCache(tmp_path, key)) == 0  # nothing left to reopen
    cache.put("again", {"layer.0": torch.ones(2, 8)})
    cache.flush()
    assert torch.equal(ActivationCache(tmp_path, key).get("again")["layer.0"].float(),
                       torch.ones(2, 8))
