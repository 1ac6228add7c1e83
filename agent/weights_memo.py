"""The sha256 of a model's weight files, hashed once per version of the files.

Every job checks that an agent's weights hash to the coordinator's (agent/stage.py), and
hashing reads every byte: 0.24-0.32 s for BERT-base's 440 MB here, about 7 s for a 7B model
in float16. A household fine-tunes the same files again and again, so the agent keeps each
model directory's hash beside the files' names, sizes and modification times
(profile_memo.model_files_stamp, the profile memo's rule): a changed, added or removed
file is hashed afresh.
"""

from __future__ import annotations

import threading
from pathlib import Path

from agent.profile_memo import Stamp, model_files_stamp
from pac.wire.integrity import weights_sha256

# Model directories kept (a few models in turn fit).
MEMO_SIZE = 16


class WeightsHashMemo:
    """``weights_sha256`` by model directory and file stamp."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._kept: dict[tuple[Path, Stamp], str] = {}

    def sha256(self, model_dir: Path) -> str:
        """The hex sha256 of ``model_dir``'s weight files (pac.wire.integrity), kept while
        the files' stamp is unchanged."""
        key = (model_dir.resolve(), model_files_stamp(model_dir))
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None:
            return kept
        digest = weights_sha256(model_dir)
        with self._lock:
            self._kept.pop(key, None)
            self._kept[key] = digest
            while len(self._kept) > self._size:  # the oldest hashed goes first
                del self._kept[next(iter(self._kept))]
        return digest


# One per agent process: every job's stages share it.
WEIGHTS_HASHES = WeightsHashMemo()
