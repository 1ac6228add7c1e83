"""File digests remembered on disk, so that a new process does not hash a model again.

Every job checks that each device holds the coordinator's model (a sha256 over its weight
files): 0.3 s for BERT-base's 440 MB, about 7 s for a 7B model in float16. In one process
``pac.cache.key.file_digest`` remembers a digest; this memo keeps it for the next process
too: an agent that systemd restarted, the next ``pac train``, or the agents of a local mesh,
which hash the files the coordinator hashed a moment before.

An entry is keyed by the file's resolved path, size, modification and change times (ns),
inode and device: rewriting or touching a file, or putting another in its place, changes the
key, so a stale digest is never read. (The change time cannot be set back by a user; the
check guards against the wrong model revision on a device, as a build tool's timestamps do.)

Where: ``$PAC_DIGEST_MEMO`` (a file path; ``off`` turns the memo off), else
``$XDG_CACHE_HOME/pac/file-digests.json``, else ``~/.cache/pac/file-digests.json``. A memo
that cannot be read or written is skipped: the file is hashed as without it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from pac.durable import write_json

MEMO_ENV = "PAC_DIGEST_MEMO"
# Files smaller than this hash faster than the memo is read: not remembered.
MIN_FILE_BYTES = 1 << 20
# Entries kept (the most recently written win): many model revisions' weight shards.
MAX_ENTRIES = 1024


def memo_path() -> Path | None:
    """The memo's file, or None when ``$PAC_DIGEST_MEMO`` is ``off``."""
    configured = os.environ.get(MEMO_ENV, "")
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pac" / "file-digests.json"


def entry_key(resolved: str, stat: os.stat_result) -> str:
    """What identifies one version of a file."""
    return "\0".join(
        str(part)
        for part in (
            resolved,
            stat.st_size,
            stat.st_mtime_ns,
            stat.st_ctime_ns,
            stat.st_ino,
            stat.st_dev,
        )
    )


def _read(path: Path) -> dict[str, str]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, str)}


def remembered(key: str) -> str | None:
    """The digest kept for ``key``, if any."""
    path = memo_path()
    return None if path is None else _read(path).get(key)


def remember(key: str, digest: str) -> None:
    """Keep ``digest`` for ``key`` (written atomically: readers see the old memo or the
    new one; two writers at once may lose an entry, which costs one hash)."""
    path = memo_path()
    if path is None:
        return
    with contextlib.suppress(OSError):
        entries = _read(path)
        entries.pop(key, None)
        entries[key] = digest
        write_json(path, dict(list(entries.items())[-MAX_ENTRIES:]))
