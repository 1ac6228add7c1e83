"""A restarted attempt of a job takes over the activation cache that this agent kept from
the job's earlier attempt, so that only the samples of the agents that went away are
computed again.

A cache lives at ``{cache root}/{attempt id}/{namespace}`` (pac.cache.store); the namespace
names the model, ladder and precision it was computed with, so a cache of another model or
ladder is never taken. The earlier attempt's directory keeps its checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("pac.agent")


def adopt_cache(
    cache_root: Path, attempt: str, earlier: Sequence[str], namespace: str
) -> str | None:
    """Move the cache of the first of ``earlier`` (attempt ids, newest first) that kept one
    under ``namespace`` to ``attempt``'s directory; returns that attempt's id (None: none
    kept one, or ``attempt`` has a cache already)."""
    target = cache_root / attempt / namespace
    if target.exists():
        return None
    for old in earlier:
        source = cache_root / old / namespace
        if old != attempt and source.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)  # the same file system: a rename, no copy
            log.info("job %s took over the activation cache of %s", attempt, old)
            return old
    return None


def discard_kept_caches(cache_root: Path, attempts: Sequence[str]) -> int:
    """Delete the activation caches that ``attempts`` (a job's other attempts, closed with
    keep_cache) left under ``cache_root`` and no attempt took over: the job has ended here.
    Their checkpoints stay. Returns the bytes deleted."""
    freed = 0
    for attempt in attempts:
        folder = cache_root / attempt
        if not folder.is_dir():
            continue
        for namespace in (p for p in folder.iterdir() if p.is_dir()):
            freed += sum(f.stat().st_size for f in namespace.rglob("*") if f.is_file())
            shutil.rmtree(namespace, ignore_errors=True)
    return freed
