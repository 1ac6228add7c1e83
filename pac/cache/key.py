"""What a cache entry depends on, as a key: model, tokenizer, ladder and precision.

A cache directory is namespaced by ``CacheKey.namespace``; entries inside it are looked up by
the sample's own fingerprint (computed from its token ids by the data layer). A changed model,
tokenizer, ladder or precision therefore lands in a fresh namespace, and a changed sample has a
fresh fingerprint: a stale entry can never be read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pac.cache import digest_memo
from pac.cache.precision import get_codec

# Bumped when the on-disk layout changes, so old caches are never misread.
CACHE_FORMAT = 1

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
_READ_BYTES = 8 << 20

# (resolved path, size, mtime_ns) -> sha256 hex of the file's bytes.
_file_digests: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class CacheKey:
    """Everything the stored hidden states depend on, besides the sample itself.

    ``model`` and ``tokenizer`` are fingerprints (see ``fingerprint_model_dir`` and
    ``fingerprint_tokenizer``); ``ladder`` describes which hidden states are stored and
    anything else that changes them (e.g. ``"embed,layer.0,layer.1;dtype=float32"``);
    ``precision`` is the storage precision (fp16, bf16, fp32 or int8).
    """

    model: str
    tokenizer: str
    ladder: str
    precision: str = "fp16"

    def __post_init__(self) -> None:
        get_codec(self.precision)  # a clear error for an unknown precision

    @property
    def namespace(self) -> str:
        """A 32-hex-digit id of this key: the cache's subdirectory name."""
        text = json.dumps({"format": CACHE_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, str]:
        """The key as plain JSON (written beside the cache so a person can tell what it is)."""
        return asdict(self)

    @classmethod
    def for_model_dir(cls, model_dir: str | Path, ladder: str, precision: str = "fp16") -> CacheKey:
        """The key of a local Hugging Face model directory (hashes its weights and tokenizer)."""
        return cls(
            model=fingerprint_model_dir(model_dir),
            tokenizer=fingerprint_tokenizer(model_dir),
            ladder=ladder,
            precision=precision,
        )


def fingerprint_model_dir(model_dir: str | Path) -> str:
    """sha256 hex over ``config.json`` and the weight files of a model directory.

    Weight files: every ``*.safetensors`` (one file or shards) and ``pytorch_model*.bin``.
    Each file is streamed in 8 MiB reads and its digest is remembered by (path, size,
    mtime_ns), so a second call on an unchanged directory reads nothing.
    """
    root = Path(model_dir)
    config = root / "config.json"
    if not config.is_file():
        raise FileNotFoundError(
            f"model directory {root} has no config.json; point --model at a Hugging Face "
            "model directory (config.json + weights)"
        )
    weights = sorted({p for pattern in WEIGHT_PATTERNS for p in root.glob(pattern) if p.is_file()})
    if not weights:
        raise FileNotFoundError(
            f"model directory {root} has no weights (model.safetensors, *.safetensors shards "
            "or pytorch_model.bin); save the model with save_pretrained first"
        )
    return _combine([config, *weights])


def fingerprint_tokenizer(model_dir: str | Path) -> str:
    """sha256 hex over the tokenizer files present in ``model_dir``.

    Files: tokenizer.json, tokenizer_config.json, special_tokens_map.json, added_tokens.json,
    vocab.txt, vocab.json, merges.txt, spiece.model, tokenizer.model, sentencepiece.bpe.model
    (whichever exist). Raises FileNotFoundError when none does.
    """
    root = Path(model_dir)
    files = [root / name for name in TOKENIZER_FILES if (root / name).is_file()]
    if not files:
        raise FileNotFoundError(
            f"model directory {root} has no tokenizer files (expected one of "
            f"{', '.join(TOKENIZER_FILES)}); save the tokenizer with save_pretrained too"
        )
    return _combine(files)


def _combine(files: list[Path]) -> str:
    """One digest over (name, size, file digest) of each file, in the given order."""
    total = hashlib.sha256()
    for path in files:
        stat = path.stat()
        total.update(f"{path.name}\0{stat.st_size}\0{file_digest(path)}\n".encode())
    return total.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 hex of one file, streamed in 8 MiB reads, remembered by (path, size, mtime)
    in this process and, for files of 1 MiB or more, on disk for the next one
    (pac/cache/digest_memo.py)."""
    resolved = os.path.realpath(path)
    stat = os.stat(resolved)
    memo_key = (resolved, stat.st_size, stat.st_mtime_ns)
    cached = _file_digests.get(memo_key)
    if cached is not None:
        return cached
    on_disk = stat.st_size >= digest_memo.MIN_FILE_BYTES
    disk_key = digest_memo.entry_key(resolved, stat)
    if on_disk and (kept := digest_memo.remembered(disk_key)) is not None:
        _file_digests[memo_key] = kept
        return kept
    digest = hashlib.sha256()
    buffer = bytearray(_READ_BYTES)
    view = memoryview(buffer)
    with open(resolved, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(view)
            if not n:
                break
            digest.update(view[:n])
    _file_digests[memo_key] = digest.hexdigest()
    if on_disk:
        digest_memo.remember(disk_key, _file_digests[memo_key])
    return _file_digests[memo_key]
