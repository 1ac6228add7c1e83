"""Names of cache entries on the mesh: one per (sample, pipeline stage), and where each
sample's ladder points are whichever layout's stages wrote them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pac.cache.store import ActivationCache


def part_id(fingerprint: str, stage: int) -> str:
    """The cache entry of one sample's ladder points computed by pipeline stage ``stage``."""
    return f"{fingerprint}@{stage}"


def split_part_id(entry: str) -> tuple[str, int]:
    """``(fingerprint, stage)`` of an entry name made by :func:`part_id`."""
    fingerprint, _, stage = entry.rpartition("@")
    return fingerprint, int(stage)


class EntryIndex:
    """Which cache entry holds each ladder point of each sample in ``cache``. A restarted
    job keeps the entries its surviving agents held, cut by the old layout's stages, beside
    entries that the new layout's stages rebuilt: a sample's points are found by name, not by
    the stage count of one layout."""

    def __init__(self, cache: ActivationCache) -> None:
        self.cache = cache
        self._where: dict[str, dict[str, str]] = {}

    def locate(self, fingerprints: Sequence[str], points: Sequence[str]) -> list[dict[str, str]]:
        """Per sample, ``{point: entry}`` for ``points`` (the index is read again from the
        cache when a sample or a point is not in it; KeyError if still not there)."""
        if any(not self._holds(f, points) for f in fingerprints):
            self.refresh()
        for fingerprint in fingerprints:
            if not self._holds(fingerprint, points):
                held = sorted(self._where.get(fingerprint, {}))
                raise KeyError(
                    f"the activation cache {self.cache.directory} lacks ladder points of sample "
                    f"{fingerprint[:12]}... (it holds {held or 'none'}, the side network reads "
                    f"{list(points)})"
                )
        return [self._where[f] for f in fingerprints]

    def refresh(self) -> None:
        where: dict[str, dict[str, str]] = {}
        for entry in self.cache.sample_ids():
            fingerprint, _ = split_part_id(entry)
            for point in self.cache.shapes(entry):
                where.setdefault(fingerprint, {})[point] = entry
        self._where = where

    def complete(self, points: Sequence[str]) -> set[str]:
        """The samples whose entries hold every one of ``points``."""
        self.refresh()
        return {f for f in self._where if self._holds(f, points)}

    def _holds(self, fingerprint: str, points: Sequence[str]) -> bool:
        where = self._where.get(fingerprint)
        return where is not None and all(point in where for point in points)
