"""Checkpoints, exports and the cache's index reach the disk before their rename does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pac.durable
from pac.cache.index import write_atomic
from pac.engine.export import atomic_write


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """What pac.durable flushed (the path it opened and fsynced) and renamed, in order."""
    seen: list[tuple[str, str]] = []
    real_fsync, real_replace = pac.durable.fsync_path, os.replace

    def fsync_path(path: str | Path) -> None:
        real_fsync(path)  # (the real flush, on a file or a directory)
        seen.append(("fsync", str(path)))

    def replace(src: str | Path, dst: str | Path) -> None:
        seen.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(pac.durable, "fsync_path", fsync_path)
    monkeypatch.setattr(pac.durable.os, "replace", replace)
    yield seen


def test_atomic_write_flushes_the_file_then_renames_then_flushes_the_directory(
    tmp_path: Path, events: list[tuple[str, str]]
) -> None:
    target = tmp_path / "checkpoint.safetensors"
    written: list[str] = []

    def write(tmp: str) -> None:
        written.append(tmp)
        Path(tmp).write_bytes(b"state")

    atomic_write(target, write)
    assert target.read_bytes() == b"state"
    assert events == [
        ("fsync", written[0]),
        ("replace", str(target)),
        ("fsync", str(tmp_path)),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, events: list[tuple[str, str]]
) -> None:
    from safetensors.torch import save_file

    target = tmp_path / "adapters.safetensors"
    save_file({"w": torch.ones(3)}, str(target))

    def fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a fi")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        atomic_write(target, fail)
    assert torch.equal(load_file(str(target))["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters.safetensors"]
    assert events == []  # nothing renamed, nothing flushed in its name


def test_the_cache_index_is_flushed_before_its_rename(
    tmp_path: Path, events: list[tuple[str, str]]
) -> None:
    target = tmp_path / "index.json"
    write_atomic(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1] == str(target) + ".tmp"
    assert events[2][1] == str(tmp_path)
