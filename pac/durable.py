"""Renames that survive a power cut: the new file's bytes reach the disk before the rename,
and the rename itself reaches it before the caller goes on.

``os.replace`` alone is atomic for readers, but after a crash the file system may hold the
rename without the data (a zero-length or torn file under the final name) or neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_path(path: str | Path) -> None:
    """Flush ``path`` (a file or a directory) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str | Path, path: str | Path) -> None:
    """Move the fully written ``tmp`` over ``path``: ``tmp`` is flushed first, then the
    directory that holds the new name."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` through a temporary file in the same directory
    (created if missing) and :func:`replace_durably`: readers see the old file or the new
    one, never a torn one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(value, out)
        replace_durably(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
