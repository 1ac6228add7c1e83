"""The cache's size is projected before writing, and a full disk is a clear error."""

from __future__ import annotations

import gc
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

import pac.cache.space as space
from pac.cache import ActivationCache, CacheKey, CacheSpaceError, format_bytes, projected_bytes

SampleMaker = Callable[[int, dict[str, int]], dict[str, Tensor]]
POINTS = ["embed", "layer.0", "layer.1", "layer.2", "embed.decoder"]


def _counts(n: int, seed: int = 0) -> list[dict[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        src, tgt = rng.randint(8, 64), rng.randint(2, 16)
        out.append({p: (tgt if p.endswith("decoder") else src) for p in POINTS})
    return out


@pytest.mark.parametrize("precision", ["fp16", "int8", "fp32"])
def test_projection_is_within_three_percent_of_the_bytes_written(
    tmp_path: Path, key: Callable[..., CacheKey], precision: str
) -> None:
    counts = _counts(60)
    d = 64
    sid_chars = 40
    cache = ActivationCache(tmp_path, key(precision), shard_samples=16)
    projected = cache.projected_bytes(counts, d, sample_id_chars=sid_chars)
    gen = torch.Generator().manual_seed(0)
    for i, lengths in enumerate(counts):
        sid = f"{i:040x}"
        cache.put(sid, {p: torch.randn(t, d, generator=gen) for p, t in lengths.items()})
    cache.close()
    assert abs(projected - cache.nbytes) / cache.nbytes < 0.03, (projected, cache.nbytes)
    # the (n_samples, tokens per point) form agrees with the per-sample form
    per_point = {p: 20 for p in POINTS}
    assert projected_bytes((60, per_point), d, precision) == projected_bytes(
        [per_point] * 60, d, precision
    )


def test_int8_projection_is_about_half_of_fp16() -> None:
    counts = _counts(10)
    ratio = projected_bytes(counts, 768, "int8") / projected_bytes(counts, 768, "fp16")
    assert 0.5 < ratio < 0.52


def test_ensure_space_refuses_before_writing(
    tmp_path: Path, key: Callable[..., CacheKey], monkeypatch: pytest.MonkeyPatch,
    make_sample: SampleMaker,
) -> None:
    monkeypatch.setattr(space, "free_bytes", lambda path: int(0.4 * 2**30))
    cache = ActivationCache(tmp_path / "cache", key("fp16"))
    counts = (2000, {"embed": 128, **{f"layer.{i}": 128 for i in range(6)}})
    needed = cache.projected_bytes(counts, 768)
    assert needed > 0.4 * 2**30
    with pytest.raises(CacheSpaceError) as caught:
        cache.ensure_space_for(counts, 768)
    message = str(caught.value)
    int8 = format_bytes(projected_bytes(counts, 768, "int8"))
    assert f"needs {format_bytes(needed)} at {tmp_path / 'cache'}" in message
    assert "only 409.6 MiB is free" in message
    assert "--cache-dir" in message and f"--cache-precision int8 ({int8})" in message
    assert isinstance(caught.value, OSError)
    assert not (tmp_path / "cache").exists()  # nothing was written

    small = (10, {"embed": 16})
    assert cache.ensure_space_for(small, 768) == cache.projected_bytes(small, 768)
    int8_cache = ActivationCache(tmp_path / "cache", key("int8"))
    with pytest.raises(CacheSpaceError) as caught8:
        int8_cache.ensure_space_for(counts, 4096)
    assert "--cache-precision" not in str(caught8.value)  # int8 is no way out for int8


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs mounted in a temp dir (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the monkeypatched test covers the logic")
    mount_dir = tmp_path / "tmpfs"
    mount_dir.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_dir)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"root, but mount -t tmpfs failed here: {done.stderr.strip()}")
    try:
        yield mount_dir
    finally:
        gc.collect()  # drop memory maps of the shards so the mount is not busy
        if subprocess.run(["umount", str(mount_dir)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_dir)], check=False)


@pytest.mark.root
@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "enospc"])
def test_a_real_full_disk(
    tiny_tmpfs: Path, key: Callable[..., CacheKey], make_sample: SampleMaker,
    monkeypatch: pytest.MonkeyPatch, precheck: bool,
) -> None:
    cache = ActivationCache(tiny_tmpfs, key("fp32"), shard_samples=4)
    too_big = (64, {"embed": 256, "layer.0": 256})  # 64 * 2 * 256 * 16 * 4 B = 2 MiB
    with pytest.raises(CacheSpaceError, match=r"needs 2\.\d MiB .* only 1\.0 MiB is free"):
        cache.ensure_space_for(too_big, 16)
    assert list(tiny_tmpfs.iterdir()) == []  # refused before anything was written

    fits = (4, {"embed": 256, "layer.0": 256})
    assert cache.ensure_space_for(fits, 16) > 0
    if not precheck:
        # Blind the per-shard free-space check so the write itself hits ENOSPC.
        monkeypatch.setattr(space, "free_bytes", lambda path: 1 << 40)
    # Writing past the projection anyway: the disk fills mid-run and that is a
    # CacheSpaceError too, with no half-written shard left behind.
    with pytest.raises(CacheSpaceError, match="free space") as caught:
        for i in range(64):
            cache.put(f"s{i}", make_sample(i, {"embed": 256, "layer.0": 256}))
    if not precheck:
        assert "filled up" in str(caught.value)
    assert not list(cache.directory.glob("*.tmp"))
    written = ActivationCache(tiny_tmpfs, key("fp32"))
    assert len(written) >= 4
    written.verify_all()
    written.close()
