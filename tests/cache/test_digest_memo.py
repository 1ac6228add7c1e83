"""File digests kept on disk for the next process (pac/cache/digest_memo.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pac.cache import digest_memo, key
from pac.cache.key import file_digest

BIG = digest_memo.MIN_FILE_BYTES


@pytest.fixture
def memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A memo file of this test's own, and an empty in-process memo (a new process)."""
    path = tmp_path / "memo" / "file-digests.json"
    monkeypatch.setenv(digest_memo.MEMO_ENV, str(path))
    monkeypatch.setattr(key, "_file_digests", {})
    return path


def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key, "_file_digests", {})


def weights_of(path: Path, fill: bytes) -> Path:
    """A weight file of ``fill`` repeated: large enough for the memo to keep its digest."""
    path.write_bytes(fill * BIG)
    return path


def sha256_of(fill: bytes) -> str:
    return hashlib.sha256(fill * BIG).hexdigest()


def test_a_digest_is_kept_for_the_next_process(
    memo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = weights_of(tmp_path / "model.safetensors", b"w")
    digest = file_digest(weights)
    assert digest == sha256_of(b"w")
    kept = json.loads(memo.read_text())
    assert list(kept.values()) == [digest]

    # The next process takes the memo's word for the same version of the file: shown by a
    # planted digest coming back instead of the file's own.
    disk_key = next(iter(kept))
    memo.write_text(json.dumps({disk_key: "planted"}))
    new_process(monkeypatch)
    assert file_digest(weights) == "planted"

    # Touched (same bytes, same size, a new mtime and ctime): hashed again, kept again.
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1000))
    new_process(monkeypatch)
    assert file_digest(weights) == digest
    assert set(json.loads(memo.read_text()).values()) == {"planted", digest}


def test_a_file_put_in_its_place_is_hashed_again(
    memo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = weights_of(tmp_path / "model.safetensors", b"a")
    first = file_digest(weights)
    stat = weights.stat()
    other = weights_of(tmp_path / "other.safetensors", b"b")
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime
    os.replace(other, weights)
    new_process(monkeypatch)
    assert file_digest(weights) == sha256_of(b"b") != first


def test_small_files_are_not_kept_and_off_keeps_nothing(
    memo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = tmp_path / "config.json"
    small.write_text("{}")
    file_digest(small)
    assert not memo.exists()
    monkeypatch.setenv(digest_memo.MEMO_ENV, "off")
    weights = weights_of(tmp_path / "model.safetensors", b"w")
    assert file_digest(weights) == sha256_of(b"w")
    assert not memo.exists()
    assert digest_memo.memo_path() is None


def test_a_broken_memo_is_hashed_past_and_replaced(
    memo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memo.parent.mkdir(parents=True)
    memo.write_text('{"torn": ')
    weights = weights_of(tmp_path / "model.safetensors", b"w")
    digest = file_digest(weights)
    assert digest == sha256_of(b"w")
    assert list(json.loads(memo.read_text()).values()) == [digest]


def test_the_memo_keeps_the_newest_entries(memo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest_memo, "MAX_ENTRIES", 3)
    for index in range(5):
        digest_memo.remember(f"file-{index}", f"digest-{index}")
    digest_memo.remember("file-2", "digest-2b")  # written again: newest
    kept = json.loads(memo.read_text())
    assert list(kept) == ["file-3", "file-4", "file-2"]
    assert digest_memo.remembered("file-2") == "digest-2b"
    assert digest_memo.remembered("file-0") is None


def test_the_memo_lives_in_the_user_cache_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(digest_memo.MEMO_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert digest_memo.memo_path() == tmp_path / "xdg" / "pac" / "file-digests.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert digest_memo.memo_path() == tmp_path / "home" / ".cache" / "pac" / "file-digests.json"
