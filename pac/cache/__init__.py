"""The activation cache: per-sample hidden states of the frozen backbone, on disk.

Epoch 1 writes them (``ActivationCache.put``), epochs 2..N read them memory-mapped
(``get_batch``); entries move between devices with ``export_entry`` / ``import_entry``.
"""

from pac.cache.errors import CacheCorruptError, CacheSpaceError
from pac.cache.key import CacheKey, fingerprint_model_dir, fingerprint_tokenizer
from pac.cache.precision import PRECISIONS, Precision, PrecisionCodec, get_codec
from pac.cache.space import ensure_space, format_bytes, projected_bytes
from pac.cache.store import ActivationCache, CachedBatch, CacheStats

__all__ = [
    "PRECISIONS",
    "ActivationCache",
    "CacheCorruptError",
    "CacheKey",
    "CacheSpaceError",
    "CacheStats",
    "CachedBatch",
    "Precision",
    "PrecisionCodec",
    "ensure_space",
    "fingerprint_model_dir",
    "fingerprint_tokenizer",
    "format_bytes",
    "get_codec",
    "projected_bytes",
]
