"""An agent hashes a model's weight files once per version of them (agent/weights_memo.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import weights_memo
from agent.weights_memo import WeightsHashMemo
from pac.wire.integrity import weights_sha256


def model_dir(root: Path, name: str, weights: bytes) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories the memo really hashed, in order."""
    calls: list[Path] = []

    def counted(folder: Path) -> str:
        calls.append(folder)
        return weights_sha256(folder)

    monkeypatch.setattr(weights_memo, "weights_sha256", counted)
    return calls


def test_the_same_files_are_hashed_once(tmp_path: Path, hashed: list[Path]) -> None:
    folder = model_dir(tmp_path, "m", b"weights-1")
    memo = WeightsHashMemo()
    assert memo.sha256(folder) == memo.sha256(folder) == weights_sha256(folder)
    assert hashed == [folder]


def test_a_changed_or_touched_file_is_hashed_again(tmp_path: Path, hashed: list[Path]) -> None:
    folder = model_dir(tmp_path, "m", b"weights-1")
    memo = WeightsHashMemo()
    first = memo.sha256(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"weights-22")  # another revision at the same path
    second = memo.sha256(folder)
    assert second != first and second == weights_sha256(folder)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert memo.sha256(folder) == second
    (folder / "model-2.safetensors").write_bytes(b"more")  # a file added
    assert memo.sha256(folder) == weights_sha256(folder) != second
    assert len(hashed) == 4


def test_the_memo_keeps_the_newest_directories(tmp_path: Path, hashed: list[Path]) -> None:
    memo = WeightsHashMemo(size=2)
    folders = [model_dir(tmp_path, f"m{i}", f"w{i}".encode()) for i in range(3)]
    for folder in folders:
        memo.sha256(folder)
    memo.sha256(folders[2])
    memo.sha256(folders[0])  # (forgotten: hashed again)
    assert hashed == [*folders, folders[0]]
