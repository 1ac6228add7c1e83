"""A changed model, tokenizer, ladder or precision lands in a new namespace: no stale reads."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pac.cache import ActivationCache, CacheKey, fingerprint_model_dir, fingerprint_tokenizer
from pac.cache.key import file_digest


def _model_dir(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    save_file({"w": torch.arange(16.0)}, str(path / "model.safetensors"))
    (path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    (path / "tokenizer_config.json").write_text("{}")
    return path


def test_model_fingerprint_follows_config_and_weights(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "m")
    first = fingerprint_model_dir(model)
    assert first == fingerprint_model_dir(model) and len(first) == 64

    save_file({"w": torch.arange(16.0) + 1}, str(model / "model.safetensors"))
    changed_weights = fingerprint_model_dir(model)
    assert changed_weights != first

    (model / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 9}))
    changed_config = fingerprint_model_dir(model)
    assert changed_config not in (first, changed_weights)

    save_file({"b": torch.ones(2)}, str(model / "model-00002-of-00002.safetensors"))
    assert fingerprint_model_dir(model) != changed_config  # a new shard counts

    # the tokenizer is not part of the model fingerprint, and vice versa
    before = fingerprint_model_dir(model)
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\nworld\n")
    assert fingerprint_model_dir(model) == before


def test_file_digest_is_remembered_by_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    digest = file_digest(path)
    stat = path.stat()
    # Same size and mtime: the remembered digest is returned without reading the file again.
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_digest(path) == digest
    # A new mtime: the file is read again.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_digest(path) != digest


def test_tokenizer_fingerprint_follows_tokenizer_files(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "m")
    first = fingerprint_tokenizer(model)
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\nworld\n")
    assert fingerprint_tokenizer(model) != first
    save_file({"w": torch.zeros(16)}, str(model / "model.safetensors"))
    second = fingerprint_tokenizer(model)
    assert fingerprint_tokenizer(model) == second  # weights do not matter here


def test_missing_files_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        fingerprint_model_dir(empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weights"):
        fingerprint_model_dir(empty)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        fingerprint_tokenizer(empty)


def test_namespace_changes_with_every_field(key: Callable[..., CacheKey]) -> None:
    base = key()
    variants = [
        key(model="x" * 64),
        key(tokenizer="y" * 64),
        key(ladder="embed,layer.0"),
        key(precision="int8"),
    ]
    ids = {base.namespace, *(k.namespace for k in variants)}
    assert len(ids) == 5
    assert base.namespace == key().namespace
    assert len(base.namespace) == 32 and int(base.namespace, 16) >= 0
    with pytest.raises(ValueError, match="precision"):
        key(precision="fp8")


def test_for_model_dir_hashes_both(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "m")
    cache_key = CacheKey.for_model_dir(model, ladder="embed", precision="int8")
    assert cache_key.model == fingerprint_model_dir(model)
    assert cache_key.tokenizer == fingerprint_tokenizer(model)


@pytest.mark.parametrize(
    "change", [{"model": "x" * 64}, {"tokenizer": "y" * 64}, {"ladder": "embed,layer.0"}]
)
def test_no_stale_read_after_a_change(
    tmp_path: Path,
    key: Callable[..., CacheKey],
    make_sample: Callable[[int, dict[str, int]], dict[str, torch.Tensor]],
    change: dict[str, str],
) -> None:
    with ActivationCache(tmp_path, key()) as cache:
        cache.put("s1", make_sample(1, {"embed": 5, "layer.0": 5}))
    assert "s1" in ActivationCache(tmp_path, key())  # the same key finds it again

    changed = ActivationCache(tmp_path, key(**change))
    assert "s1" not in changed and len(changed) == 0
    assert changed.lookup("s1") is None
    with pytest.raises(KeyError, match="s1"):
        changed.get("s1")
    assert changed.stats().misses == 2 and changed.stats().hits == 0
