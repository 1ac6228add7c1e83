"""The cache's index: which shard holds each sample, its points' shapes and its checksum.

Each shard carries the records of its own entries in its safetensors metadata, so the shards
alone describe the cache; ``index.json`` is the fast path, rewritten atomically on flush, and
rebuilt from the shard headers when it is missing or does not list exactly the shards on disk
(e.g. after a crash between writing a shard and writing the index).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from pac.cache.errors import CacheCorruptError
from pac.cache.precision import VALUES
from pac.durable import replace_durably

INDEX_FILE = "index.json"
SHARD_PATTERN = re.compile(r"^shard_(\d{5,})\.safetensors$")
META_ENTRIES = "pac.entries"
META_PRECISION = "pac.precision"


@dataclass(frozen=True)
class EntryRecord:
    """Where one sample lives: shard file name, ``{point: (seq_len, d)}``, crc32, bytes."""

    shard: str
    points: dict[str, tuple[int, int]]
    crc32: int
    nbytes: int

    def to_json(self, with_shard: bool = True) -> dict[str, Any]:
        """Plain JSON (the shard is implied inside the shard's own metadata)."""
        out: dict[str, Any] = {"points": {p: list(s) for p, s in self.points.items()}}
        out["crc32"] = self.crc32
        out["nbytes"] = self.nbytes
        if with_shard:
            out["shard"] = self.shard
        return out

    @staticmethod
    def from_json(data: Mapping[str, Any], shard: str | None = None) -> EntryRecord:
        """Inverse of ``to_json``."""
        points = {p: (int(s[0]), int(s[1])) for p, s in data["points"].items()}
        return EntryRecord(
            shard=shard if shard is not None else str(data["shard"]),
            points=points,
            crc32=int(data["crc32"]),
            nbytes=int(data["nbytes"]),
        )


def tensor_name(sample_id: str, point: str, part: str) -> str:
    """Key of one stored tensor: ``sample/point`` for values, ``sample/point.scale`` else."""
    return f"{sample_id}/{point}" if part == VALUES else f"{sample_id}/{point}.{part}"


def entry_crc(stored: Mapping[str, Mapping[str, Tensor]], parts: Iterable[str]) -> int:
    """zlib.crc32 over the raw stored bytes, points in sorted order, parts in codec order."""
    order = tuple(parts)
    crc = 0
    for point in sorted(stored):
        for part in order:
            tensor = stored[point][part].contiguous()
            crc = zlib.crc32(tensor.view(-1).view(torch.uint8).numpy().data, crc)
    return crc


def shard_name(number: int) -> str:
    """``shard_00042.safetensors``."""
    return f"shard_{number:05d}.safetensors"


def shard_files(directory: Path) -> dict[str, int]:
    """Shard file names on disk -> their sizes in bytes."""
    if not directory.is_dir():
        return {}
    out = {}
    for entry in os.scandir(directory):
        if SHARD_PATTERN.match(entry.name):
            out[entry.name] = entry.stat().st_size
    return out


def load_index(directory: Path, precision: str) -> tuple[dict[str, EntryRecord], dict[str, int]]:
    """Entries and shard sizes of a cache directory (empty when it does not exist yet)."""
    on_disk = shard_files(directory)
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        try:
            data = json.loads(index_path.read_text())
            listed = {str(k): int(v) for k, v in data["shards"].items()}
            if listed == on_disk and data.get("precision") == precision:
                entries = {sid: EntryRecord.from_json(rec) for sid, rec in data["entries"].items()}
                return entries, on_disk
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable index is rebuilt from the shards below
    return rebuild_index(directory, on_disk, precision), on_disk


def rebuild_index(
    directory: Path, shards: Mapping[str, int], precision: str
) -> dict[str, EntryRecord]:
    """Read every shard's metadata and rebuild the entry records from it."""
    entries: dict[str, EntryRecord] = {}
    for name in sorted(shards):
        path = directory / name
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
        except Exception as err:  # safetensors raises its own error type for a bad header
            raise CacheCorruptError(
                f"cache shard {path} is unreadable ({err}); delete it and rerun epoch 1 "
                "for the samples it held"
            ) from err
        if meta.get(META_PRECISION) != precision:
            raise CacheCorruptError(
                f"cache shard {path} holds precision {meta.get(META_PRECISION)!r}, the cache "
                f"is {precision!r}; delete the shard"
            )
        for sid, rec in json.loads(meta.get(META_ENTRIES, "{}")).items():
            entries.setdefault(sid, EntryRecord.from_json(rec, shard=name))
    return entries


def save_index(
    directory: Path, precision: str, entries: Mapping[str, EntryRecord], shards: Mapping[str, int]
) -> None:
    """Write index.json atomically (tmp file + os.replace)."""
    data = {
        "format": 1,
        "precision": precision,
        "shards": dict(sorted(shards.items())),
        "entries": {sid: rec.to_json() for sid, rec in entries.items()},
    }
    write_atomic(directory / INDEX_FILE, json.dumps(data, separators=(",", ":")).encode())


def write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so a reader sees the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
    replace_durably(tmp, path)
