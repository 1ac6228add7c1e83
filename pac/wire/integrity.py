"""Integrity of what an agent loads: one hash over a model directory's weight files.

The coordinator computes it once and sends it with LoadStage; an agent that reads a local
copy of the model refuses to load when its copy differs (another revision, a partial copy).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin")
_BLOCK = 8 << 20


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of a Hugging Face model directory, sorted by name."""
    files = sorted(
        p for p in Path(model_dir).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return files


def weights_sha256(model_dir: Path) -> str:
    """Hex sha256 over each weight file's name and bytes, in name order."""
    digest = hashlib.sha256()
    for path in weight_files(model_dir):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
    return digest.hexdigest()
