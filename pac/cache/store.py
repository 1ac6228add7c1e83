"""ActivationCache: each sample's hidden states, written once in epoch 1, read every epoch after.

Layout of one cache (``root/<CacheKey.namespace>/``):

- ``shard_00000.safetensors`` ...: tensors ``<sample>/<point>`` (plus ``<sample>/<point>.scale``
  at int8), each shard written atomically (tmp file + os.replace) and carrying its entries'
  records (points, shapes, crc32) in its safetensors metadata;
- ``index.json``: sample -> shard, shapes, crc32 (rebuilt from the shards if missing or stale);
- ``key.json``: the CacheKey, for a person wondering what this directory is.

Reads are memory-mapped: one ``safe_open`` handle per shard, kept open and reused, and stored
tensors are views into the mapping until they are decoded into float32. A batch read
(``get_batch``, every cached training step) decodes into new tensors and then unmaps the
shards it read: their pages stay in the kernel's page cache for the next epoch, but no
longer in this process's resident memory, which would otherwise grow by the whole cache
over an epoch.

One process writes a cache directory at a time. Putting a sample that is already stored is a
no-op (returns False): the frozen backbone gives the same hidden states for the same sample.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from pac.cache import space
from pac.cache.errors import CacheCorruptError, CacheSpaceError
from pac.cache.index import (
    INDEX_FILE,
    META_ENTRIES,
    META_PRECISION,
    SHARD_PATTERN,
    EntryRecord,
    entry_crc,
    load_index,
    save_index,
    shard_name,
    tensor_name,
    write_atomic,
)
from pac.cache.key import CacheKey
from pac.cache.precision import VALUES, get_codec
from pac.durable import fsync_path

log = logging.getLogger("pac.cache")

# point -> part ("values", "scale") -> stored tensor
Stored = dict[str, dict[str, Tensor]]

DEFAULT_SHARD_BYTES = 32 << 20
KEY_FILE = "key.json"


class CachedBatch(NamedTuple):
    """A training batch read from the cache.

    ``hidden[point]`` is float32 ``[B, T_max, d]``, zero past each sample's length;
    ``lengths[point]`` is int64 ``[B]``, the real token count of each sample at that point.
    """

    hidden: dict[str, Tensor]
    lengths: dict[str, Tensor]


@dataclass(frozen=True)
class CacheStats:
    """Counters for metrics: stored samples, shards, bytes on disk, hits and misses."""

    samples: int
    pending: int
    shards: int
    bytes: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses), 0 when nothing was looked up."""
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0


@dataclass
class _Pending:
    stored: Stored
    record: EntryRecord  # shard is "" until written


class ActivationCache:
    """The activation cache of one (model, tokenizer, ladder, precision) under ``root``.

    ``shard_bytes`` / ``shard_samples``: a shard is written once its buffered entries reach
    either bound. ``verify_reads``: check each entry's crc32 on every read (costs one pass over
    the stored bytes).
    """

    # What is on disk and what is buffered (set by _open).
    _entries: dict[str, EntryRecord]
    _shard_sizes: dict[str, int]
    _pending: dict[str, _Pending]
    _pending_bytes: int
    _handles: dict[str, Any]
    _index_dirty: bool
    _directory_ready: bool
    _next_shard: int

    def __init__(
        self,
        root: str | Path,
        key: CacheKey,
        *,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        shard_samples: int | None = None,
        verify_reads: bool = False,
    ) -> None:
        self.root = Path(root)
        self.key = key
        self.codec = get_codec(key.precision)
        self.directory = self.root / key.namespace
        self.shard_bytes = shard_bytes
        self.shard_samples = shard_samples
        self.verify_reads = verify_reads
        self._open()
        self.hits = 0
        self.misses = 0

    # ---- size, before writing ------------------------------------------------------------

    def projected_bytes(
        self, token_counts: space.TokenCounts, d: int | Mapping[str, int], sample_id_chars: int = 64
    ) -> int:
        """Bytes on disk these samples will take at this cache's precision (see space.py)."""
        return space.projected_bytes(
            token_counts, d, self.key.precision, sample_id_chars=sample_id_chars
        )

    def ensure_space(self, projected: int, *, int8_bytes: int | None = None) -> int:
        """Raise CacheSpaceError unless ``projected`` bytes fit under ``root``; returns it."""
        return space.ensure_space(
            self.root, projected, precision=self.key.precision, int8_bytes=int8_bytes
        )

    def ensure_space_for(
        self, token_counts: space.TokenCounts, d: int | Mapping[str, int], sample_id_chars: int = 64
    ) -> int:
        """Project the size of these samples, check the disk, log it; returns the projection.

        The error message offers int8 with its own projected size as a way out.
        """
        projected = self.projected_bytes(token_counts, d, sample_id_chars)
        int8 = space.projected_bytes(token_counts, d, "int8", sample_id_chars=sample_id_chars)
        return self.ensure_space(projected, int8_bytes=int8)

    # ---- writing -------------------------------------------------------------------------

    def put(self, sample_id: str, tensors: Mapping[str, Tensor]) -> bool:
        """Store one sample's hidden states ``{point: [seq_len, d]}`` (real tokens only).

        Encodes at the cache's precision and buffers until a shard is full. Returns False
        (and stores nothing) when the sample is already cached.
        """
        if sample_id in self:
            return False
        if not tensors:
            raise ValueError(f"sample {sample_id!r}: no hidden states to cache")
        for point in tensors:
            self._check_point_name(point)
        stored = {point: self.codec.encode(x) for point, x in tensors.items()}
        self._add_pending(sample_id, stored, entry_crc(stored, self.codec.parts))
        return True

    def flush(self) -> None:
        """Write buffered entries as a shard and the index, both atomically."""
        self._write_shard()
        if self._index_dirty:
            self._ensure_directory()
            save_index(self.directory, self.key.precision, self._entries, self._shard_sizes)
            self._index_dirty = False

    def close(self) -> None:
        """Flush, and release the memory-mapped shards (a later read reopens them)."""
        self.flush()
        self._handles.clear()

    def delete(self) -> int:
        """Remove every entry and the cache's directory (shards, index, key); returns the
        bytes of shards removed. The cache is empty afterwards and can be written again."""
        removed = sum(self._shard_sizes.values())
        shutil.rmtree(self.directory, ignore_errors=True)
        self._open()  # an empty cache, as on a directory that never existed
        return removed

    def _open(self) -> None:
        """The state of the cache on disk (its index and shards), nothing buffered."""
        self._entries, self._shard_sizes = load_index(self.directory, self.key.precision)
        self._pending = {}
        self._pending_bytes = 0
        self._handles = {}
        self._index_dirty = False
        self._directory_ready = False
        numbers = [int(m.group(1)) for m in map(SHARD_PATTERN.match, self._shard_sizes) if m]
        self._next_shard = max(numbers, default=-1) + 1

    def __enter__(self) -> ActivationCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._entries or sample_id in self._pending

    def __len__(self) -> int:
        return len(self._entries) + len(self._pending)

    def sample_ids(self) -> list[str]:
        """All cached sample ids (written and buffered)."""
        return [*self._entries, *self._pending]

    def shapes(self, sample_id: str) -> dict[str, tuple[int, int]]:
        """``{point: (seq_len, d)}`` of a cached sample, without reading its tensors."""
        return dict(self._record(sample_id).points)

    def get(self, sample_id: str, points: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``{point: float32 [seq_len, d]}`` of one sample (all its points by default).

        Raises KeyError (counted as a miss) when the sample is not cached.
        """
        record = self._record(sample_id)
        stored = self._stored(sample_id, record, None if self.verify_reads else points)
        if self.verify_reads:
            self._check_crc(sample_id, record, stored)
        self.hits += 1
        return {p: self.codec.decode(stored[p]) for p in (points or sorted(record.points))}

    def lookup(self, sample_id: str) -> dict[str, Tensor] | None:
        """Like ``get``, but None on a miss."""
        try:
            return self.get(sample_id)
        except KeyError:
            return None

    def get_batch(
        self,
        sample_ids: Sequence[str],
        points: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> CachedBatch:
        """Padded ``[B, T_max, d]`` per point in ``dtype`` (float32, or the codec's
        ``exact_dtype``: the same values in less memory) plus int64 ``[B]`` lengths.

        ``points`` defaults to all points of the first sample. Each sample is decoded
        straight into its row of the batch; only the padding is zeroed.
        """
        if not sample_ids:
            raise ValueError("get_batch needs at least one sample id")
        allowed = {torch.float32, self.codec.exact_dtype}
        if dtype not in allowed:
            names = " or ".join(sorted(str(d).removeprefix("torch.") for d in allowed))
            raise ValueError(
                f"the {self.key.precision} cache decodes into {names}, not "
                f"{str(dtype).removeprefix('torch.')}"
            )
        records = [self._record(sid) for sid in sample_ids]
        wanted = list(points) if points is not None else sorted(records[0].points)
        verified: list[Stored] | None = None
        if self.verify_reads:  # the crc covers every point: read them all once
            verified = [
                self._stored(sid, rec, None) for sid, rec in zip(sample_ids, records, strict=True)
            ]
            for sid, rec, st in zip(sample_ids, records, verified, strict=True):
                self._check_crc(sid, rec, st)
        hidden: dict[str, Tensor] = {}
        lengths: dict[str, Tensor] = {}
        for point in wanted:
            shapes = [
                _point_shape(sid, rec, point) for sid, rec in zip(sample_ids, records, strict=True)
            ]
            widths = {d for _, d in shapes}
            if len(widths) != 1:
                raise ValueError(
                    f"point {point!r} has different widths {sorted(widths)} in one batch"
                )
            # One point's stored tensors at a time: the batch's whole stored form (half of
            # the decoded batch at fp16) is never held at once.
            stored = verified or [
                self._stored(sid, rec, [point])
                for sid, rec in zip(sample_ids, records, strict=True)
            ]
            t_max = max(t for t, _ in shapes)
            out = torch.empty(len(sample_ids), t_max, widths.pop(), dtype=dtype)
            for row, ((t, _), st) in enumerate(zip(shapes, stored, strict=True)):
                self.codec.decode_into(st[point], out[row, :t])
                out[row, t:] = 0
            del stored
            hidden[point] = out
            lengths[point] = torch.tensor([t for t, _ in shapes], dtype=torch.int64)
        self.hits += len(sample_ids)
        del verified  # views into the mappings, before they are unmapped
        self._handles.clear()
        return CachedBatch(hidden, lengths)

    def verify(self, sample_id: str) -> None:
        """Recompute the entry's crc32; raise CacheCorruptError naming shard and sample."""
        record = self._record(sample_id)
        self._check_crc(sample_id, record, self._stored(sample_id, record, None))

    def verify_all(self) -> int:
        """Verify every entry; returns how many were checked."""
        for sid in self.sample_ids():
            self.verify(sid)
        return len(self)

    # ---- redistribution (entries move between devices without re-quantising) ---------------

    def export_entry(self, sample_id: str) -> tuple[dict[str, Tensor], int]:
        """The stored form of one entry, ``{point: values, "<point>.scale": scale}``, and crc32.

        The tensors are read-only views into the mapped shard; the checksum is verified first
        so a corrupt entry is never passed on.
        """
        record = self._record(sample_id)
        stored = self._stored(sample_id, record, None)
        self._check_crc(sample_id, record, stored)
        flat = {
            point if part == VALUES else f"{point}.{part}": tensor
            for point, parts in stored.items()
            for part, tensor in parts.items()
        }
        return flat, record.crc32

    def import_entry(self, sample_id: str, tensors: Mapping[str, Tensor], crc32: int) -> bool:
        """Store an entry exported by another cache of the same key, byte for byte.

        Checks the parts, dtypes and shapes against this cache's precision and the crc32
        against the bytes (CacheCorruptError on mismatch). Returns False when already cached.
        """
        if sample_id in self:
            return False
        stored = self._unflatten(sample_id, tensors)
        actual = entry_crc(stored, self.codec.parts)
        if actual != crc32:
            raise CacheCorruptError(
                f"entry {sample_id!r} received for cache {self.directory} fails its checksum "
                f"(sent crc32 {crc32:08x}, received bytes {actual:08x}); resend it"
            )
        # Clone: the sender's buffer may be reused before this entry reaches its shard.
        copies = {p: {k: t.detach().clone() for k, t in ps.items()} for p, ps in stored.items()}
        self._add_pending(sample_id, copies, crc32)
        return True

    def remove(self, sample_ids: Iterable[str]) -> int:
        """Delete entries (e.g. after handing them to their new owner); returns how many.

        Shards that held them are rewritten atomically without them (stored bytes copied,
        not re-encoded), or deleted when nothing is left; the index is written at once.
        """
        doomed = set(sample_ids)
        removed = 0
        for sid in doomed & set(self._pending):
            pending = self._pending.pop(sid)
            self._pending_bytes -= pending.record.nbytes
            removed += 1
        by_shard: dict[str, list[str]] = {}
        for sid, rec in self._entries.items():
            by_shard.setdefault(rec.shard, []).append(sid)
        for shard, sids in by_shard.items():
            gone = [sid for sid in sids if sid in doomed]
            if not gone:
                continue
            kept = [sid for sid in sids if sid not in doomed]
            stored = {sid: self._stored(sid, self._entries[sid], None) for sid in kept}
            records = {sid: self._entries[sid] for sid in kept}
            self._handles.pop(shard, None)
            path = self.directory / shard
            if kept:
                self._shard_sizes[shard] = self._save_shard(path, stored, records)
            else:
                path.unlink()
                del self._shard_sizes[shard]
            for sid in gone:
                del self._entries[sid]
            removed += len(gone)
            self._index_dirty = True
        if self._index_dirty:
            self.flush()
        return removed

    # ---- accounting ----------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes on disk: shards, index and key file (buffered entries not included)."""
        total = sum(self._shard_sizes.values())
        for name in (INDEX_FILE, KEY_FILE):
            path = self.directory / name
            if path.is_file():
                total += path.stat().st_size
        return total

    def stats(self) -> CacheStats:
        """Counters for metrics."""
        return CacheStats(
            samples=len(self),
            pending=len(self._pending),
            shards=len(self._shard_sizes),
            bytes=self.nbytes,
            hits=self.hits,
            misses=self.misses,
        )

    # ---- internals -----------------------------------------------------------------------

    def _record(self, sample_id: str) -> EntryRecord:
        record = self._entries.get(sample_id)
        if record is None:
            pending = self._pending.get(sample_id)
            if pending is None:
                self.misses += 1
                raise KeyError(
                    f"sample {sample_id!r} is not in the activation cache {self.directory}"
                )
            record = pending.record
        return record

    def _stored(self, sample_id: str, record: EntryRecord, points: Sequence[str] | None) -> Stored:
        wanted = sorted(record.points) if points is None else list(points)
        pending = self._pending.get(sample_id)
        if pending is not None:
            return {p: pending.stored[_known_point(sample_id, record, p)] for p in wanted}
        handle = self._handle(record.shard)
        path = self.directory / record.shard
        out: Stored = {}
        for point in wanted:
            _known_point(sample_id, record, point)
            try:
                out[point] = {
                    part: handle.get_tensor(tensor_name(sample_id, point, part))
                    for part in self.codec.parts
                }
            except Exception as err:  # safetensors' own error type for a missing/bad tensor
                raise CacheCorruptError(
                    f"cache shard {path} cannot give sample {sample_id!r} point {point!r} "
                    f"({err}); delete the shard and rerun epoch 1 for its samples"
                ) from err
        return out

    def _handle(self, shard: str) -> Any:
        handle = self._handles.get(shard)
        if handle is None:
            path = self.directory / shard
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as err:
                raise CacheCorruptError(
                    f"cache shard {path} cannot be opened ({err}); delete it and rerun epoch 1 "
                    "for the samples it held"
                ) from err
            self._handles[shard] = handle
        return handle

    def _check_crc(self, sample_id: str, record: EntryRecord, stored: Stored) -> None:
        actual = entry_crc(stored, self.codec.parts)
        if actual != record.crc32:
            where = self.directory / record.shard if record.shard else "the write buffer"
            raise CacheCorruptError(
                f"cache entry {sample_id!r} in shard {where} fails its checksum (stored crc32 "
                f"{record.crc32:08x}, read {actual:08x}); delete the shard and rerun epoch 1 "
                "for its samples"
            )

    def _check_point_name(self, point: str) -> None:
        suffixes = tuple(f".{part}" for part in ("scale",))
        if not point or "/" in point or point.endswith(suffixes):
            raise ValueError(
                f"point name {point!r} cannot be stored: use a non-empty name without '/' "
                "that does not end in '.scale'"
            )

    def _unflatten(self, sample_id: str, tensors: Mapping[str, Tensor]) -> Stored:
        """``{point, "<point>.scale"}`` -> ``{point: {part: tensor}}``, checked."""
        extra = [part for part in self.codec.parts if part != VALUES]
        stored: Stored = {}
        for name, tensor in tensors.items():
            part = next((p for p in extra if name.endswith(f".{p}")), VALUES)
            point = name if part == VALUES else name[: -len(part) - 1]
            stored.setdefault(point, {})[part] = tensor
        dtypes = self.codec.stored_dtypes()
        for point, parts in stored.items():
            if set(parts) != set(self.codec.parts):
                raise CacheCorruptError(
                    f"entry {sample_id!r} point {point!r} has parts {sorted(parts)}, a "
                    f"{self.key.precision} cache stores {list(self.codec.parts)}"
                )
            for part, tensor in parts.items():
                if tensor.dtype != dtypes[part]:
                    raise CacheCorruptError(
                        f"entry {sample_id!r} {point}.{part} is {tensor.dtype}, a "
                        f"{self.key.precision} cache stores {dtypes[part]}; both caches must "
                        "have the same key"
                    )
            values = parts[VALUES]
            if values.dim() != 2 or any(
                t.shape[0] != values.shape[0] for p, t in parts.items() if p != VALUES
            ):
                raise CacheCorruptError(
                    f"entry {sample_id!r} point {point!r} has inconsistent shapes "
                    f"{ {p: tuple(t.shape) for p, t in parts.items()} }"
                )
        if not stored:
            raise CacheCorruptError(f"entry {sample_id!r} has no tensors")
        return stored

    def _add_pending(self, sample_id: str, stored: Stored, crc32: int) -> None:
        points = {p: (int(s[VALUES].shape[0]), int(s[VALUES].shape[1])) for p, s in stored.items()}
        nbytes = sum(t.numel() * t.element_size() for s in stored.values() for t in s.values())
        record = EntryRecord(shard="", points=points, crc32=crc32, nbytes=nbytes)
        self._pending[sample_id] = _Pending(stored, record)
        self._pending_bytes += nbytes
        full_bytes = self._pending_bytes >= self.shard_bytes
        full_count = self.shard_samples is not None and len(self._pending) >= self.shard_samples
        if full_bytes or full_count:
            self._write_shard()

    def _write_shard(self) -> None:
        if not self._pending:
            return
        name = shard_name(self._next_shard)
        stored = {sid: p.stored for sid, p in self._pending.items()}
        records = {sid: p.record for sid, p in self._pending.items()}
        self._shard_sizes[name] = self._save_shard(self.directory / name, stored, records)
        for sid, rec in records.items():
            self._entries[sid] = EntryRecord(name, rec.points, rec.crc32, rec.nbytes)
        self._pending.clear()
        self._pending_bytes = 0
        self._next_shard += 1
        self._index_dirty = True

    def _save_shard(
        self, path: Path, stored: Mapping[str, Stored], records: Mapping[str, EntryRecord]
    ) -> int:
        """Write one shard atomically; returns its size. Full disk -> CacheSpaceError."""
        self._ensure_directory()
        tensors = {
            tensor_name(sid, point, part): tensor
            for sid, points in stored.items()
            for point, parts in points.items()
            for part, tensor in parts.items()
        }
        metadata = {
            META_PRECISION: self.key.precision,
            META_ENTRIES: json.dumps(
                {sid: rec.to_json(with_shard=False) for sid, rec in records.items()},
                separators=(",", ":"),
            ),
        }
        data_bytes = sum(rec.nbytes for rec in records.values())
        free = space.free_bytes(self.directory)
        if free < data_bytes:
            raise CacheSpaceError(
                f"activation cache shard {path.name} needs {space.format_bytes(data_bytes)} at "
                f"{self.directory} but only {space.format_bytes(free)} is free; free space, "
                "choose --cache-dir elsewhere, or use --cache-precision int8"
            )
        tmp = path.with_name(path.name + ".tmp")
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            fsync_path(tmp)
        except Exception as err:
            tmp.unlink(missing_ok=True)
            if _is_no_space(err):
                raise CacheSpaceError(
                    f"the disk under {self.directory} filled up while writing {path.name} "
                    f"({space.format_bytes(data_bytes)}); free space, choose --cache-dir "
                    "elsewhere, or use --cache-precision int8"
                ) from err
            raise
        os.replace(tmp, path)
        return path.stat().st_size

    def _ensure_directory(self) -> None:
        if self._directory_ready:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # Half-written files of a writer that crashed (one writer per directory at a time).
        for stale in self.directory.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        key_path = self.directory / KEY_FILE
        if not key_path.is_file():
            write_atomic(key_path, json.dumps(self.key.to_json(), indent=1).encode())
        self._directory_ready = True


def _known_point(sample_id: str, record: EntryRecord, point: str) -> str:
    if point not in record.points:
        raise KeyError(
            f"sample {sample_id!r} has no cached point {point!r}; it has {sorted(record.points)}"
        )
    return point


def _point_shape(sample_id: str, record: EntryRecord, point: str) -> tuple[int, int]:
    return record.points[_known_point(sample_id, record, point)]


def _is_no_space(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left" in text or "os error 28" in text or "os error 122" in text
