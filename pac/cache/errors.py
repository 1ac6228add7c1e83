"""What can go wrong with the activation cache, as exceptions the trainer can catch."""

from __future__ import annotations


class CacheSpaceError(OSError):
    """The cache does not fit on the disk (raised before writing, or on ENOSPC mid-write)."""


class CacheCorruptError(RuntimeError):
    """A stored entry does not match its checksum, or a shard cannot be read."""
