"""How big the cache will be, and whether the disk can hold it, before a byte is written."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

from pac.cache.errors import CacheSpaceError
from pac.cache.precision import get_codec

log = logging.getLogger("pac.cache")

# Per-sample token counts by point, or (n_samples, tokens per sample by point).
TokenCounts: TypeAlias = "Sequence[Mapping[str, int]] | tuple[int, Mapping[str, int]]"

# Bookkeeping bytes besides the tensor data, measured on the writer's own output: each stored
# tensor's safetensors header entry, and each point's and sample's record in the shard
# metadata and in index.json (both hold the same record; sample ids are counted separately).
_PER_TENSOR = 57
_PER_POINT = 21
_PER_SAMPLE = 140


def projected_bytes(
    token_counts: TokenCounts,
    d: int | Mapping[str, int],
    precision: str,
    *,
    sample_id_chars: int = 64,
) -> int:
    """Bytes on disk that caching these samples will take (data + headers + index).

    ``token_counts`` is one ``{point: seq_len}`` dict per sample, or ``(n_samples,
    {point: seq_len})`` with a typical (mean or upper-bound) length per point; ``d`` is the
    hidden width (or one per point); ``sample_id_chars`` the length of a sample id.
    """
    codec = get_codec(precision)
    parts = len(codec.parts)

    def one_sample(points: Mapping[str, int]) -> int:
        total = _PER_SAMPLE + 2 * sample_id_chars
        for point, tokens in points.items():
            width = d[point] if isinstance(d, Mapping) else d
            total += tokens * codec.bytes_per_token(width)
            total += parts * (_PER_TENSOR + sample_id_chars + len(point)) + _PER_POINT
            total += 2 * len(point) + 2 * len(str(tokens)) + 2 * len(str(width))
        return total

    if (
        isinstance(token_counts, tuple)
        and len(token_counts) == 2
        and isinstance(token_counts[0], int)
    ):
        n_samples, per_point = token_counts
        return n_samples * one_sample(per_point)
    return sum(one_sample(points) for points in token_counts)


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def margin_bytes(projected: int) -> int:
    """Head room kept free beyond the projection: 2% or 256 KiB, whichever is larger."""
    return max(projected // 50, 256 << 10)


def ensure_space(
    path: str | Path, projected: int, *, precision: str = "", int8_bytes: int | None = None
) -> int:
    """Raise CacheSpaceError unless ``projected`` bytes (+ a margin) fit at ``path``.

    ``int8_bytes`` (the size at int8) is offered as a way out in the message when the cache
    is not int8 already. Returns ``projected`` so a caller can print it.
    """
    free = free_bytes(path)
    if free < projected + margin_bytes(projected):
        ways = "free space, choose --cache-dir elsewhere"
        if int8_bytes is not None and precision != "int8":
            ways += f", or use --cache-precision int8 ({format_bytes(int8_bytes)})"
        elif precision != "int8":
            ways += ", or use --cache-precision int8"
        raise CacheSpaceError(
            f"activation cache needs {format_bytes(projected)} at {path} but only "
            f"{format_bytes(free)} is free; {ways}"
        )
    log.info(
        "activation cache: projected %s%s at %s, %s free",
        format_bytes(projected),
        f" ({precision})" if precision else "",
        path,
        format_bytes(free),
    )
    return projected


def format_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; 1.8e9 -> '1.7 GiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
