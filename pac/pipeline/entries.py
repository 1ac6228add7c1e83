"""Names of cache entries on the mesh: one per (sample, pipeline stage)."""

from __future__ import annotations


def part_id(fingerprint: str, stage: int) -> str:
    """The cache entry of one sample's ladder points computed by pipeline stage ``stage``."""
    return f"{fingerprint}@{stage}"


def split_part_id(entry: str) -> tuple[str, int]:
    """``(fingerprint, stage)`` of an entry name made by :func:`part_id`."""
    fingerprint, _, stage = entry.rpartition("@")
    return fingerprint, int(stage)
