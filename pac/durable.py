"""Renames that survive a power cut: the new file's bytes reach the disk before the rename,
and the rename itself reaches it before the caller goes on.

``os.replace`` alone is atomic for readers, but after a crash the file system may hold the
rename without the data (a zero-length or torn file under the final name) or neither.
"""

from __future__ import annotations

import os
from pathlib import Path


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
